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

The suites are written by ``bench.suites``, run by ``bench.pytest_runs`` and turned into
figures by ``bench.measure``; this module is the command, and prints the figures with the
verdict of ``bench.targets``. Per-test times are pytest's own (setup + call + teardown of
each test), taken from its reports by the generated conftest with each test's outcome;
the conftest also times each whole test, the hooks between its phases included.
pytest's terminal output and junit XML are off: they keep every test's reports in memory
for their summaries, about 4 KB a test in every mode, which would swamp the RSS growth of
the databases; ``--keep-reports`` turns them on.

    python -m bench.isolation_bench --sizes 100 1000 5000 --json bench-results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.measure import (
    SPEEDUP_WORKERS,
    Result,
    Speedup,
    measure,
    measure_speedup,
    run_all,
)
from bench.pytest_runs import BenchFailure, has_module
from bench.steps import Steps, steps_table, time_steps
from bench.suites import (
    BASELINE,
    DATA_DIR,
    MODES,
    PROJECT_ROOT,
    RUNS_DIR,
    scope_pragmas,
    write_migrations,
)
from bench.targets import check_targets, targets_table
from lib.scope_databases import MEMORY_PRAGMAS, remove_run_directory, run_directory, template_for

BENCH_DIR = PROJECT_ROOT / ".bench"
DEFAULT_SIZES = (100, 1000, 5000)
QUICK_SIZES = (50,)
SPEEDUP_SIZE = 1000
SPEEDUP_ROWS = 10_000
WARMUP_SIZE = 5
STEP_ITERATIONS = 3000
QUICK_STEP_ITERATIONS = 100


# -- reporting -------------------------------------------------------------------------


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(results: Sequence[Result]) -> str:
    lines = [
        "| mode | tests | per-test ms (mean) | overhead ms vs shared | of which isolation "
        "| whole test: overhead ms | total s | peak RSS MB | RSS growth MB | RSS over shared MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        baseline = r.mode == BASELINE
        overhead = "baseline" if baseline else _number(r.overhead_ms, "+.3f")
        over_bare = "" if r.over_bare_ms is None else f"{r.over_bare_ms:+.3f}"
        whole = "baseline" if baseline else _number(r.whole_overhead_ms, "+.3f")
        rss_over = "baseline" if baseline else _number(r.rss_over_baseline_mb, "+.2f")
        lines.append(
            f"| {r.mode} | {r.tests} | {r.per_test_ms_mean:.3f} | {overhead} | {over_bare} "
            f"| {whole} | {r.total_s:.2f} | {_number(r.peak_rss_mb, '.1f')} "
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
        "memory_pragmas": dict(MEMORY_PRAGMAS),
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
    if args.json and args.json.is_dir():
        parser.error(f"--json: {args.json} is a directory; name a file in it")
    if args.json and not _writable(args.json):
        parser.error(f"--json: {args.json} cannot be written")
    # A repeated size or mode would be measured twice and paired with the wrong bare copy.
    args.sizes = list(dict.fromkeys(args.sizes))
    args.modes = list(dict.fromkeys(args.modes))
    return args


def _writable(path: Path) -> bool:
    """Whether ``path`` can be written, found out before the run rather than after it;
    nothing is left where there was nothing."""
    existed = path.exists()
    try:
        path.open("a").close()
    except OSError:
        return False
    if not existed:
        path.unlink()
    return True


def measure_steps(workdir: Path, iterations: int) -> dict[str, Steps]:
    """Time each step of a fresh database in this process, where the plugin makes them."""
    try:
        template = template_for(write_migrations(workdir / "migrations"), DATA_DIR, RUNS_DIR)
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
            size = args.speedup_size
            options = {"repeat": args.repeat, "keep_reports": args.keep_reports}
            speedup = measure_speedup(workdir, size, **options)
            baseline_speedup = measure_speedup(workdir, size, BASELINE, **options)
            if args.speedup_rows:
                work_speedup = measure_speedup(workdir, size, rows=args.speedup_rows, **options)
        if args.steps:
            steps = measure_steps(workdir, args.steps)
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
        f"{info['cpus']} CPUs; pragmas {info['pragmas']} (in memory {info['memory_pragmas']}); "
        f"databases in {info['databases_in']}"
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
