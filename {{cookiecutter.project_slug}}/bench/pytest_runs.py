"""Running one generated suite under pytest, and reading back what its conftest recorded.

pytest runs in a child process confined to the suite's directory, with none of the
developer's pytest or database settings; waiting for it with ``wait4`` gives its peak RSS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.suites import PLUGIN_MODES, PROJECT_ROOT, TEST_FILE

# The generated conftest writes pytest's timings and the RSS here (unset: it records nothing).
REPORT_VARIABLE = "ISOLATION_BENCH_REPORT"
# An interrupted pytest: how long it may finish on its own, then after our SIGINT.
STOP_GRACE_S = 1.0
STOP_TIMEOUT_S = 10.0


class BenchFailure(RuntimeError):
    """A generated suite did not pass; the figures would mean nothing."""


@dataclass(frozen=True)
class Run:
    """One pytest run as the operating system saw it."""

    directory: Path
    returncode: int
    wall_s: float
    peak_rss_mb: float | None
    output: str


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pytest_command(
    directory: Path, mode: str, workers: int, *, keep_reports: bool = False
) -> list[str]:
    """``python -m pytest`` confined to ``directory``; with ``keep_reports``, quiet terminal
    output and junit XML, as a CI run has them, else neither (``bench.isolation_bench`` says
    why)."""
    command = [sys.executable, "-m", "pytest", str(directory / TEST_FILE)]
    command += ["-c", str(directory / "pytest.ini"), "--rootdir", str(directory)]
    command += ["-p", "no:cacheprovider", "-p", "no:randomly"]
    if keep_reports:
        command += ["-q", "--junitxml", str(directory / "junit.xml")]
    else:
        command += ["-p", "no:terminal"]
    if mode in PLUGIN_MODES:
        command += ["--isolation-strategy", mode]
    if workers:
        command += ["-n", str(workers)]
    return command


def child_environment(report: Path) -> dict[str, str]:
    """This environment without pytest or database settings that would change the run."""
    dropped = (
        "PYTEST_",
        "DATABASE_URL",
        "DATABASE_DRIVER",
        "TURSO_",
        "ISOLATION_STRATEGY",
        "GITHUB_STEP_SUMMARY",  # the reporter would add every suite's summary to CI's
        REPORT_VARIABLE,
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env[REPORT_VARIABLE] = str(report)
    return env


def _max_rss_mb(max_rss: int) -> float:
    """``ru_maxrss`` is in KiB on Linux and in bytes on macOS."""
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 2**10


def run_pytest(directory: Path, command: Sequence[str], report: Path) -> Run:
    """Run pytest and wait with ``wait4``: its rusage holds the peak RSS of that process."""
    log = directory / "pytest-output.txt"
    peak: float | None = None
    started = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.Popen(
            list(command),
            cwd=directory,
            env=child_environment(report),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
                peak = _max_rss_mb(usage.ru_maxrss)
            else:
                process.wait()
        except KeyboardInterrupt:
            stop(process)
            raise
    wall = time.perf_counter() - started
    return Run(directory, process.returncode, wall, peak, log.read_text(errors="replace"))


def stop(process: subprocess.Popen[bytes]) -> None:
    """End an interrupted pytest through its session cleanup, which deletes its databases:
    its directory is removed next, and a pytest left running would leave them behind."""
    try:
        process.wait(STOP_GRACE_S)  # Ctrl-C in a terminal reaches pytest too
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_report(run: Run, report: Path) -> dict[str, Any]:
    """What the generated conftest recorded: pytest's per-test durations and outcomes, the
    failures' tracebacks, and the RSS."""
    try:
        data: dict[str, Any] = json.loads(report.read_text())
    except (OSError, ValueError) as error:
        raise BenchFailure(f"{run.directory.name}: no report ({error})\n\n{run.output}") from None
    return data


def check_passed(run: Run, count: int, data: dict[str, Any]) -> None:
    """Every generated test ran and passed, or the run's figures are worthless."""
    expected = {"passed": count, "failed": 0, "skipped": 0}
    if run.returncode != 0 or data["outcomes"] != expected:
        failures = "\n\n".join(data["failures"])
        raise BenchFailure(
            f"{run.directory.name}: pytest exited {run.returncode}, outcomes "
            f"{data['outcomes']}, expected {expected}\n\n{failures}\n\n{run.output}"
        )
