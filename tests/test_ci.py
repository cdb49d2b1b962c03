"""The generated CI: valid, audited workflows; a log check that works; shards that add up."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import Bake, clean_env, passed_count, run

BIN = Path(sys.executable).parent
WORKFLOWS = ("ci.yml", "integration-tests.yml")
CHECK_SCRIPT = Path("scripts") / "check_isolation_log.py"


def _workflow(project: Path, name: str) -> dict[str, object]:
    workflow = yaml.safe_load((project / ".github" / "workflows" / name).read_text())
    assert isinstance(workflow, dict)
    return workflow


def _integration_job(project: Path) -> dict[str, object]:
    jobs = _workflow(project, "integration-tests.yml")["jobs"]
    assert isinstance(jobs, dict)
    job = jobs["integration"]
    assert isinstance(job, dict)
    return job


@pytest.fixture(scope="module")
def ci_variants(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Projects whose workflows differ: the minimum Python, the shard count, Turso."""
    return [
        bake(tmp_path_factory.mktemp("ci-one"), ci_shards="1", python_version="3.13", turso="yes"),
        bake(tmp_path_factory.mktemp("ci-many"), ci_shards="20", python_version="3.14"),
    ]


# -- the workflows ------------------------------------------------------------------------


def test_workflows_match_the_github_schema(default_project: Path, ci_variants: list[Path]) -> None:
    for project in (default_project, *ci_variants):
        paths = [str(project / ".github" / "workflows" / name) for name in WORKFLOWS]
        result = run(
            [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *paths],
            project,
        )
        assert result.returncode == 0, result.stdout


def test_zizmor_finds_nothing_at_medium_or_above(
    default_project: Path, ci_variants: list[Path]
) -> None:
    for project in (default_project, *ci_variants):
        result = run(
            [
                str(BIN / "zizmor"),
                "--offline",
                "--no-config",
                "--min-severity",
                "medium",
                str(project / ".github" / "workflows"),
            ],
            project,
            env=clean_env(NO_COLOR="1"),
        )
        assert result.returncode == 0, result.stdout
        assert "No findings to report" in result.stdout, result.stdout


def test_integration_matrix_has_one_job_per_shard(
    default_project: Path, ci_variants: list[Path]
) -> None:
    for project, shards in ((ci_variants[0], 1), (default_project, 2), (ci_variants[1], 20)):
        job = _integration_job(project)
        strategy = job["strategy"]
        assert isinstance(strategy, dict)
        assert strategy["matrix"]["group"] == list(range(1, shards + 1))
        # The jobs pass the matrix size to --splits, so editing the matrix alone is enough.
        assert job["env"] == {"GROUP": "${{ matrix.group }}", "SPLITS": "${{ strategy.job-total }}"}


def test_a_turso_project_runs_its_integration_suite_on_libsql_in_ci(
    default_project: Path, ci_variants: list[Path]
) -> None:
    """turso=yes: a job runs ``nox -s integration_libsql``, a session of that project,
    and checks its log as the integration workflow does."""
    turso = ci_variants[0]
    jobs = _workflow(turso, "ci.yml")["jobs"]
    assert isinstance(jobs, dict)
    runs = [
        " ".join(str(step.get("run", "")).split()) for step in jobs["integration-libsql"]["steps"]
    ]
    assert (
        "env -u GITHUB_STEP_SUMMARY nox -s integration_libsql -- "
        "--isolation-report=isolation-report.json 2>&1 | tee integration-tests.log"
    ) in runs
    check = f"python {CHECK_SCRIPT} integration-tests.log --report isolation-report.json"
    assert any(run.startswith(check) for run in runs), runs
    assert jobs["integration-libsql"]["env"] == {"PY_COLORS": "0"}  # a plain log to check
    assert "def integration_libsql(" in (turso / "noxfile.py").read_text()
    assert (
        "integration-libsql"
        not in (default_project / ".github" / "workflows" / "ci.yml").read_text()
    )


def test_integration_workflow_runs_the_checks(default_project: Path) -> None:
    job = _integration_job(default_project)
    steps = job["steps"]
    assert isinstance(steps, list)
    (test_step,) = (step for step in steps if "nox -s integration" in str(step.get("run", "")))
    command = " ".join(str(test_step["run"]).split())
    assert command.startswith("env -u GITHUB_STEP_SUMMARY nox -s integration -- ")
    for argument in ('--splits "$SPLITS"', '--group "$GROUP"', "--isolation-report="):
        assert argument in command
    assert command.endswith("2>&1 | tee integration-tests.log")
    assert test_step["shell"] == "bash"  # -o pipefail: the tee does not hide a failure

    (check_step,) = (step for step in steps if str(CHECK_SCRIPT) in str(step.get("run", "")))
    check = " ".join(str(check_step["run"]).split())
    assert f"python {CHECK_SCRIPT} integration-tests.log --report isolation-report.json" in check
    assert check_step["if"] == "${{ !cancelled() }}"  # also after failed tests
    assert not any("grep" in str(step.get("run", "")) for step in steps)  # logic in the script

    (upload,) = (s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    assert upload["with"]["name"] == "integration-tests-shard-${{ matrix.group }}"
    assert upload["with"]["path"].split() == ["integration-tests.log", "isolation-report.json"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflows_cache_pip_and_uv(default_project: Path, name: str) -> None:
    jobs = _workflow(default_project, name)["jobs"]
    assert isinstance(jobs, dict)
    for job in jobs.values():
        uses = {str(step.get("uses", "")).split("@")[0]: step for step in job["steps"]}
        assert uses["actions/setup-python"]["with"]["cache"] == "pip"
        assert uses["astral-sh/setup-uv"]["with"]["enable-cache"] is True


def test_ci_none_bakes_no_github_dir(bake: Bake, tmp_path: Path) -> None:
    project = bake(tmp_path, ci="none")
    assert not (project / ".github").exists()
    assert (project / CHECK_SCRIPT).is_file()
    readme = (project / "README.md").read_text()
    assert "generated without CI workflows" in readme
    assert ".github/workflows" not in readme


def test_project_files_for_ci(default_project: Path) -> None:
    assert "* text=auto eol=lf" in (default_project / ".gitattributes").read_text().splitlines()
    pre_commit = yaml.safe_load((default_project / ".pre-commit-config.yaml").read_text())
    (repo,) = pre_commit["repos"]
    assert repo["repo"] == "https://github.com/astral-sh/ruff-pre-commit"
    assert [hook["id"] for hook in repo["hooks"]] == ["ruff", "ruff-format"]
    durations = json.loads((default_project / ".test_durations").read_text())
    assert durations
    assert all(key.startswith("tests/integration/") for key in durations)
    assert all(isinstance(value, float) for value in durations.values())
    readme = (default_project / "README.md").read_text()
    for phrase in ("## Continuous integration", "ci_shards", "nox -s durations", "group: ["):
        assert phrase in readme


# -- shards and the log check, on a real run ----------------------------------------------

ADDED_LATER = '''"""Tests added after .test_durations was written: pytest-split still runs them."""

from lib.database import DatabaseClient


def test_added_later_one(db: DatabaseClient) -> None:
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0


def test_added_later_two(db: DatabaseClient) -> None:
    assert db.execute("SELECT 1").rows[0][0] == 1
'''


@dataclass(frozen=True)
class Shard:
    returncode: int
    log: Path
    report: Path
    passed: list[str]


@dataclass(frozen=True)
class ShardRun:
    project: Path
    collected: list[str]
    shards: list[Shard]


def _pytest(project: Path, *args: str) -> tuple[int, str]:
    result = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], project)
    return result.returncode, result.stdout


def _splitting(project: Path) -> list[str]:
    """The pytest-split algorithm the workflow's shards use, as pytest arguments."""
    steps = _integration_job(project)["steps"]
    assert isinstance(steps, list)
    commands = " ".join(str(step.get("run", "")) for step in steps)
    algorithm = re.search(r"--splitting-algorithm (\S+)", commands)
    assert algorithm, commands
    return ["--splitting-algorithm", algorithm[1]]


def _collected(project: Path, *args: str) -> list[str]:
    code, output = _pytest(project, "tests/integration", "--collect-only", "-q", *args)
    assert code == 0, output
    return [line for line in output.splitlines() if "::" in line]


def test_the_last_of_the_most_shards_still_gets_tests(ci_variants: list[Path]) -> None:
    """pytest-split's default algorithm left the last groups of many shards empty, and a
    shard that selects no test fails its job (pytest exits 5)."""
    project = ci_variants[1]
    shards = _integration_job(project)["strategy"]["matrix"]["group"]  # type: ignore[index]
    last = str(max(shards))
    assert _collected(project, "--splits", last, "--group", last, *_splitting(project))


@pytest.mark.parametrize("answers", [{}, {"example_app": "no"}], ids=["default", "no-app"])
def test_test_durations_name_exactly_the_generated_tests(
    bake: Bake, tmp_path: Path, answers: dict[str, str]
) -> None:
    """Shards are balanced by these timings: none for a test that was not generated."""
    project = bake(tmp_path, **answers)
    durations = json.loads((project / ".test_durations").read_text())
    assert sorted(durations) == sorted(_collected(project))


@pytest.fixture(scope="module")
def shard_run(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> ShardRun:
    """A fresh default project with two tests .test_durations does not know, run as 2 shards."""
    project = bake(tmp_path_factory.mktemp("shards"))
    (project / "tests" / "integration" / "test_added_later.py").write_text(ADDED_LATER)
    collected = _collected(project)
    assert any("test_added_later" in nodeid for nodeid in collected)
    shards = []
    logs = tmp_path_factory.mktemp("shard-logs")
    for group in (1, 2):
        log, report = logs / f"shard-{group}.log", logs / f"shard-{group}.json"
        code, output = _pytest(
            project,
            "tests/integration",
            "-rA",
            "--splits",
            "2",
            "--group",
            str(group),
            *_splitting(project),
            f"--isolation-report={report}",
        )
        log.write_text(output)
        passed = re.findall(r"^PASSED (\S+)", output, flags=re.MULTILINE)
        shards.append(Shard(code, log, report, passed))
    return ShardRun(project, collected, shards)


def test_each_shard_passes_alone(shard_run: ShardRun) -> None:
    for shard in shard_run.shards:
        assert shard.returncode == 0, shard.log.read_text()
        assert passed_count(shard.log.read_text()) == len(shard.passed) > 0


def test_shards_together_run_every_test_exactly_once(shard_run: ShardRun) -> None:
    ran = [nodeid for shard in shard_run.shards for nodeid in shard.passed]
    assert sorted(ran) == sorted(shard_run.collected)
    assert len(set(ran)) == len(ran)


def _check(project: Path, log: Path, report: Path | None = None, **env: str) -> tuple[int, str]:
    args = [sys.executable, str(CHECK_SCRIPT), str(log)]
    if report is not None:
        args += ["--report", str(report)]
    result = run(args, project, env=clean_env(**env))
    return result.returncode, result.stdout


def test_check_passes_on_real_output(shard_run: ShardRun, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    for shard in shard_run.shards:
        code, output = _check(
            shard_run.project, shard.log, shard.report, GITHUB_STEP_SUMMARY=str(summary)
        )
        assert code == 0, output
        assert "Isolation checks passed." in output
        assert "::error" not in output
    text = summary.read_text()
    assert text.count("### Isolation Metrics Report") == 2
    assert "| total_tests |" in text


@pytest.mark.parametrize(
    ("planted", "named"),
    [
        (
            "E   lib.database.ClientClosedError: CLIENT_CLOSED: this database client was closed",
            "CLIENT_CLOSED",
        ),
        (
            "E   sqlite3.ProgrammingError: Cannot operate on a closed database.",
            "CLIENT_CLOSED",
        ),
        (
            "Connection leak detected in test: tests/integration/test_x.py::test_y "
            "(opened at lib/database.py:42)",
            "Connection leak detected",
        ),
        (
            "Scope leak detected in test: tests/integration/test_x.py::test_y "
            "(test_1_0badc0de (leaky scope))",
            "Scope leak detected",
        ),
        (
            "Thread leak detected in test: tests/integration/test_x.py::test_y "
            "(thread 'writer' running write_forever (tests/integration/test_x.py:12) still "
            "runs after the test)",
            "Thread leak detected",
        ),
    ],
    ids=["client-closed", "closed-sqlite3", "connection-leak", "scope-leak", "thread-leak"],
)
def test_check_fails_on_a_planted_failure(
    shard_run: ShardRun, tmp_path: Path, planted: str, named: str
) -> None:
    shard = shard_run.shards[0]
    lines = shard.log.read_text().splitlines()
    log = tmp_path / "integration-tests.log"
    log.write_text("\n".join([*lines[:5], planted, *lines[5:]]) + "\n")
    code, output = _check(shard_run.project, log, shard.report)
    assert code == 1, output
    titles = {
        "CLIENT_CLOSED": "CLIENT_CLOSED",
        "Scope leak detected": "Scope leaks",
        "Thread leak detected": "Thread leaks",
    }
    title = titles.get(named, "Connection leaks")
    assert f"::error title={title}::" in output
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, output
    assert named in failed[0]
    assert f"integration-tests.log:6: {planted}" in output  # the offending line, quoted
    assert "Isolation checks failed:" in output


def test_check_does_not_count_test_source_that_a_traceback_quotes(
    shard_run: ShardRun, tmp_path: Path
) -> None:
    """A failing test's traceback shows its source: the strings it expects are no error."""
    shard = shard_run.shards[0]
    source = [
        '    """The sequence that used to produce CLIENT_CLOSED, inside one test."""',
        '>       assert str(errors[0]).startswith("CLIENT_CLOSED:")',
        '        with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED: .*stale"):',
        '        with pytest.raises(sqlite3.ProgrammingError, match="Cannot operate on a closed '
        'database"):',
    ]
    log = tmp_path / "integration-tests.log"
    log.write_text("\n".join([*source, *shard.log.read_text().splitlines()]) + "\n")
    code, output = _check(shard_run.project, log, shard.report)
    assert code == 0, output
    assert "passed    CLIENT_CLOSED: none" in output


def test_check_fails_on_failed_tests_that_tee_hid(shard_run: ShardRun, tmp_path: Path) -> None:
    """A log saved through ``| tee`` loses the run's exit code: failed tests, in pytest's
    summary line or in the report, fail the check instead of passing it."""
    shard = shard_run.shards[0]
    lines = shard.log.read_text().splitlines()
    summary = next(
        i for i, line in reversed(list(enumerate(lines))) if re.match(r"=+ \d+ passed", line)
    )
    lines[summary] = lines[summary].replace("= ", "= 1 failed, ", 1)
    log = tmp_path / "integration-tests.log"
    log.write_text("\n".join(lines) + "\n")
    code, output = _check(shard_run.project, log)
    assert code == 1, output
    assert "::error title=Failed tests::1 test(s) failed" in output
    assert f"integration-tests.log:{summary + 1}: {lines[summary].strip()}" in output

    # In colour (--color=yes), with pytest's subtests counted as two words.
    red, bold, reset = "\x1b[31m", "\x1b[1m", "\x1b[0m"
    counts = f"{bold}3 failed{reset}, 81 passed, 1 subtests passed"
    lines[summary] = f"{red}== {counts} in 2.19s =={reset}"
    log.write_text("\n".join(lines) + "\n")
    code, output = _check(shard_run.project, log)
    assert code == 1, output
    assert "::error title=Failed tests::3 test(s) failed" in output

    # -qq prints no summary line: the Isolation Metrics Report's count is in the log still.
    metrics = lines.index("  Failed Tests: 0")
    lines[metrics] = "  Failed Tests: 4"
    log.write_text("\n".join(line for index, line in enumerate(lines) if index != summary))
    code, output = _check(shard_run.project, log)
    assert code == 1, output
    assert "::error title=Failed tests::4 test(s) failed" in output
    assert f"integration-tests.log:{metrics + 1}: Failed Tests: 4" in output

    # An xdist worker that crashed: the tests it ran are in no count, not even -qq's.
    lines[metrics] = "  Failed Tests: 0"
    crashed = "Worker gw1 ended without its records (it crashed): the figures below leave out"
    quiet = [line for index, line in enumerate(lines) if index != summary]
    quiet.insert(metrics + 1, f"{crashed} the tests it ran")
    log.write_text("\n".join(quiet) + "\n")
    code, output = _check(shard_run.project, log)
    assert code == 1, output
    assert "::error title=Failed tests::1 xdist worker(s) crashed" in output
    assert f"integration-tests.log:{metrics + 2}: {crashed}" in output

    report = json.loads(shard.report.read_text())
    report["summary"]["failed_tests"] = 2
    failed_report = tmp_path / "failed.json"
    failed_report.write_text(json.dumps(report))
    code, output = _check(shard_run.project, shard.log, failed_report)
    assert code == 1, output
    assert "2 test(s) failed" in output


def test_check_warns_on_memory_growth_and_stale_bindings_and_judges_regressions(
    shard_run: ShardRun, tmp_path: Path
) -> None:
    shard = shard_run.shards[0]
    log = tmp_path / "integration-tests.log"
    growth = "High memory growth in test: tests/integration/test_x.py::test_y (80.0 MB > 50 MB)"
    stale = "Stale client binding in test: tests/integration/test_x.py::test_y (app.cache.CLIENT)"
    log.write_text(shard.log.read_text() + growth + "\n" + stale + "\n")
    report = json.loads(shard.report.read_text())
    regression = {"metric": "average_test_duration_ms", "current": 70.0, "baseline": 50}
    report["regressions"] = [regression | {"threshold": 60.0, "severity": "warning"}]
    warning_report = tmp_path / "warning.json"
    warning_report.write_text(json.dumps(report))

    code, output = _check(shard_run.project, log, warning_report)
    assert code == 0, output
    assert "::warning title=High memory growth::" in output
    assert "::warning title=Stale client bindings::1 module global(s) kept a client" in output
    assert f"integration-tests.log:{len(shard.log.read_text().splitlines()) + 2}: {stale}" in (
        output
    )
    assert "::warning title=Performance regressions::" in output
    assert "average_test_duration_ms" in output

    report["regressions"] = [regression | {"threshold": 60.0, "severity": "error"}]
    error_report = tmp_path / "error.json"
    error_report.write_text(json.dumps(report))
    code, output = _check(shard_run.project, log, error_report)
    assert code == 1, output
    assert "::error title=Performance regressions::" in output


def test_check_exit_code_for_a_missing_log(shard_run: ShardRun, tmp_path: Path) -> None:
    code, output = _check(shard_run.project, tmp_path / "missing.log")
    assert code == 2, output
    assert "cannot read the log" in output
    assert "UNCHECKED Connection leaks" in output  # not "passed" on nothing
    assert "Isolation checks passed." not in output


def test_check_of_inputs_that_prove_nothing_is_not_a_pass(
    shard_run: ShardRun, tmp_path: Path
) -> None:
    """An empty log (the run died before its report) or an empty report says nothing."""
    empty_log = tmp_path / "empty.log"
    empty_log.write_text("")
    code, output = _check(shard_run.project, empty_log)
    assert code == 2, output
    assert "holds no Isolation Metrics Report" in output
    assert "Isolation checks passed." not in output

    empty_report = tmp_path / "empty.json"
    empty_report.write_text("{}")
    code, output = _check(shard_run.project, shard_run.shards[0].log, empty_report)
    assert code == 2, output
    assert "it has no summary" in output
    assert "UNCHECKED Performance regressions" in output

    damaged = json.loads(shard_run.shards[0].report.read_text()) | {"leaks": None}
    damaged_report = tmp_path / "damaged.json"
    damaged_report.write_text(json.dumps(damaged))
    code, output = _check(shard_run.project, shard_run.shards[0].log, damaged_report)
    assert code == 2, output
    assert "its 'leaks' is not a list" in output


def test_durations_session_command_covers_every_test(shard_run: ShardRun, tmp_path: Path) -> None:
    noxfile = (shard_run.project / "noxfile.py").read_text()
    assert '"--store-durations",' in noxfile
    assert '"--clean-durations",' in noxfile
    durations = tmp_path / "durations.json"
    code, output = _pytest(
        shard_run.project,
        "tests/integration",
        "-q",
        "--store-durations",
        "--clean-durations",
        "--durations-path",
        str(durations),
    )
    assert code == 0, output
    assert sorted(json.loads(durations.read_text())) == sorted(shard_run.collected)
