"""The isolation metrics reporter: names every leak with its test, and reports the run.

For each isolated test it records duration, memory growth and what the test left behind
(scopes, open connections with the ``file:line`` that opened them, threads of the
project's code still running, module globals still holding a client). The terminal
summary carries one line per finding, with prefixes CI greps for (``Scope leak detected
in test:``, ``Connection leak detected in test:``, ``Thread leak detected in test:``,
``High memory growth in test:``, ``Slow test detected:``), then the ``Isolation Metrics
Report`` and ``Performance Metrics`` blocks and the check against
``tests/performance-baseline.json``. ``--isolation-report=PATH`` writes it all as JSON,
``GITHUB_STEP_SUMMARY`` gets a Markdown summary, ``--isolation-strict`` fails on any leak.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from mmap import PAGESIZE
from pathlib import Path
from typing import Any

import pytest

from lib.isolation_manager import TestIsolationManager, get_test_isolation_manager
from tests.isolation_settings import ini_flag, unquoted
from tests.setup_integration import is_isolated

try:
    import resource
except ImportError:  # Windows: no /proc either, so memory growth is not measured there
    resource = None  # type: ignore[assignment]

FINDING_PREFIXES = {
    "scope": "Scope leak detected in test",
    "connection": "Connection leak detected in test",
    "thread": "Thread leak detected in test",
    "stale_binding": "Stale client binding in test",
}
PERFORMANCE_COUNTERS = (
    "scopes_created",
    "scopes_destroyed",
    "connections_created",
    "connections_closed",
    "emergency_cleanups",
)
_MB = 1024 * 1024
STATM = "/proc/self/statm"
_statm_fds: dict[int, int | None] = {}  # pid -> its open STATM (a forked child opens its own)
_UNREADABLE = (OSError, ValueError, IndexError)  # a descriptor closed, or now another file's
DEFAULT_BASELINE = "tests/performance-baseline.json"
KEPT_UNTIL_NEXT_RUN = (
    "The next run that isolates tests (any run with xdist workers) deletes the kept "
    "databases: copy elsewhere any you want to keep."
)


def current_rss() -> int:
    """Resident memory of this process in bytes (peak RSS where /proc is missing; 0 on
    Windows). ``/proc/self/statm`` is opened once per process and read again with one
    ``pread``: opening it for each of a test's two reads cost about 15 µs a read. A
    descriptor that code closed meanwhile, or whose number another file took, is opened
    again."""
    for _ in range(2):
        statm = _statm()
        if statm is None:
            break
        try:
            return int(os.pread(statm, 64, 0).split()[1]) * PAGESIZE
        except _UNREADABLE:
            del _statm_fds[os.getpid()]
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _statm() -> int | None:
    """This process's open ``STATM``; None where there is none (macOS, Windows)."""
    pid = os.getpid()
    if pid not in _statm_fds:
        try:
            _statm_fds[pid] = os.open(STATM, os.O_RDONLY)
        except OSError:
            _statm_fds[pid] = None
    return _statm_fds[pid]


@dataclass(slots=True)  # one per isolated test, kept until the run ends
class TestRecord:
    """One isolated test: how long it took, what it grew, what it left behind."""

    __test__ = False

    nodeid: str
    duration_ms: float = 0.0
    failed: bool = False
    memory_growth_mb: float = 0.0
    leaks: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Regression:
    metric: str
    current: float
    baseline: float
    threshold: float
    severity: str


# The baseline file's settings besides its "metrics".
BASELINE_NUMBERS = ("slow_test_ms", "high_memory_growth_mb", "min_tests_for_averages")


def load_baseline(path: Path | None, metrics: Iterable[str]) -> dict[str, Any]:
    """The thresholds file (None: no checks). Checked before the tests run (``metrics``:
    the names it may judge), not found missing or broken after them."""
    if path is None:
        return {}
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise pytest.UsageError(
            f"{path} (isolation_performance_baseline) {what}: fix the path, or set "
            "isolation_performance_baseline to an empty value to turn the performance "
            "regression check off"
        )
    try:
        baseline: dict[str, Any] = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise pytest.UsageError(f"{path} is not valid JSON: {error}") from error
    problem = _baseline_problem(baseline, set(metrics))
    if problem:
        raise pytest.UsageError(f"{path} (isolation_performance_baseline): {problem}")
    return baseline


def _baseline_problem(baseline: Any, metrics: set[str]) -> str | None:
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(baseline, dict):
        return "it must be a JSON object"
    unknown = sorted(set(baseline) - {*BASELINE_NUMBERS, "metrics"})
    if unknown:
        return f"unknown entry {unknown[0]!r}; known: {', '.join([*BASELINE_NUMBERS, 'metrics'])}"
    for key in BASELINE_NUMBERS:
        if key in baseline and not number(baseline[key]):
            return f"{key} must be a number, not {baseline[key]!r}"
    judged = baseline.get("metrics", {})
    if not isinstance(judged, dict):
        return "metrics must be an object of metric names"
    for metric, limits in judged.items():
        if metric not in metrics:
            return f"unknown metric {metric!r}; known: {', '.join(sorted(metrics))}"
        if not isinstance(limits, dict) or not number(limits.get("baseline")):
            return f"metrics.{metric} needs a number under 'baseline'"
        unknown = sorted(set(limits) - {"baseline", "warning", "error"})
        if unknown:  # a misspelt severity would turn its check off
            return (
                f"metrics.{metric}: unknown entry {unknown[0]!r}; known: baseline, warning, error"
            )
        factors = [severity for severity in ("warning", "error") if severity in limits]
        if not factors or not all(number(limits[severity]) for severity in factors):
            return f"metrics.{metric} needs a number under 'warning', 'error' or both"
    return None


def averages_judged(summary: dict[str, float], baseline: dict[str, Any]) -> bool:
    """Whether enough tests ran for their averages to mean something: a few slow tests
    picked with ``-k`` are not a regression of the suite."""
    return summary["total_tests"] >= int(baseline.get("min_tests_for_averages", 0))


def find_regressions(summary: dict[str, float], baseline: dict[str, Any]) -> list[Regression]:
    """Compare the run with the baseline: above ``baseline * warning`` warns, ``* error`` fails."""
    regressions = []
    judge_averages = averages_judged(summary, baseline)
    for metric, limits in baseline.get("metrics", {}).items():
        if metric not in summary or (metric.startswith("average_") and not judge_averages):
            continue
        current = summary[metric]
        for severity in ("error", "warning"):
            if severity not in limits:
                continue
            threshold = limits["baseline"] * limits[severity]
            if current > threshold:
                regressions.append(
                    Regression(metric, current, limits["baseline"], threshold, severity)
                )
                break
    return regressions


class IsolationReporter:
    """Collects per-test records (in each xdist worker) and reports them (in the main process)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        current_rss()  # its file opened before any test (pytester's --lsof checks them)
        self.records: list[TestRecord] = []
        self.session_leaks: list[dict[str, str]] = []  # of scopes that outlived their test
        self.performance: dict[str, float] = dict.fromkeys(PERFORMANCE_COUNTERS, 0)
        self.cleanup_time_total = 0.0
        self.kept_databases: list[str] = []
        self.lost_workers: list[str] = []  # xdist workers that crashed before reporting
        setting = unquoted(
            "isolation_performance_baseline",
            str(config.getini("isolation_performance_baseline")).strip(),
        )
        self.baseline_path = Path(config.rootpath, setting) if setting else None
        # The default file may be left out (a repository that adopted the plugin without
        # it): the report says so. A path someone set must exist.
        self.baseline_missing = (
            self.baseline_path is not None
            and setting == DEFAULT_BASELINE
            and not self.baseline_path.exists()
        )
        self.baseline = (
            {} if self.baseline_missing else load_baseline(self.baseline_path, self.summary())
        )
        self.report_path: str | None = config.getoption("isolation_report")
        if self.report_path:
            check_report_path(Path(self.report_path))
        self.unwritten: list[str] = []  # reports asked for that could not be written
        self.strict = bool(config.getoption("isolation_strict")) or ini_flag(
            config, "isolation_strict"
        )
        self.regressions: list[Regression] = []
        self._summary: dict[str, float] | None = None  # the run's, once it has ended
        self._leaky = False
        self._current: dict[str, TestRecord] = {}
        self._leaks_taken = 0  # how many of the manager's leaks the records hold

    # -- collecting ---------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        if not is_isolated(item):
            return (yield)
        manager = get_test_isolation_manager()
        record = TestRecord(item.nodeid)
        self._current[item.nodeid] = record
        first_leak = len(manager.leaks)
        rss_before = current_rss()
        try:
            return (yield)
        finally:
            record.memory_growth_mb = (current_rss() - rss_before) / _MB
            record.leaks = [asdict(leak) for leak in manager.leaks[first_leak:]]
            self._leaks_taken = len(manager.leaks)
            self.records.append(self._current.pop(item.nodeid))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self._current.get(report.nodeid)
        if record is not None:
            record.duration_ms += report.duration * 1000
            record.failed = record.failed or report.failed

    def _own_performance(self, manager: TestIsolationManager) -> None:
        metrics = manager.performance_metrics
        for counter in PERFORMANCE_COUNTERS:
            self.performance[counter] += metrics[counter]
        self.cleanup_time_total += metrics["average_cleanup_time"] * metrics["scopes_destroyed"]
        self.kept_databases += [str(path) for path in manager.kept_databases]

    # -- xdist: workers send their records to the main process --------------------------

    def _data(self) -> dict[str, Any]:
        return {
            "records": [asdict(record) for record in self.records],
            "performance": self.performance,
            "cleanup_time_total": self.cleanup_time_total,
            "kept_databases": self.kept_databases,
            "session_leaks": self.session_leaks,
        }

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("isolation_report")
        if not data:
            self.lost_workers.append(str(getattr(getattr(node, "gateway", None), "id", "?")))
            return
        self.records += [TestRecord(**record) for record in data["records"]]
        for counter, value in data["performance"].items():
            self.performance[counter] += value
        self.cleanup_time_total += data["cleanup_time_total"]
        self.kept_databases += data["kept_databases"]
        self.session_leaks += data["session_leaks"]

    # -- reporting ----------------------------------------------------------------------

    def summary(self) -> dict[str, float]:
        records = self.records
        count = len(records) or 1
        destroyed = self.performance["scopes_destroyed"] or 1
        return {
            "total_tests": len(records),
            "failed_tests": sum(record.failed for record in records),
            "average_test_duration_ms": sum(r.duration_ms for r in records) / count,
            "max_test_duration_ms": max((r.duration_ms for r in records), default=0.0),
            "average_memory_growth_mb": sum(r.memory_growth_mb for r in records) / count,
            "max_memory_growth_mb": max((r.memory_growth_mb for r in records), default=0.0),
            "average_cleanup_time_ms": self.cleanup_time_total / destroyed,
            "scope_leaks": self._tests_with("scope"),
            "connection_leaks": self._tests_with("connection"),
            "thread_leaks": self._tests_with("thread"),
            "stale_bindings": self._tests_with("stale_binding"),
        }

    def _tests_with(self, kind: str) -> int:
        tests = {r.nodeid for r in self.records if any(leak["kind"] == kind for leak in r.leaks)}
        return len(tests | {leak["test"] for leak in self.session_leaks if leak["kind"] == kind})

    def findings(self) -> list[str]:
        """One greppable line per leak, slow test or memory jump, naming the test."""
        slow_ms = self.baseline.get("slow_test_ms", 5000)
        high_mb = self.baseline.get("high_memory_growth_mb", 50)
        lines = []
        for record in self.records:
            for leak in record.leaks:
                lines.append(
                    f"{FINDING_PREFIXES[leak['kind']]}: {record.nodeid} ({leak['detail']})"
                )
            if record.memory_growth_mb > high_mb:
                lines.append(
                    f"High memory growth in test: {record.nodeid} "
                    f"({record.memory_growth_mb:.1f} MB > {high_mb} MB)"
                )
            if record.duration_ms > slow_ms:
                duration = f"{record.duration_ms:.0f} ms > {slow_ms} ms"
                lines.append(f"Slow test detected: {record.nodeid} ({duration})")
        for leak in self.session_leaks:
            where = f"{leak['detail']}, found at the end of the session"
            lines.append(f"{FINDING_PREFIXES[leak['kind']]}: {leak['test']} ({where})")
        lines += [
            f"Worker {worker} ended without its records (it crashed): the figures below "
            "leave out the tests it ran"
            for worker in self.lost_workers
        ]
        return lines

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Iterator[None]:
        """Reports once the isolation plugin has ended the scopes left for the session's
        end, so that what it finds there counts too. Trylast: the innermost wrapper, so a
        worker's data is ready before xdist sends it and the summary before it is shown."""
        manager = get_test_isolation_manager()  # the plugin lets go of it at the end
        result = yield
        self.session_leaks += [asdict(leak) for leak in manager.leaks[self._leaks_taken :]]
        self._own_performance(manager)
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["isolation_report"] = self._data()
        else:
            self._report(session)
        return result

    def _report(self, session: pytest.Session) -> None:
        summary = self._summary = self.summary()
        self.regressions = find_regressions(summary, self.baseline)
        self._leaky = any(
            summary[kind]
            for kind in ("scope_leaks", "connection_leaks", "thread_leaks", "stale_bindings")
        )
        if self.report_path:
            report = Path(self.report_path)
            self._write(
                "the JSON report (--isolation-report)", lambda: self._write_json(report, summary)
            )
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary and self.records:
            markdown = self.markdown(summary)
            self._write(
                "the step summary (GITHUB_STEP_SUMMARY)",
                lambda: _append(Path(step_summary), markdown),
            )
        failed = self._failed_by_regression() or (self.strict and self._leaky) or self.unwritten
        if failed and session.exitstatus == pytest.ExitCode.OK:  # keep "interrupted" and others
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write(self, what: str, write: Callable[[], object]) -> None:
        """A report that cannot be written fails the run and says why; it never hides the
        tests' own results, which pytest prints after this."""
        try:
            write()
        except OSError as error:
            self.unwritten.append(f"could not write {what}: {error}")

    def _write_json(self, path: Path, summary: dict[str, float]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "summary": summary,
            "performance_metrics": {
                **self.performance,
                "average_cleanup_time_ms": summary["average_cleanup_time_ms"],
            },
            "findings": self.findings(),
            "leaks": [
                *(leak | {"test": r.nodeid} for r in self.records for leak in r.leaks),
                *self.session_leaks,
            ],
            "regressions": [asdict(regression) for regression in self.regressions],
            "kept_databases": self.kept_databases,
            "tests": [asdict(record) for record in self.records],
        }
        path.write_text(json.dumps(report, indent=2))

    def text_blocks(self, summary: dict[str, float]) -> list[str]:
        total = summary["total_tests"] or 1
        perf = self.performance
        return [
            "Isolation Metrics Report",
            f"  Total Tests: {summary['total_tests']}",
            f"  Failed Tests: {summary['failed_tests']}",
            f"  Average Duration: {summary['average_test_duration_ms']:.2f}ms",
            f"  Scope Leaks: {summary['scope_leaks']} "
            f"({summary['scope_leaks'] / total * 100:.2f}%)",
            f"  Connection Leaks: {summary['connection_leaks']} "
            f"({summary['connection_leaks'] / total * 100:.2f}%)",
            f"  Thread Leaks: {summary['thread_leaks']}",
            f"  Stale Client Bindings: {summary['stale_bindings']}",
            f"  Average Memory Growth: {summary['average_memory_growth_mb']:.2f}MB per test",
            "Performance Metrics",
            f"  Scopes Created: {perf['scopes_created']:.0f}",
            f"  Scopes Destroyed: {perf['scopes_destroyed']:.0f}",
            f"  Connections Created: {perf['connections_created']:.0f}",
            f"  Connections Closed: {perf['connections_closed']:.0f}",
            f"  Average Cleanup Time: {summary['average_cleanup_time_ms']:.2f}ms",
            f"  Emergency Cleanups: {perf['emergency_cleanups']:.0f}",
        ]

    def _failed_by_regression(self) -> bool:
        return any(r.severity == "error" for r in self.regressions)

    def regression_table(self) -> list[str]:
        lines = []
        if self._summary is not None and not averages_judged(self._summary, self.baseline):
            minimum = self.baseline["min_tests_for_averages"]
            lines.append(f"Averages not checked: fewer than {minimum} isolated tests ran")
        if self.baseline_missing:
            lines.append(f"Performance regressions not checked: {DEFAULT_BASELINE} does not exist")
        if not self.regressions:
            return [*lines, "No performance regressions detected"] if self.baseline else lines
        lines += [
            f"{len(self.regressions)} performance regression(s) detected:",
            f"  {'metric':<26} {'current':>10} {'baseline':>10} {'threshold':>10}  severity",
        ]
        lines += [
            f"  {r.metric:<26} {r.current:>10.2f} {r.baseline:>10.2f} {r.threshold:>10.2f}"
            f"  {r.severity}"
            for r in self.regressions
        ]
        return lines

    def markdown(self, summary: dict[str, float]) -> str:
        rows = "\n".join(f"| {line.strip()} |" for line in self.text_blocks(summary))
        findings = "\n".join(f"- {line}" for line in self.findings()) or "- no leaks"
        return f"## Isolation Metrics Report\n\n| |\n|---|\n{rows}\n\n{findings}\n\n"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        summary = self._summary
        if hasattr(self.config, "workerinput") or summary is None:
            return
        if self.records or self.lost_workers:
            self._write_section(terminalreporter, summary)
        for line in self.unwritten:
            terminalreporter.write_line(f"isolation report: {line}", red=True)

    def _write_section(self, terminalreporter: Any, summary: dict[str, float]) -> None:
        terminalreporter.section("isolation metrics")
        for line in [*self.findings(), *self.text_blocks(summary), *self.regression_table()]:
            terminalreporter.write_line(line)
        for path in self.kept_databases:
            terminalreporter.write_line(f"Kept database of a failed test: {path}")
        if self.kept_databases:
            terminalreporter.write_line(KEPT_UNTIL_NEXT_RUN)
        if self._failed_by_regression():
            terminalreporter.write_line(
                "performance regressions of severity error fail this run (thresholds: "
                f"{self.baseline_path}, the isolation_performance_baseline setting)",
                red=True,
            )
        if self.strict and self._leaky:
            terminalreporter.write_line("isolation strict mode: leaks fail this run", red=True)


def check_report_path(path: Path) -> None:
    """Fail at start, not after the tests, where the JSON report could not be written."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if path.is_dir():
        problem = "it is a directory"
    elif existing != path and not existing.is_dir():
        problem = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK):
        problem = "this process may not write there"
    else:
        return
    raise pytest.UsageError(f"--isolation-report={path}: {problem}; give a file path")


def _append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isolation")
    group.addoption("--isolation-report", metavar="PATH", help="write the isolation report as JSON")
    group.addoption(
        "--isolation-strict", action="store_true", help="fail the run when any test leaks"
    )
    parser.addini(
        "isolation_strict", "fail the run when any test leaks", type="bool", default=False
    )
    parser.addini(
        "isolation_performance_baseline",
        "JSON thresholds for the performance regression check (empty: no check)",
        default=DEFAULT_BASELINE,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(IsolationReporter(config), "isolation-reporter")
