"""What a fresh migrated database per test costs, measured side by side.

Generates N trivial database tests and runs them as real pytest suites, once per mode:

- ``shared``: one connection for the whole session, the baseline;
- ``migrate-per-test``: a new database file per test with the migrations run on it, the
  fixture people write by hand;
- ``bare-file`` and ``bare-memory``: a copy of the cached template per test with nothing
  around it (no scope, connection tracking, module isolation or singleton): what SQLite
  itself needs for a fresh database, the floor of the two modes below;
- ``file`` and ``memory``: the isolation plugin (``tests.setup_integration``) with that
  strategy;
- ``savepoint``: a savepoint rolled back after each test on one shared connection.

Every test does the same work through a ``db`` fixture, and every mode opens its
databases with the pragmas the isolation core gives each test's database, so the
differences are the cost of each way of isolating tests. Per-test times are pytest's own
(setup + call + teardown of each test), taken from its reports by the generated conftest
with each test's outcome. pytest's terminal output and junit XML are off: they keep every
test's reports in memory for their summaries, about 3 KB a test in every mode, which
would swamp the RSS growth of the databases; ``--keep-reports`` turns them on.

    python -m bench.isolation_bench --sizes 100 1000 5000 --json bench-results.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import statistics
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.steps import Steps, steps_table, time_steps
from bench.targets import check_targets, targets_table
from lib.scope_databases import (
    SCOPE_PRAGMAS,
    TEMPLATE_PRAGMAS,
    remove_run_directory,
    run_directory,
    runs_root,
    template_for,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT_ROOT / ".bench"
DATA_DIR = PROJECT_ROOT / "data"
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# Where the plugin makes test databases by default; every mode makes its own there too.
RUNS_DIR = runs_root(DATA_DIR, use_shm=True)
MODES = ("shared", "migrate-per-test", "bare-file", "file", "bare-memory", "memory", "savepoint")
# Each mode of the plugin, and the bare copy it is built on.
BARE_COPIES = {"file": "bare-file", "memory": "bare-memory"}
PLUGIN_MODES = tuple(BARE_COPIES)
BASELINE = "shared"
DEFAULT_SIZES = (100, 1000, 5000)
QUICK_SIZES = (50,)
SPEEDUP_SIZE = 1000
SPEEDUP_WORKERS = 2
SPEEDUP_ROWS = 10_000
WARMUP_SIZE = 5
STEP_ITERATIONS = 3000
QUICK_STEP_ITERATIONS = 100
# The generated conftest writes pytest's timings and the RSS here (unset: it records nothing).
REPORT_VARIABLE = "ISOLATION_BENCH_REPORT"
TEST_FILE = "test_bench_db.py"
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


@dataclass
class Result:
    """The figures of one mode at one size."""

    mode: str
    tests: int
    workers: int
    per_test_ms_mean: float
    per_test_ms_median: float
    per_test_ms_p95: float
    overhead_ms: float | None
    over_bare_ms: float | None  # file and memory: the plugin's own cost over the bare copy
    total_s: float
    peak_rss_mb: float | None
    rss_growth_mb: float | None
    rss_over_baseline_mb: float | None = None  # growth beyond what the baseline's pytest keeps


@dataclass(frozen=True)
class Speedup:
    """``-n 0`` against ``-n 2`` for the file mode."""

    mode: str
    tests: int
    workers: int
    rows_per_test: int
    serial_s: float
    parallel_s: float
    speedup: float


def scope_pragmas() -> dict[str, str]:
    """The settings of each test's isolated database (WAL comes with the template's copy);
    every mode uses them, for fairness."""
    return {**TEMPLATE_PRAGMAS, **SCOPE_PRAGMAS}


# -- the generated suites --------------------------------------------------------------
# Plain strings filled by string.Template ($name), so this file needs no brace escaping.

TEST_MODULE = string.Template('''\
"""$count small database tests: the same work in every mode."""

import pytest

ROWS = $rows  # extra rows each test writes: 0 for the trivial suites
MORE_ROWS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "INSERT INTO logs (level, message) SELECT 'debug', 'row ' || i FROM n"
)


@pytest.mark.parametrize("number", range($count))
def test_database_work(db, number):
    db.execute("INSERT INTO logs (level, message) VALUES ('info', ?)", [f"test {number}"])
    if ROWS:
        db.execute(MORE_ROWS, [ROWS])
    assert db.execute("SELECT count(*) FROM logs").rows[0][0] >= 1 + ROWS
''')

REPORT_PLUGIN = '''\
"""Generated by bench/isolation_bench.py; removed after the run."""

import json
import os

import psutil
import pytest

REPORT = os.environ.get("ISOLATION_BENCH_REPORT")
_recording = []
_durations = {}
_outcomes = {"passed": 0, "failed": 0, "skipped": 0}
_failures = []
_rss = {}
_expected = []


def _rss_mb():
    return psutil.Process().memory_info().rss / 2**20


def pytest_configure(config):
    # Under xdist the main process receives every worker's reports: it alone records.
    if REPORT and not hasattr(config, "workerinput"):
        _recording.append(True)


def pytest_collectreport(report):
    if _recording and report.failed:
        _failures.append(f"collecting {report.nodeid}:\\n{report.longreprtext}")


def pytest_collection_finish(session):
    _expected.append(len(session.items))


def pytest_runtest_logreport(report):
    if not _recording:
        return
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.failed:
        _outcomes["failed"] += 1
        _failures.append(f"{report.nodeid} ({report.when}):\\n{report.longreprtext}")
    elif report.skipped:
        _outcomes["skipped"] += 1
    elif report.when == "call":
        _outcomes["passed"] += 1


def pytest_runtest_logfinish(nodeid, location):
    if not _recording:
        return
    finished = _rss.setdefault("finished", 0) + 1
    _rss["finished"] = finished
    if finished == 1:
        _rss["first_mb"] = _rss_mb()
    if _expected and finished == _expected[0]:
        _rss["last_mb"] = _rss_mb()


def pytest_unconfigure(config):
    if _recording:
        figures = {"durations": list(_durations.values()), "outcomes": _outcomes}
        with open(REPORT, "w") as report:
            json.dump({**figures, "failures": _failures, "rss": _rss}, report)
'''

DATABASES = """
import itertools

from bench.isolation_bench import DATA_DIR, MIGRATIONS_DIR, RUNS_DIR, scope_pragmas
from lib.database import DatabaseClient
from lib.migrate import apply_migrations
from lib.scope_databases import (
    SCOPE_PRAGMAS,
    delete_database_files,
    discard_database,
    memory_url,
    remove_run_directory,
    run_directory,
    template_for,
)

# Every mode makes its databases where the plugin makes its own: the same filesystem.
DATA = run_directory(RUNS_DIR)
_numbers = itertools.count()
_shared = []
_template = []


def pytest_sessionfinish(session):
    for client in _shared:
        client.close()
    remove_run_directory(RUNS_DIR)
"""

SHARED_DATABASE = """

def pytest_sessionstart(session):
    \"\"\"Migrate the one database before the first test, as the plugin builds its template.\"\"\"
    client = DatabaseClient(
        str(DATA / "shared.db"), owner="the shared benchmark database", pragmas=scope_pragmas()
    )
    apply_migrations(client.db)
    _shared.append(client)
"""

BARE_COPY = """

def pytest_sessionstart(session):
    \"\"\"This process's copy of the cached template, made before the first test.\"\"\"
    _template.append(template_for(MIGRATIONS_DIR, DATA_DIR, RUNS_DIR))
"""

MODE_FIXTURES = {
    "shared": DATABASES
    + SHARED_DATABASE
    + """

@pytest.fixture
def db():
    return _shared[0]
""",
    "savepoint": DATABASES
    + SHARED_DATABASE
    + """

@pytest.fixture
def db():
    client = _shared[0]
    client.execute("SAVEPOINT per_test")
    yield client
    client.execute("ROLLBACK TO per_test")
    client.execute("RELEASE per_test")
""",
    "migrate-per-test": DATABASES
    + """
import sqlite_utils  # migrations need it: imported with the suite, not by its first test


@pytest.fixture
def db():
    path = DATA / f"test-{next(_numbers)}.db"
    client = DatabaseClient(str(path), owner="one benchmark test", pragmas=scope_pragmas())
    apply_migrations(client.db)
    yield client
    client.close()
    delete_database_files(path)
""",
    "bare-file": DATABASES
    + BARE_COPY
    + """

@pytest.fixture
def db():
    path = DATA / f"test-{next(_numbers)}.db"
    _template[0].copy_to(path)
    client = DatabaseClient(str(path), owner="one benchmark test", pragmas=SCOPE_PRAGMAS)
    yield client
    discard_database(path, client.close)
""",
    "bare-memory": DATABASES
    + BARE_COPY
    + """

@pytest.fixture
def db():
    url = memory_url(f"bench-{next(_numbers)}")
    client = DatabaseClient(url, owner="one benchmark test", pragmas=SCOPE_PRAGMAS)
    _template[0].copy_into(client)
    yield client
    client.close()
""",
    "file": '\npytest_plugins = ["tests.setup_integration"]\n',
    "memory": '\npytest_plugins = ["tests.setup_integration"]\n',
}

PYTEST_INI = """\
[pytest]
console_output_style = classic
asyncio_default_fixture_loop_scope = function
"""
PLUGIN_INI = string.Template(
    "isolation_test_paths = .\nisolation_migrations_dir = $migrations\nisolation_data_dir = $data\n"
).substitute(migrations=MIGRATIONS_DIR, data=DATA_DIR)


def write_suite(directory: Path, mode: str, count: int, rows: int = 0) -> None:
    """A self-contained suite: its own ini and conftest, so the project's config stays out."""
    directory.mkdir(parents=True)
    ini = PYTEST_INI + (PLUGIN_INI if mode in PLUGIN_MODES else "")
    (directory / "pytest.ini").write_text(ini)
    (directory / "conftest.py").write_text(REPORT_PLUGIN + MODE_FIXTURES[mode])
    (directory / TEST_FILE).write_text(TEST_MODULE.substitute(count=count, rows=rows))


# -- running pytest --------------------------------------------------------------------


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pytest_command(
    directory: Path, mode: str, workers: int, *, keep_reports: bool = False
) -> list[str]:
    """``python -m pytest`` confined to ``directory``; with ``keep_reports``, quiet terminal
    output and junit XML, as a CI run has them, else neither (see the module docstring)."""
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


# -- measuring -------------------------------------------------------------------------


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(
    workdir: Path,
    mode: str,
    count: int,
    workers: int = 0,
    rows: int = 0,
    *,
    keep_reports: bool = False,
) -> Result:
    """Generate the suite, run it, check it passed, and turn its reports into figures."""
    directory = workdir / f"{mode}-{count}-n{workers}-r{rows}"
    write_suite(directory, mode, count, rows)
    report = directory / "report.json"
    command = pytest_command(directory, mode, workers, keep_reports=keep_reports)
    run = run_pytest(directory, command, report)
    try:
        data = read_report(run, report)
        check_passed(run, count, data)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    durations_ms = [seconds * 1000 for seconds in data["durations"]]
    if len(durations_ms) != count:
        raise BenchFailure(f"{directory.name}: {len(durations_ms)} timings for {count} tests")
    rss = data["rss"]
    # Under xdist the RSS is the main process's, which runs no test: no growth to report.
    growth = rss["last_mb"] - rss["first_mb"] if "last_mb" in rss else None
    return Result(
        mode=mode,
        tests=count,
        workers=workers,
        per_test_ms_mean=statistics.fmean(durations_ms),
        per_test_ms_median=statistics.median(durations_ms),
        per_test_ms_p95=_p95(durations_ms),
        overhead_ms=None,
        over_bare_ms=None,
        total_s=run.wall_s,
        peak_rss_mb=run.peak_rss_mb,
        rss_growth_mb=growth,
    )


def best_rounds(
    repeat: int, workdir: Path, modes: Sequence[str], count: int, *, keep_reports: bool = False
) -> list[Result]:
    """Each mode's least disturbed run (lowest mean), as timeit does on a busy machine.

    The rounds are interleaved (every mode once, then every mode again), so that a slow
    spell of the machine is less likely to fall on one mode alone.
    """
    best: dict[str, Result] = {}
    for round_number in range(1, repeat + 1):
        for mode in modes:
            result = measure(workdir, mode, count, keep_reports=keep_reports)
            if mode not in best or result.per_test_ms_mean < best[mode].per_test_ms_mean:
                best[mode] = result
            print(f"  {mode:<17} {count:>6} tests, round {round_number}", file=sys.stderr)
    return [best[mode] for mode in modes]


def run_all(
    workdir: Path,
    sizes: Sequence[int],
    modes: Sequence[str],
    repeat: int,
    *,
    keep_reports: bool = False,
) -> list[Result]:
    """Each size, baseline first, then every mode; overhead is the mean difference to it,
    and the RSS growth beyond the baseline's is what the mode itself keeps."""
    results = []
    ordered = [BASELINE, *(mode for mode in modes if mode != BASELINE)]
    for count in sizes:
        size_results = best_rounds(repeat, workdir, ordered, count, keep_reports=keep_reports)
        baseline = size_results[0]
        for result in size_results:
            result.overhead_ms = result.per_test_ms_mean - baseline.per_test_ms_mean
            if result.rss_growth_mb is not None and baseline.rss_growth_mb is not None:
                result.rss_over_baseline_mb = result.rss_growth_mb - baseline.rss_growth_mb
        results += size_results
    by_mode = {(result.mode, result.tests): result for result in results}
    for result in results:
        bare = by_mode.get((BARE_COPIES.get(result.mode, ""), result.tests))
        if bare is not None:
            result.over_bare_ms = result.per_test_ms_mean - bare.per_test_ms_mean
    return results


def measure_speedup(
    workdir: Path,
    count: int,
    results: list[Result],
    mode: str = "file",
    rows: int = 0,
    *,
    keep_reports: bool = False,
) -> Speedup:
    """Wall time of ``mode`` serially over wall time on ``SPEEDUP_WORKERS`` workers.

    Measured for the baseline too: with tests this small, xdist's own per-test cost
    bounds the speedup of every mode, and the baseline shows that bound. With ``rows``,
    each test also writes that many rows, a few milliseconds of real database work.
    """
    serial = next((r for r in results if r.mode == mode and r.tests == count and not rows), None)
    if serial is None:
        serial = measure(workdir, mode, count, rows=rows, keep_reports=keep_reports)
    parallel = measure(
        workdir, mode, count, workers=SPEEDUP_WORKERS, rows=rows, keep_reports=keep_reports
    )
    return Speedup(
        mode=mode,
        tests=count,
        workers=SPEEDUP_WORKERS,
        rows_per_test=rows,
        serial_s=serial.total_s,
        parallel_s=parallel.total_s,
        speedup=serial.total_s / parallel.total_s,
    )


# -- reporting -------------------------------------------------------------------------


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(results: Sequence[Result]) -> str:
    lines = [
        "| mode | tests | per-test ms (mean) | overhead ms vs shared | of which isolation "
        "| total s | peak RSS MB | RSS growth MB | RSS over shared MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        overhead = "baseline" if r.mode == BASELINE else _number(r.overhead_ms, "+.3f")
        over_bare = "" if r.over_bare_ms is None else f"{r.over_bare_ms:+.3f}"
        rss_over = "baseline" if r.mode == BASELINE else _number(r.rss_over_baseline_mb, "+.2f")
        lines.append(
            f"| {r.mode} | {r.tests} | {r.per_test_ms_mean:.3f} | {overhead} | {over_bare} "
            f"| {r.total_s:.2f} | {_number(r.peak_rss_mb, '.1f')} "
            f"| {_number(r.rss_growth_mb, '+.2f')} | {rss_over} |"
        )
    return "\n".join(lines)


def speedup_line(speedup: Speedup | None, reason: str) -> str:
    if speedup is None:
        return f"-n {SPEEDUP_WORKERS} speedup: not measured ({reason})"
    work = f" writing {speedup.rows_per_test} rows each" if speedup.rows_per_test else ""
    return (
        f"-n {speedup.workers} speedup, {speedup.mode} mode, {speedup.tests} tests{work}: "
        f"{speedup.speedup:.2f}x (-n 0: {speedup.serial_s:.2f} s, "
        f"-n {speedup.workers}: {speedup.parallel_s:.2f} s)"
    )


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pragmas": scope_pragmas(),
        "databases_in": str(RUNS_DIR),
    }


# -- the command -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.isolation_bench",
        description="Per-test cost of a fresh migrated database, side by side with the "
        "alternatives, measured on generated pytest suites.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="tests per suite (100 1000 5000)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 tests per suite")
    parser.add_argument(
        "--speedup-size",
        type=int,
        help=f"tests for the -n {SPEEDUP_WORKERS} speedup of the file mode "
        f"({SPEEDUP_SIZE}; --quick: the smallest size; 0: skip)",
    )
    parser.add_argument(
        "--speedup-rows",
        type=int,
        default=SPEEDUP_ROWS,
        help=f"rows each test writes for the speedup with real work ({SPEEDUP_ROWS}; 0: skip)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per mode and size; the best one counts"
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="fresh databases to time step by step, without pytest "
        f"({STEP_ITERATIONS}; --quick: {QUICK_STEP_ITERATIONS}; 0: skip)",
    )
    parser.add_argument(
        "--keep-reports",
        action="store_true",
        help="run the suites with pytest's terminal output and junit XML, as CI does: "
        "both keep every test's reports in memory",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = QUICK_STEP_ITERATIONS if args.quick else STEP_ITERATIONS
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.speedup_size is None:
        args.speedup_size = min(args.sizes) if args.quick else SPEEDUP_SIZE
    if min(args.sizes) < 1 or args.repeat < 1:
        parser.error("--sizes and --repeat must be positive")
    skippable = {
        "--steps": args.steps,
        "--speedup-size": args.speedup_size,
        "--speedup-rows": args.speedup_rows,
    }
    for option, value in skippable.items():
        if value < 0:
            parser.error(f"{option} must be at least 0 (0: skip)")
    if args.json and not args.json.parent.is_dir():
        parser.error(f"--json: no directory {args.json.parent}")
    # A repeated size or mode would be measured twice and paired with the wrong bare copy.
    args.sizes = list(dict.fromkeys(args.sizes))
    args.modes = list(dict.fromkeys(args.modes))
    return args


def measure_steps(iterations: int) -> dict[str, Steps]:
    """Time each step of a fresh database in this process, where the plugin makes them."""
    try:
        template = template_for(MIGRATIONS_DIR, DATA_DIR, RUNS_DIR)
        return time_steps(template, run_directory(RUNS_DIR), iterations)
    finally:
        remove_run_directory(RUNS_DIR)


def make_workdir() -> Path:
    """A directory of our own inside the project, so ``lib`` and ``tests`` import as usual."""
    BENCH_DIR.mkdir(exist_ok=True)
    workdir = BENCH_DIR / f"run-{os.getpid()}-{secrets.token_hex(3)}"
    workdir.mkdir()
    return workdir


def remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    if BENCH_DIR.is_dir() and not any(BENCH_DIR.iterdir()):
        BENCH_DIR.rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not has_module("psutil"):
        print("error: the benchmark needs psutil (nox -s bench installs it)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    workdir = make_workdir()
    speedup: Speedup | None = None
    baseline_speedup: Speedup | None = None
    work_speedup: Speedup | None = None
    reason = "skipped (--speedup-size 0)"
    steps: dict[str, Steps] | None = None
    try:
        measure(workdir, "file", WARMUP_SIZE)  # compile and cache imports and the template
        results = run_all(
            workdir, args.sizes, args.modes, args.repeat, keep_reports=args.keep_reports
        )
        if args.speedup_size and not has_module("xdist"):
            reason = "pytest-xdist is not installed"
        elif args.speedup_size:
            size, keep = args.speedup_size, args.keep_reports
            speedup = measure_speedup(workdir, size, results, keep_reports=keep)
            baseline_speedup = measure_speedup(workdir, size, results, BASELINE, keep_reports=keep)
            if args.speedup_rows:
                work_speedup = measure_speedup(
                    workdir, size, results, rows=args.speedup_rows, keep_reports=keep
                )
        if args.steps:
            steps = measure_steps(args.steps)
    except BenchFailure as failure:
        print(f"error: a benchmark suite failed: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        remove_workdir(workdir)
    wall = time.perf_counter() - started
    info = environment()
    print(
        f"Python {info['python']}, SQLite {info['sqlite']}, {info['platform']}, "
        f"{info['cpus']} CPUs; pragmas {info['pragmas']}; databases in {info['databases_in']}"
    )
    reports = "on" if args.keep_reports else "off (they keep every test's reports in memory)"
    print(f"pytest's terminal output and junit XML: {reports}\n")
    print(markdown_table(results))
    print(f"\n{speedup_line(speedup, reason)}")
    for extra in (baseline_speedup, work_speedup):
        if extra is not None:
            print(speedup_line(extra, reason))
    if steps is not None:
        print(f"\nWhere a fresh database's time goes (mean of {args.steps}, without pytest):\n")
        print(steps_table(steps))
    verdicts = check_targets(results, speedup, work_speedup, steps)
    print(f"\nTargets:\n\n{targets_table(verdicts)}")
    print(f"\nbench wall time: {wall:.1f} s")
    if args.json:
        figures = {
            "environment": info,
            "sizes": args.sizes,
            "repeat": args.repeat,
            "keep_reports": args.keep_reports,
            "modes": [BASELINE, *(mode for mode in args.modes if mode != BASELINE)],
            "results": [asdict(result) for result in results],
            "speedup": asdict(speedup) if speedup else None,
            "baseline_speedup": asdict(baseline_speedup) if baseline_speedup else None,
            "work_speedup": asdict(work_speedup) if work_speedup else None,
            "steps": steps,
            "targets": [asdict(verdict) for verdict in verdicts],
            "wall_s": wall,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
