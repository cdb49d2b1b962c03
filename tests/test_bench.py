"""The baked project's benchmark runs every mode and reports numbers (never judged by time)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TEMPLATE_DIR, Bake, clean_env, run

MODES = ("shared", "migrate-per-test", "bare-file", "file", "bare-memory", "memory", "savepoint")
PLUGIN_MODES = {"file": "bare-file", "memory": "bare-memory"}
QUICK_SIZE = 50
FIGURES = ("per_test_ms_mean", "per_test_ms_median", "overhead_ms", "total_s", "rss_growth_mb")
BENCH = [sys.executable, "-m", "bench.isolation_bench"]
SHARED_ONLY = ["--modes", "shared", "--steps", "0", "--speedup-size", "0"]
BENCH_FILES = (
    "__init__.py",
    "isolation_bench.py",
    "measure.py",
    "pytest_runs.py",
    "steps.py",
    "suites.py",
    "targets.py",
)


def test_bench_is_copied_verbatim(default_project: Path) -> None:
    """The benchmark holds no template syntax: baking must not change a byte of it."""
    for name in BENCH_FILES:
        source = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "bench" / name
        assert (default_project / "bench" / name).read_bytes() == source.read_bytes(), name


def test_quick_bench_reports_every_mode(bake: Bake, tmp_path: Path) -> None:
    # One test, so the quick run happens once even when the tests are spread over workers.
    # The developer's database driver must not reach the suites: each mode runs on sqlite3
    # (the memory modes need it). The project has a schema of its own, with none of the
    # example's tables: the benchmark's tests work on a table it adds to the migrations.
    project = bake(tmp_path / "baked")
    for migration in (project / "migrations").glob("*.sql"):
        migration.unlink()
    (project / "migrations" / "0001_accounts.sql").write_text(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
    )
    figures_file = tmp_path / "bench-results.json"
    result = run(
        [*BENCH, "--quick", "--json", str(figures_file)],
        project,
        timeout=120,
        env=clean_env(DATABASE_DRIVER="libsql"),
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
    for row in figures["results"]:  # the whole test holds its setup, call and teardown
        assert row["whole_ms_mean"] > row["per_test_ms_mean"], row
        whole_over_shared = row["whole_ms_mean"] - baseline["whole_ms_mean"]
        assert math.isclose(row["whole_overhead_ms"], whole_over_shared, abs_tol=1e-9), row
    assert figures["speedup"]["tests"] == QUICK_SIZE
    assert figures["speedup"]["speedup"] > 0

    assert "| mode | tests | per-test ms (mean) | overhead ms vs shared | of which isolation |" in (
        result.stdout
    )
    assert "| whole test: overhead ms |" in result.stdout
    assert "| RSS growth MB | RSS over shared MB |" in result.stdout
    for mode in MODES:
        assert f"| {mode} | {QUICK_SIZE} |" in result.stdout
    assert "-n 2 speedup, file mode" in result.stdout
    assert figures["keep_reports"] is False
    assert figures["environment"]["memory_pragmas"] == {"foreign_keys": "ON"}
    assert "pytest's terminal output and junit XML: off" in result.stdout

    steps = figures["steps"]
    assert set(steps) == {"file", "memory", "shared"}
    assert "copy the template" in steps["file"]
    assert "copy the template in (backup)" in steps["memory"]
    assert all(micros > 0 for timed in steps.values() for micros in timed.values()), steps
    assert "| file | **over the shared connection** |" in result.stdout

    # Every target gets a verdict from this run's own figures; a quick run lacks the sizes
    # of the others, and says so rather than judging them.
    verdicts = {verdict["target"].partition(":")[0]: verdict for verdict in figures["targets"]}
    assert len(figures["targets"]) == 5, figures["targets"]
    for mode, limit in (("file", 0.5), ("memory", 0.2)):
        assert verdicts[mode]["met"] is (rows[mode]["overhead_ms"] <= limit), verdicts[mode]
        assert f"{rows[mode]['overhead_ms']:+.3f} ms at {QUICK_SIZE}" in verdicts[mode]["measured"]
    unmeasured = [verdict for verdict in figures["targets"] if verdict["met"] is None]
    assert len(unmeasured) == 3, figures["targets"]
    assert "Targets:\n\n| target | measured | met |" in result.stdout
    assert not (project / ".bench").exists()
    # Its template is cached apart from the tests' own, which it leaves alone.
    assert list((project / "data").iterdir()) == [project / "data" / "bench"]


FAILING_SUITE = """
import sys
from pathlib import Path

from bench.pytest_runs import BenchFailure, check_passed, pytest_command, read_report, run_pytest
from bench.suites import TEST_FILE, write_suite

directory = Path(sys.argv[1])
write_suite(directory, "shared", 3)
test_file = directory / TEST_FILE
test_file.write_text(test_file.read_text() + PLANTED)
report = directory / "report.json"
run = run_pytest(directory, pytest_command(directory, "shared", 0), report)
try:
    check_passed(run, 3, read_report(run, report))
except BenchFailure as failure:
    print(failure)
"""
PLANTED = """

def test_planted(db):
    assert db is None, "planted failure"
"""


def test_a_failing_suite_is_reported_with_its_traceback(
    default_project: Path, tmp_path: Path
) -> None:
    """With pytest's terminal output off, the failure still reaches the reader."""
    script = f"PLANTED = {PLANTED!r}\n{FAILING_SUITE}"
    result = run([sys.executable, "-c", script, str(tmp_path / "suite")], default_project)
    assert result.returncode == 0, result.stdout
    assert "outcomes {'passed': 3, 'failed': 1, 'skipped': 0}" in result.stdout
    assert "test_bench_db.py::test_planted (call)" in result.stdout
    assert "AssertionError: planted failure" in result.stdout


def test_keep_reports_runs_pytest_as_ci_does(default_project: Path) -> None:
    script = (
        "from pathlib import Path; from bench.pytest_runs import pytest_command as c; "
        "print(c(Path('s'), 'file', 0)); print(c(Path('s'), 'file', 0, keep_reports=True))"
    )
    result = run([sys.executable, "-c", script], default_project)
    without, kept = result.stdout.splitlines()
    assert "'no:terminal'" in without
    assert "--junitxml" not in without
    assert "'no:terminal'" not in kept
    assert "--junitxml" in kept


def names_in(directory: Path) -> set[str]:
    """The entries of ``directory``, which a run may be removing meanwhile."""
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def test_ctrl_c_lets_pytest_remove_its_databases(bake: Bake, tmp_path: Path) -> None:
    """Interrupted, the bench waits for its pytest's session cleanup before removing the
    suite, and exits 130 without a traceback. A project of its own: no other test's run
    directory can appear in its RAM directory meanwhile."""
    project = bake(tmp_path / "baked")
    where = "from bench.suites import RUNS_DIR; print(RUNS_DIR)"
    runs = Path(run([sys.executable, "-c", where], project).stdout.strip())
    before = names_in(runs)
    bench = subprocess.Popen(
        [*BENCH, "--sizes", "5000", *SHARED_ONLY],
        cwd=project,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Interrupt once the big suite's pytest has made its directory for databases.
        deadline = time.monotonic() + 60
        while not (any((project / ".bench").glob("run-*/shared-*")) and names_in(runs) - before):
            assert bench.poll() is None, "the bench ended before it was interrupted"
            assert time.monotonic() < deadline, "the suite never started"
            time.sleep(0.05)
        bench.send_signal(signal.SIGINT)
        output, _ = bench.communicate(timeout=60)
    finally:
        bench.kill()
        bench.wait()

    assert bench.returncode == 130, output
    assert "interrupted" in output
    assert "Traceback" not in output, output
    assert names_in(runs) <= before, f"test databases left in {runs}"
    assert not (project / ".bench").exists()


BAD_ARGUMENTS = {
    "--json no-such-directory/figures.json": "error: --json: no directory no-such-directory",
    "--json bench": "error: --json: bench is a directory; name a file in it",
    "--json /proc/figures.json": "error: --json: /proc/figures.json cannot be written",
    "--speedup-size -1": "error: --speedup-size must be at least 0",
    "--speedup-rows -1": "error: --speedup-rows must be at least 0",
}


def test_bad_arguments_stop_the_bench_before_it_runs(default_project: Path) -> None:
    """A mistake in the arguments fails at once, not after the whole run (a tiny one here,
    should the arguments be taken)."""
    for arguments, message in BAD_ARGUMENTS.items():
        command = [*BENCH, "--sizes", "1", *SHARED_ONLY, *arguments.split()]
        result = run(command, default_project, timeout=60)
        assert result.returncode == 2, result.stdout
        assert message in result.stdout, result.stdout


def test_checking_that_the_json_file_can_be_written_leaves_no_file(
    default_project: Path, tmp_path: Path
) -> None:
    figures = tmp_path / "figures.json"
    script = f"import bench.isolation_bench as b; b.parse_args(['--json', {str(figures)!r}])"
    result = run([sys.executable, "-c", script], default_project)
    assert result.returncode == 0, result.stdout
    assert not figures.exists()


def test_repeated_sizes_and_modes_are_measured_once(default_project: Path) -> None:
    """A repeat would add rows and pair a plugin mode with another size's bare copy."""
    script = (
        "from bench.isolation_bench import parse_args; "
        "args = parse_args(['--sizes', '2', '3', '2', '--modes', 'file', 'shared', 'file']); "
        "print(args.sizes, args.modes)"
    )
    result = run([sys.executable, "-c", script], default_project)
    assert result.stdout.strip() == "[2, 3] ['file', 'shared']", result.stdout
