"""Turning pytest runs of the generated suites into figures: per-test times, the overhead
over the baseline and over the bare copy, RSS, and the ``-n 2`` speedup."""

from __future__ import annotations

import math
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.pytest_runs import BenchFailure, check_passed, pytest_command, read_report, run_pytest
from bench.suites import BARE_COPIES, BASELINE, write_suite

SPEEDUP_WORKERS = 2


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
    # The whole of each test, hooks between its phases included (serial runs only).
    whole_ms_mean: float | None = None
    whole_overhead_ms: float | None = None


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
    whole_ms = [seconds * 1000 for seconds in data["whole"]]
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
        whole_ms_mean=statistics.fmean(whole_ms) if len(whole_ms) == count else None,
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
            if result.whole_ms_mean is not None and baseline.whole_ms_mean is not None:
                result.whole_overhead_ms = result.whole_ms_mean - baseline.whole_ms_mean
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
    mode: str = "file",
    rows: int = 0,
    *,
    repeat: int = 1,
    keep_reports: bool = False,
) -> Speedup:
    """Wall time of ``mode`` serially over wall time on ``SPEEDUP_WORKERS`` workers, each
    the shortest of ``repeat`` rounds (serial and parallel taken in turn).

    Measured for the baseline too: with tests this small, xdist's own per-test cost
    bounds the speedup of every mode, and the baseline shows that bound. With ``rows``,
    each test also writes that many rows, a few milliseconds of real database work.
    """
    serial_s, parallel_s = math.inf, math.inf
    for _ in range(repeat):
        serial = measure(workdir, mode, count, rows=rows, keep_reports=keep_reports)
        parallel = measure(
            workdir, mode, count, workers=SPEEDUP_WORKERS, rows=rows, keep_reports=keep_reports
        )
        serial_s, parallel_s = min(serial_s, serial.total_s), min(parallel_s, parallel.total_s)
    return Speedup(
        mode=mode,
        tests=count,
        workers=SPEEDUP_WORKERS,
        rows_per_test=rows,
        serial_s=serial_s,
        parallel_s=parallel_s,
        speedup=serial_s / parallel_s,
    )
