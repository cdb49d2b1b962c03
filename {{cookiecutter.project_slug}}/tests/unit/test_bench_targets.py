"""The benchmark's verdict on each performance target, judged from the figures it is given."""

from __future__ import annotations

from collections.abc import Mapping

from bench.measure import Result, Speedup
from bench.steps import Steps
from bench.targets import Verdict, check_targets, targets_table


def result(
    mode: str,
    tests: int,
    overhead_ms: float,
    rss_growth_mb: float = 0.5,
    over_bare_ms: float | None = None,
) -> Result:
    return Result(
        mode=mode,
        tests=tests,
        workers=0,
        per_test_ms_mean=0.5 + overhead_ms,
        per_test_ms_median=0.5 + overhead_ms,
        per_test_ms_p95=0.6 + overhead_ms,
        overhead_ms=overhead_ms,
        over_bare_ms=over_bare_ms,
        total_s=1.0,
        peak_rss_mb=50.0,
        rss_growth_mb=rss_growth_mb,
    )


def speedup(value: float, tests: int = 1000, rows: int = 0) -> Speedup:
    return Speedup("file", tests, 2, rows, serial_s=value, parallel_s=1.0, speedup=value)


def verdicts(
    results: list[Result],
    trivial: Speedup | None = None,
    with_work: Speedup | None = None,
    steps: Mapping[str, Steps] | None = None,
) -> dict[str, Verdict]:
    return {v.target: v for v in check_targets(results, trivial, with_work, steps)}


def by_start(found: dict[str, Verdict], start: str) -> Verdict:
    (verdict,) = (v for target, v in found.items() if target.startswith(start))
    return verdict


def test_overhead_is_met_only_when_every_size_is_within_the_limit() -> None:
    results = [
        result("file", 5000, 0.55, over_bare_ms=0.1),
        result("file", 100, 0.45),
        result("memory", 100, 0.15),
        result("bare-memory", 100, 0.3),
    ]
    found = verdicts(results)
    file, memory = by_start(found, "file:"), by_start(found, "memory:")
    assert file.met is False
    assert file.measured == "+0.450 ms at 100, +0.550 ms at 5000 (isolation +0.100)"
    assert (memory.met, memory.measured) == (True, "+0.150 ms at 100")
    assert memory.target == "memory: overhead <= 0.2 ms per test over one shared connection"


def test_overhead_shows_the_whole_tests_beside_their_phases() -> None:
    """The hooks between a test's phases (the metrics reporter's) are outside pytest's
    durations: the whole test's overhead is shown, the verdict judged on the phases."""
    measured = result("file", 100, 0.45, over_bare_ms=0.1)
    measured.whole_overhead_ms = 0.6
    file = by_start(verdicts([measured]), "file:")
    assert file.measured == "+0.450 ms at 100 (isolation +0.100; whole test +0.600)"
    assert file.met is True


def test_overhead_shows_sqlite_floor_when_the_steps_were_timed() -> None:
    steps = {"file": {"copy": 300.0, "close": 250.0}, "memory": {"all": 2.0}, "shared": {"w": 50.0}}
    found = verdicts([result("file", 100, 0.6)], steps=steps)
    assert by_start(found, "file:").measured.endswith("; SQLite's own floor +0.500 ms")
    assert by_start(found, "memory:").met is None  # not run: no verdict either way


def test_flatness_fails_when_the_overhead_grows_with_the_suite() -> None:
    grows = [result("file", 100, 0.5), result("file", 5000, 0.61)]
    steady = [result("file", 100, 0.5), result("file", 5000, 0.59)]
    shrinks = [result("memory", 100, 0.5), result("memory", 5000, 0.3)]
    assert by_start(verdicts(grows), "overhead at").met is False
    flat = by_start(verdicts(steady), "overhead at")
    assert flat.met is True
    assert flat.measured == "file: 1.18x (+0.500 -> +0.590 ms)"
    assert by_start(verdicts(shrinks), "overhead at").met is True
    either = by_start(verdicts(grows + shrinks), "overhead at")
    assert either.met is False
    assert either.measured == (
        "file: 1.22x (+0.500 -> +0.610 ms); memory: 0.60x (+0.500 -> +0.300 ms)"
    )


def test_flatness_needs_both_sizes_and_some_overhead() -> None:
    only_small = by_start(verdicts([result("file", 100, 0.5)]), "overhead at")
    assert (only_small.met, only_small.measured) == (None, "not measured (needs --sizes 100 5000)")
    no_overhead = verdicts([result("file", 100, -0.01), result("file", 5000, 0.4)])
    assert by_start(no_overhead, "overhead at").met is None
    # one mode flat, the other not judged: the target is not met for both
    flat_file = [result("file", 100, 0.3), result("file", 5000, 0.31)]
    mixed = by_start(
        verdicts([*flat_file, result("memory", 100, -0.01), result("memory", 5000, 0.9)]),
        "overhead at",
    )
    assert mixed.met is None
    assert mixed.measured.endswith("memory: no overhead at 100 (-0.010 -> +0.900 ms)")


def test_rss_growth_is_judged_on_suites_of_5000_tests_only() -> None:
    small = by_start(verdicts([result("file", 1000, 0.5, rss_growth_mb=50)]), "RSS")
    assert small.met is None
    memory = result("memory", 5000, 0.3, rss_growth_mb=10.5)
    memory.rss_over_baseline_mb = -0.25
    rss = by_start(verdicts([result("file", 5000, 0.5, rss_growth_mb=0.9), memory]), "RSS")
    assert rss.met is False
    assert rss.measured == "file +0.90 MB at 5000, memory +10.50 MB at 5000 (-0.25 over shared)"


def test_speedup_is_judged_on_the_trivial_suite_of_1000_tests() -> None:
    slow_trivial = by_start(verdicts([], speedup(0.6), speedup(1.7, rows=10_000)), "-n 2")
    assert slow_trivial.met is False
    assert slow_trivial.measured == "0.60x (file mode, -n 2); 1.70x writing 10,000 rows a test"
    assert by_start(verdicts([], speedup(1.6)), "-n 2").met is True
    assert by_start(verdicts([], speedup(2.0, tests=50)), "-n 2").met is None
    assert by_start(verdicts([]), "-n 2").met is None


def test_table_has_a_row_per_target() -> None:
    table = targets_table(check_targets([result("file", 100, 0.3)], None, None, None))
    lines = table.splitlines()
    assert lines[:2] == ["| target | measured | met |", "|---|---|---|"]
    assert len(lines) == 2 + 5
    target = "file: overhead <= 0.5 ms per test over one shared connection"
    assert f"| {target} | +0.300 ms at 100 | yes |" in lines
    assert lines[-1].endswith("| not measured |")
