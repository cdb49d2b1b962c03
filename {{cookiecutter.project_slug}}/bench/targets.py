"""The performance targets, each checked against the figures a benchmark run measured.

The benchmark reports; it never fails on speed. This says, for every target, what it was
judged on and whether that meets it, or that the run did not measure what the target is
stated for (a ``--quick`` run has no 5,000-test suite).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.steps import Steps, floor_us

if TYPE_CHECKING:
    from bench.measure import Result, Speedup

# Per-test overhead over one shared connection, in ms, for each strategy.
MAX_OVERHEAD_MS: Mapping[str, float] = {"file": 0.5, "memory": 0.2}
# No growth with the suite: the overhead at the large size at most 20% above the small
# one's (a smaller one is no growth).
FLAT_SIZES = (100, 5000)
MAX_GROWTH = 0.20
MAX_RSS_GROWTH_MB = 10.0
RSS_SIZE = 5000
MIN_SPEEDUP = 1.6
SPEEDUP_TESTS = 1000


@dataclass(frozen=True)
class Verdict:
    """One target: what it promises, the figures it was judged on, and whether they meet
    it (None: not measured by this run)."""

    target: str
    measured: str
    met: bool | None


def _overheads(results: Sequence[Result], mode: str) -> list[tuple[Result, float]]:
    """``mode``'s results with their overhead over the baseline, smallest suite first."""
    measured = [
        (result, result.overhead_ms)
        for result in results
        if result.mode == mode and result.overhead_ms is not None
    ]
    return sorted(measured, key=lambda pair: pair[0].tests)


def overhead_verdict(results: Sequence[Result], mode: str, floor_ms: float | None) -> Verdict:
    """The overhead at every size measured, with the isolation's own share (over the bare
    copy), the whole test's (the hooks between its phases too) and SQLite's own floor when
    they were measured. The target is judged on the phases, as it is stated."""
    limit = MAX_OVERHEAD_MS[mode]
    target = f"{mode}: overhead <= {limit} ms per test over one shared connection"
    overheads = _overheads(results, mode)
    if not overheads:
        return Verdict(target, "not measured", None)
    figures = []
    for result, ms in overheads:
        notes = []
        if result.over_bare_ms is not None:
            notes.append(f"isolation {result.over_bare_ms:+.3f}")
        if result.whole_overhead_ms is not None:
            notes.append(f"whole test {result.whole_overhead_ms:+.3f}")
        own = f" ({'; '.join(notes)})" if notes else ""
        figures.append(f"{ms:+.3f} ms at {result.tests}{own}")
    measured = ", ".join(figures)
    if floor_ms is not None:
        measured += f"; SQLite's own floor {floor_ms:+.3f} ms"
    return Verdict(target, measured, all(ms <= limit for _, ms in overheads))


def flatness_verdict(results: Sequence[Result], modes: Sequence[str]) -> Verdict:
    """Each mode's overhead at the large size as a multiple of its overhead at the small."""
    small, large = FLAT_SIZES
    target = f"overhead at {large:,} tests at most {MAX_GROWTH:.0%} above that at {small}"
    parts: list[str] = []
    verdicts: list[bool | None] = []
    for mode in modes:
        overheads = {result.tests: ms for result, ms in _overheads(results, mode)}
        if small not in overheads or large not in overheads:
            continue
        first, last = overheads[small], overheads[large]
        if first <= 0:  # no overhead to compare with: a ratio would mean nothing
            parts.append(f"{mode}: no overhead at {small} ({first:+.3f} -> {last:+.3f} ms)")
            verdicts.append(None)  # so neither can the target be met
            continue
        ratio = last / first
        parts.append(f"{mode}: {ratio:.2f}x ({first:+.3f} -> {last:+.3f} ms)")
        verdicts.append(ratio <= 1 + MAX_GROWTH)
    if not parts:
        return Verdict(target, f"not measured (needs --sizes {small} {large})", None)
    met = False if False in verdicts else None if None in verdicts else True
    return Verdict(target, "; ".join(parts), met)


def rss_verdict(results: Sequence[Result], modes: Sequence[str]) -> Verdict:
    """RSS growth across the suites of at least ``RSS_SIZE`` tests, with the growth beyond
    the baseline's (with ``--keep-reports``, pytest's reports grow every mode alike)."""
    target = f"RSS growth <= {MAX_RSS_GROWTH_MB:g} MB across {RSS_SIZE:,} isolated tests"
    figures, growths = [], []
    for result in results:
        if result.mode not in modes or result.tests < RSS_SIZE or result.rss_growth_mb is None:
            continue
        over = result.rss_over_baseline_mb
        beyond = "" if over is None else f" ({over:+.2f} over shared)"
        figures.append(f"{result.mode} {result.rss_growth_mb:+.2f} MB at {result.tests}{beyond}")
        growths.append(result.rss_growth_mb)
    if not growths:
        return Verdict(target, f"not measured (needs --sizes {RSS_SIZE})", None)
    return Verdict(target, ", ".join(figures), all(mb <= MAX_RSS_GROWTH_MB for mb in growths))


def speedup_verdict(speedup: Speedup | None, with_work: Speedup | None) -> Verdict:
    """The speedup of the trivial suite, which the target is stated for; the suite that
    writes rows is shown beside it."""
    target = f"-n 2 speedup >= {MIN_SPEEDUP}x on {SPEEDUP_TESTS:,} tests"
    if speedup is None or speedup.tests != SPEEDUP_TESTS:
        return Verdict(target, f"not measured (needs --speedup-size {SPEEDUP_TESTS})", None)
    measured = f"{speedup.speedup:.2f}x ({speedup.mode} mode, -n {speedup.workers})"
    if with_work is not None:
        measured += f"; {with_work.speedup:.2f}x writing {with_work.rows_per_test:,} rows a test"
    return Verdict(target, measured, speedup.speedup >= MIN_SPEEDUP)


def check_targets(
    results: Sequence[Result],
    speedup: Speedup | None,
    with_work: Speedup | None,
    steps: Mapping[str, Steps] | None,
) -> list[Verdict]:
    """Every target, in the order the README states them."""
    modes = list(MAX_OVERHEAD_MS)
    verdicts = [
        overhead_verdict(results, mode, floor_us(steps, mode) / 1000 if steps else None)
        for mode in modes
    ]
    verdicts += [flatness_verdict(results, modes), rss_verdict(results, modes)]
    verdicts.append(speedup_verdict(speedup, with_work))
    return verdicts


def targets_table(verdicts: Sequence[Verdict]) -> str:
    """The verdicts as Markdown."""
    met = {True: "yes", False: "no", None: "not measured"}
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.measured} | {met[v.met]} |" for v in verdicts]
    return "\n".join(lines)
