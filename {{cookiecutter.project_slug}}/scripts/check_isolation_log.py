"""Check an integration test log (and its JSON report) for isolation failures.

Run it after ``nox -s integration``, as a CI job would::

    nox -s integration -- --isolation-report=isolation-report.json 2>&1 | tee integration-tests.log
    python scripts/check_isolation_log.py integration-tests.log --report isolation-report.json

Checks:

- A closed client's error in the log fails: ``CLIENT_CLOSED: ...`` (a test used a
  database client after the scope that owned it ended) or sqlite3's ``Cannot operate on a
  closed database`` (a connection used after it was closed). Test source quoted in a
  traceback, such as ``match="^CLIENT_CLOSED:"``, is not an error and does not count.
- ``Connection leak detected in test:`` in the log (or a connection leak in the report)
  fails: a test left a database connection open. ``Scope leak detected in test:`` (or a
  scope leak in the report) fails too: a test created a scope and left it; and so does
  ``Thread leak detected in test:``: a test left a thread of its own running.
- Failed tests (pytest's last summary line in the log, the Isolation Metrics Report's
  ``Failed Tests:`` line, or the report's ``failed_tests``) fail, so that a log saved
  through ``| tee``, which hides the run's exit code, is never a pass; so does an xdist
  worker that crashed (``Worker gw0 ended without its records``), whose tests those
  counts leave out.
- ``High memory growth in test:`` warns, and so does ``Stale client binding in test:``: a
  module global kept a client after its test ended (its next use is a CLIENT_CLOSED).
- Performance regressions in the report (the check against
  ``tests/performance-baseline.json``) fail at severity ``error`` and warn at ``warning``.

Every failure and warning is printed with the offending lines and as a GitHub annotation
(``::error::`` / ``::warning::``). When ``GITHUB_STEP_SUMMARY`` is set, a Markdown summary
(the checks and the Isolation Metrics Report) is appended to it.

Exit codes: 0 every check passed (warnings allowed); 1 at least one check failed;
2 no check failed but the log or the report could not be read, or proves nothing: a log
without the Isolation Metrics Report (the run ended before it, or it is another log), a
report without its summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIENT_CLOSED = "CLIENT_CLOSED"
# The errors a closed client raises, as they appear in a log: not inside quotes, a regular
# expression or a word, where a test's source (quoted by a traceback) would have them.
CLOSED_CLIENT_ERROR = re.compile(
    r"(?<![\w\"'^])(?:CLIENT_CLOSED: |Cannot operate on a closed database)"
)
CONNECTION_LEAK = "Connection leak detected in test:"
SCOPE_LEAK = "Scope leak detected in test:"
THREAD_LEAK = "Thread leak detected in test:"
HIGH_MEMORY = "High memory growth in test:"
STALE_BINDING = "Stale client binding in test:"
REPORT_HEADING = "Isolation Metrics Report"
# pytest's last line: "==== 1 failed, 80 passed, 2 errors in 3.21s ====" (no "=" with -q;
# "1 subtests passed" with subtests), its colours taken out.
COUNT = r"\d+ \w+(?: \w+)?"
PYTEST_SUMMARY = re.compile(rf"^=*\s*(?P<counts>{COUNT}(?:, {COUNT})*) in [\d.]+s\b[^=]*=*$")
FAILED_COUNTS = re.compile(r"(\d+) (?:\w+ )?(?:failed|errors?)\b")
# The Isolation Metrics Report's count, in the log even where -qq left out pytest's line.
REPORTED_FAILURES = re.compile(r"^Failed Tests: (\d+)$")
# The report's finding for an xdist worker that crashed: its tests are in no count.
CRASHED_WORKER = "ended without its records (it crashed)"
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
MAX_QUOTED = 20

PASSED, WARNING, FAILED, UNCHECKED = "passed", "warning", "FAILED", "UNCHECKED"

EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2

# The leak checks: the report's kind of leak, the log's line prefix, what a test left.
LEAK_CHECKS = (
    ("connection", CONNECTION_LEAK, "a test left a database connection open"),
    ("scope", SCOPE_LEAK, "a test created a database scope and left it"),
    (
        "thread",
        THREAD_LEAK,
        "a test left a thread running, which would use the next test's database",
    ),
)

# The checks that warn: their name, the log's line prefix, what the lines found say.
WARNING_CHECKS = (
    ("High memory growth", HIGH_MEMORY, "High memory growth in {} test(s)"),
    (
        "Stale client bindings",
        STALE_BINDING,
        "{} module global(s) kept a client after its test ended: using it is a CLIENT_CLOSED",
    ),
)


@dataclass
class Check:
    """One check's outcome, with the lines that caused it."""

    name: str
    status: str = PASSED
    message: str = "none"
    lines: list[str] = field(default_factory=list)


def _grep(
    log_lines: Sequence[str] | None, needle: str | re.Pattern[str], log_name: str
) -> list[str]:
    """The lines that contain ``needle`` (a pattern: that match it somewhere), numbered."""
    pattern = needle if isinstance(needle, re.Pattern) else re.compile(re.escape(needle))
    return [
        f"{log_name}:{number}: {line.strip()}"
        for number, line in enumerate(log_lines or [], start=1)
        if pattern.search(line)
    ]


def _report_lines(report: dict[str, Any] | None, prefix: str) -> list[str]:
    """Findings of the JSON report that start with ``prefix``."""
    if report is None:
        return []
    return [str(line) for line in report.get("findings", []) if str(line).startswith(prefix)]


def _missing_from_log(found: list[str], candidates: list[str]) -> list[str]:
    """Report lines that the log does not already quote (a truncated log, say)."""
    return [line for line in candidates if not any(line in quoted for quoted in found)]


def _unchecked(check: Check) -> Check:
    """``check``, marked as not made: neither the log nor the report could be read."""
    check.status, check.message = UNCHECKED, "neither the log nor the report could be read"
    return check


def check_client_closed(log_lines: Sequence[str] | None, log_name: str) -> Check:
    check = Check(CLIENT_CLOSED)
    if log_lines is None:
        check.status, check.message = UNCHECKED, f"{log_name} could not be read"
        return check
    check.lines = _grep(log_lines, CLOSED_CLIENT_ERROR, log_name)
    if check.lines:
        check.status = FAILED
        check.message = (
            f"{len(check.lines)} line(s) in {log_name} hold a closed client's error: a test "
            "used a database client after the scope that owned it ended, or a connection "
            "after it was closed"
        )
    return check


def check_leaks(
    log_lines: Sequence[str] | None,
    log_name: str,
    report: dict[str, Any] | None,
    *,
    kind: str,
    prefix: str,
    left: str,
) -> Check:
    """Leaks of ``kind`` (``connection``, ``scope``): the log's ``prefix`` lines, and the
    report's leaks the log does not quote; a test ``left`` what it says."""
    check = Check(f"{kind.capitalize()} leaks")
    if log_lines is None and report is None:
        return _unchecked(check)
    found = _grep(log_lines, prefix, log_name)
    if report is not None:
        leaks = [
            f"{prefix} {leak.get('test', '?')} ({leak.get('detail', '')})"
            for leak in report.get("leaks", [])
            if isinstance(leak, dict) and leak.get("kind") == kind
        ]
        found += _missing_from_log(found, leaks)
    check.lines = found
    if found:
        check.status = FAILED
        check.message = f"{kind.capitalize()} leak detected: {len(found)} finding(s), {left}"
    return check


def check_test_failures(
    log_lines: Sequence[str] | None, log_name: str, report: dict[str, Any] | None
) -> Check:
    """Tests that failed or errored, by pytest's summary line and the report."""
    check = Check("Failed tests")
    if log_lines is None and report is None:
        return _unchecked(check)
    in_log = in_metrics = 0
    quoted: dict[str, str] = {}  # the last line of each kind that counted failures
    for number, line in enumerate(log_lines or [], start=1):
        plain = ANSI_CODE.sub("", line).strip()
        if counts := PYTEST_SUMMARY.match(plain):
            in_log = sum(int(count) for count in FAILED_COUNTS.findall(counts["counts"]))
            quoted["summary"] = f"{log_name}:{number}: {plain}" if in_log else ""
        elif reported := REPORTED_FAILURES.match(plain):
            in_metrics = int(reported[1])
            quoted["metrics"] = f"{log_name}:{number}: {plain}" if in_metrics else ""
    check.lines = [line for line in quoted.values() if line]
    summary = report.get("summary") if report is not None else None
    in_report = summary.get("failed_tests", 0) if isinstance(summary, dict) else 0
    failed = max(in_log, in_metrics, in_report if isinstance(in_report, int) else 0)
    crashes = _grep(log_lines, CRASHED_WORKER, log_name)
    crashes += _missing_from_log(crashes, _report_lines(report, "Worker "))
    check.lines += crashes
    said = []
    if failed:
        said.append(f"{failed} test(s) failed or errored")
    if crashes:
        said.append(f"{len(crashes)} xdist worker(s) crashed, the tests they ran uncounted")
    if said:
        check.status = FAILED
        check.message = (
            f"{' and '.join(said)}: the run itself failed, whatever the isolation checks say"
        )
    return check


def check_warnings(
    log_lines: Sequence[str] | None,
    log_name: str,
    report: dict[str, Any] | None,
    *,
    name: str,
    prefix: str,
    found_message: str,
) -> Check:
    """The log's ``prefix`` lines and the report's findings the log does not quote warn,
    with ``found_message`` filled with their number."""
    check = Check(name)
    if log_lines is None and report is None:
        return _unchecked(check)
    found = _grep(log_lines, prefix, log_name)
    found += _missing_from_log(found, _report_lines(report, prefix))
    check.lines = found
    if found:
        check.status = WARNING
        check.message = found_message.format(len(found))
    return check


def check_regressions(report: dict[str, Any] | None, *, asked: bool) -> Check:
    """``asked``: a report was passed (None then means it could not be read)."""
    check = Check("Performance regressions")
    if report is None:
        check.message = "not checked (no report)"
        if asked:
            check.status, check.message = UNCHECKED, "the report could not be read"
        return check
    regressions = [r for r in report.get("regressions", []) if isinstance(r, dict)]
    check.lines = [
        f"{r.get('metric')}: {_number(r.get('current'))} > threshold "
        f"{_number(r.get('threshold'))} (baseline {_number(r.get('baseline'))}), "
        f"severity {r.get('severity')}"
        for r in regressions
    ]
    severities = {r.get("severity") for r in regressions}
    if "error" in severities:
        check.status = FAILED
        check.message = "performance regression of severity error against the baseline"
    elif regressions:
        check.status = WARNING
        check.message = f"{len(regressions)} performance regression(s) of severity warning"
    return check


def _number(value: object) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}"
    return str(int(value)) if isinstance(value, int | float) else str(value)


def _escape_annotation(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def print_check(check: Check) -> None:
    print(f"{check.status:<9} {check.name}: {check.message}")
    for line in check.lines[:MAX_QUOTED]:
        print(f"    {line}")
    if len(check.lines) > MAX_QUOTED:
        print(f"    ... and {len(check.lines) - MAX_QUOTED} more")
    if check.status != PASSED:
        level = "warning" if check.status == WARNING else "error"
        detail = f"{check.message}: {check.lines[0]}" if check.lines else check.message
        print(f"::{level} title={check.name}::{_escape_annotation(detail)}")


def _metrics_block(log_lines: Sequence[str]) -> list[str]:
    """The reporter's text block, from ``Isolation Metrics Report`` to the next rule."""
    for start, line in enumerate(log_lines):
        if line.strip() == REPORT_HEADING:
            block = []
            for following in log_lines[start:]:
                if following.startswith("=") or not following.strip():
                    break
                block.append(following.rstrip())
            return block
    return []


def markdown(
    title: str,
    checks: Sequence[Check],
    report: dict[str, Any] | None,
    log_lines: Sequence[str] | None,
) -> str:
    out = [f"## Isolation checks{f': {title}' if title else ''}", "", "| Check | Result |"]
    out.append("|---|---|")
    out += [f"| {check.name} | {check.status}: {check.message} |" for check in checks]
    quoted = [line for check in checks for line in check.lines[:MAX_QUOTED]]
    if quoted:
        out += ["", "```text", *quoted, "```"]
    out += ["", f"### {REPORT_HEADING}", ""]
    if report is not None:
        out += ["| Metric | Value |", "|---|---|"]
        metrics: dict[str, object] = {}
        for section in ("summary", "performance_metrics"):
            values = report.get(section, {})
            if isinstance(values, dict):
                metrics |= values
        out += [f"| {name} | {_number(value)} |" for name, value in metrics.items()]
        findings = [str(line) for line in report.get("findings", [])]
        out += ["", *(f"- {line}" for line in findings)] if findings else ["", "No findings."]
    elif block := _metrics_block(log_lines or []):
        out += ["```text", *block, "```"]
    else:
        out.append("No report: the test run ended before writing one.")
    return "\n".join(out) + "\n\n"


def _read_report(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("the report is not a JSON object")
    if not isinstance(data.get("summary"), dict):
        raise ValueError("it has no summary: it is not the JSON of a finished run's report")
    for key in ("leaks", "findings", "regressions"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"its {key!r} is not a list: it is damaged")
    return data


def _read_inputs(
    log: Path, report_path: Path | None
) -> tuple[list[str] | None, dict[str, Any] | None, list[str]]:
    """The log's lines and the report (None where unreadable or not given), and what
    makes them unreadable or prove nothing."""
    unreadable = []
    log_lines: list[str] | None = None
    try:
        log_lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        unreadable.append(f"cannot read the log {log}: {error.strerror or error}")
    if log_lines is not None and not any(line.strip() == REPORT_HEADING for line in log_lines):
        unreadable.append(
            f"the log {log} holds no {REPORT_HEADING}: the test run ended before its "
            "end-of-run report, or this is not its output (pass the tests' stdout and stderr)"
        )
    report: dict[str, Any] | None = None
    if report_path is not None:
        try:
            report = _read_report(report_path)
        except (OSError, ValueError) as error:
            unreadable.append(f"cannot read the report {report_path}: {error}")
    return log_lines, report, unreadable


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fail on isolation failures in an integration test log.",
        epilog="Exit codes: 0 passed, 1 a check failed, 2 the log or report is unreadable.",
    )
    parser.add_argument("log", type=Path, help="the integration test output (stdout + stderr)")
    parser.add_argument("--report", type=Path, help="the JSON of --isolation-report=PATH")
    parser.add_argument("--title", default="", help="a heading suffix, e.g. 'shard 1/2'")
    args = parser.parse_args(argv)

    log_lines, report, unreadable = _read_inputs(args.log, args.report)
    log_name = args.log.name
    checks = [
        check_client_closed(log_lines, log_name),
        *(
            check_leaks(log_lines, log_name, report, kind=kind, prefix=prefix, left=left)
            for kind, prefix, left in LEAK_CHECKS
        ),
        check_test_failures(log_lines, log_name, report),
        *(
            check_warnings(
                log_lines, log_name, report, name=name, prefix=prefix, found_message=message
            )
            for name, prefix, message in WARNING_CHECKS
        ),
        check_regressions(report, asked=args.report is not None),
    ]
    for check in checks:
        print_check(check)
    for problem in unreadable:
        print(f"::error title=Unreadable input::{_escape_annotation(problem)}")

    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with open(summary_path, "a", encoding="utf-8") as summary:
            summary.write(markdown(args.title, checks, report, log_lines))

    if any(check.status == FAILED for check in checks):
        failed = ", ".join(check.name for check in checks if check.status == FAILED)
        print(f"Isolation checks failed: {failed}")
        return EXIT_FAILED
    if unreadable:
        print(f"Isolation checks incomplete: {'; '.join(unreadable)}")
        return EXIT_UNREADABLE
    print("Isolation checks passed.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
