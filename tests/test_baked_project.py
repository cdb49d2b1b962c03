"""The baked project's own checks pass: lint, types, unit and integration tests."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import Bake, clean_env, run, run_pytest

# Ruff and mypy target the project's minimum Python, so check every allowed one.
PYTHON_VERSIONS = ["3.11", "3.12", "3.13", "3.14"]


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_ruff_clean(bake: Bake, tmp_path: Path, python_version: str) -> None:
    project = bake(tmp_path, python_version=python_version)
    for args in (["check", "."], ["format", "--check", "."]):
        result = run([sys.executable, "-m", "ruff", *args, "--no-cache"], project)
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_mypy_strict_clean(bake: Bake, tmp_path: Path, python_version: str) -> None:
    project = bake(tmp_path, python_version=python_version)
    result = run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"], project)
    assert result.returncode == 0, result.stdout


def test_unit_suite_passes_whatever_the_projects_schema(bake: Bake, tmp_path: Path) -> None:
    """The isolation library's own tests bring their schema: replacing the example's
    migrations, a project's first step, leaves them passing."""
    project = bake(tmp_path)
    for migration in (project / "migrations").glob("*.sql"):
        migration.unlink()
    (project / "migrations" / "0001_accounts.sql").write_text(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
    )
    run_pytest(project, "tests/unit")


def test_integration_suite_passes(default_project: Path) -> None:
    run_pytest(default_project, "tests/integration")


@pytest.mark.parametrize("workers", ["2", "4"])
def test_integration_suite_passes_on_workers(custom_project: Path, workers: str) -> None:
    run_pytest(custom_project, "tests/integration", "-n", workers)


def test_a_pytest_without_the_test_plugins_names_them(default_project: Path) -> None:
    """Without them, their settings in pyproject.toml would stop pytest as unknown ones."""
    without = ["-p", "no:asyncio", "-p", "no:timeout"]
    result = run([sys.executable, "-m", "pytest", *without, "tests/integration"], default_project)
    assert result.returncode != 0
    assert "Missing required plugins: pytest-asyncio>=1.0, pytest-timeout>=2.3" in result.stdout


def test_integration_suite_passes_in_memory(default_project: Path) -> None:
    """The memory strategy runs the same suite: two connections share a test's named
    in-memory database (DATABASE_URL, the busy timeout), and only the test of where the
    database file lives is skipped."""
    output = run_pytest(
        default_project, "tests/integration", "--isolation-strategy", "memory", "-v"
    )
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, output
    assert "SKIPPED [1]" in skipped[0], output
    assert "database file" in skipped[0], output
    for shared in ("test_database_url_points_at_the_scope_database", "test_locked_database"):
        assert re.search(rf"::{shared}\S* PASSED", output), output


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_integration_suite_leaves_the_developer_database_alone(bake: Bake, tmp_path: Path) -> None:
    project = bake(tmp_path / "baked")
    database = project / "data" / "app.db"
    database.parent.mkdir()
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE precious (id INTEGER PRIMARY KEY, note TEXT)")
        connection.execute("INSERT INTO precious (note) VALUES ('keep me')")
    connection.close()
    before = _sha256(database)

    run_pytest(project, "tests/integration", env=clean_env(DATABASE_URL="file:./data/app.db"))

    assert _sha256(database) == before
    for suffix in ("-wal", "-shm", "-journal"):
        assert not database.with_name(database.name + suffix).exists()


DOCTEST_PROBE = '''"""A doctest of application code that asks for the database.

>>> from lib.database import get_database_client
>>> get_database_client().execute("SELECT 1").rows[0][0]
1
"""
'''


def test_doctests_of_the_application_alone_never_reach_the_developer_database(
    bake: Bake, tmp_path: Path
) -> None:
    """A run over app/ alone loads the plugin too (the root conftest.py): the doctest is
    refused the database instead of creating and writing data/app.db."""
    project = bake(tmp_path / "baked")
    (project / "app" / "doc_probe.py").write_text(DOCTEST_PROBE)
    result = run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--doctest-modules", "app"],
        project,
        env=clean_env(),
    )
    assert result.returncode == 1, result.stdout
    assert "DatabaseAccessBlockedError" in result.stdout
    assert not (project / "data" / "app.db").exists()


RUNS_ROOT = (
    "from pathlib import Path; from lib.scope_databases import runs_root; "
    "print(runs_root(Path('data').resolve(), use_shm=True))"
)


def test_integration_runs_leave_no_test_databases(bake: Bake, tmp_path: Path) -> None:
    """Every worker deletes its directory of test databases (in /dev/shm when it has room)."""
    project = bake(tmp_path / "baked")
    run_pytest(project, "tests/integration", "-n", "2")
    runs = Path(run([sys.executable, "-c", RUNS_ROOT], project).stdout.strip())
    assert runs.is_absolute(), runs
    assert [path.name for path in runs.glob("*") if path.name != "templates"] == []
    assert [path.name for path in (project / "data" / ".isolation").iterdir()] == ["templates"]
