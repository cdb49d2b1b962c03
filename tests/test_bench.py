"""The baked project's benchmark runs every mode and reports numbers (never judged by time)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from conftest import TEMPLATE_DIR, Bake, run

MODES = ("shared", "migrate-per-test", "bare-file", "file", "bare-memory", "memory", "savepoint")
PLUGIN_MODES = {"file": "bare-file", "memory": "bare-memory"}
QUICK_SIZE = 50
FIGURES = ("per_test_ms_mean", "per_test_ms_median", "overhead_ms", "total_s", "rss_growth_mb")


def test_bench_is_copied_verbatim(default_project: Path) -> None:
    """The benchmark holds no template syntax: baking must not change a byte of it."""
    for name in ("__init__.py", "isolation_bench.py", "steps.py"):
        source = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "bench" / name
        assert (default_project / "bench" / name).read_bytes() == source.read_bytes(), name


def test_quick_bench_reports_every_mode(bake: Bake, tmp_path: Path) -> None:
    # One test, so the quick run happens once even when the tests are spread over workers.
    project = bake(tmp_path / "baked")
    figures_file = tmp_path / "bench-results.json"
    result = run(
        [sys.executable, "-m", "bench.isolation_bench", "--quick", "--json", str(figures_file)],
        project,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    figures = json.loads(figures_file.read_text())

    assert [result["mode"] for result in figures["results"]] == list(MODES)
    for row in figures["results"]:
        assert row["tests"] == QUICK_SIZE, row
        for name in FIGURES:
            assert isinstance(row[name], float), (name, row)
            assert math.isfinite(row[name]), (name, row)
        assert row["peak_rss_mb"] > 0, row
    assert figures["results"][0]["overhead_ms"] == 0.0
    baseline = figures["results"][0]
    for row in figures["results"]:
        over_shared = row["rss_growth_mb"] - baseline["rss_growth_mb"]
        assert math.isclose(row["rss_over_baseline_mb"], over_shared, abs_tol=1e-9), row
    rows = {row["mode"]: row for row in figures["results"]}
    for mode, bare in PLUGIN_MODES.items():
        over_bare = rows[mode]["per_test_ms_mean"] - rows[bare]["per_test_ms_mean"]
        assert math.isclose(rows[mode]["over_bare_ms"], over_bare), rows[mode]
    assert all(rows[mode]["over_bare_ms"] is None for mode in MODES if mode not in PLUGIN_MODES)
    assert figures["speedup"]["tests"] == QUICK_SIZE
    assert figures["speedup"]["speedup"] > 0

    assert "| mode | tests | per-test ms (mean) | overhead ms vs shared | of which isolation |" in (
        result.stdout
    )
    assert "| RSS growth MB | RSS over shared MB |" in result.stdout
    for mode in MODES:
        assert f"| {mode} | {QUICK_SIZE} |" in result.stdout
    assert "-n 2 speedup, file mode" in result.stdout

    steps = figures["steps"]
    assert set(steps) == {"file", "memory", "shared"}
    assert "copy the template" in steps["file"]
    assert "deserialize the template image" in steps["memory"]
    assert all(micros > 0 for timed in steps.values() for micros in timed.values()), steps
    assert "| file | **over the shared connection** |" in result.stdout
    assert not (project / ".bench").exists()
