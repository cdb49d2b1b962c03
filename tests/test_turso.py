"""The ``turso`` answer: the libSQL engine, its extra and its nox session.

A ``turso=yes`` project runs its whole integration suite on libsql, refuses what libsql
cannot do with a clear message, and never reaches a remote database from its tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import Bake, clean_env, passed_count, run, run_nox, run_pytest


@pytest.fixture(scope="module")
def turso_project(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("turso"), turso="yes")


def test_turso_yes_adds_the_extra_the_session_and_the_engine_tests(turso_project: Path) -> None:
    assert 'turso = ["libsql' in (turso_project / "pyproject.toml").read_text()
    assert "def integration_libsql(" in (turso_project / "noxfile.py").read_text()
    assert (turso_project / "tests" / "unit" / "test_libsql_engine.py").is_file()


def test_turso_no_mentions_no_libsql_outside_the_engine_module(default_project: Path) -> None:
    assert "libsql" not in (default_project / "pyproject.toml").read_text()
    assert "libsql" not in (default_project / "noxfile.py").read_text()
    assert not (default_project / "tests" / "unit" / "test_libsql_engine.py").exists()


def test_libsql_engine_unit_tests_pass(turso_project: Path) -> None:
    output = run_pytest(turso_project, "tests/unit/test_libsql_engine.py")
    assert "skipped" not in output


def test_integration_suite_passes_on_libsql(turso_project: Path) -> None:
    output = run_pytest(
        turso_project, "tests/integration", "-rs", env=clean_env(DATABASE_DRIVER="libsql")
    )
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all("needs the sqlite3 engine" in line for line in skipped), output
    # Exactly the tests marked as needing sqlite3, no other skip.
    marked = sum(
        path.read_text().count("@pytest.mark.sqlite3_only")
        for path in (turso_project / "tests" / "integration").rglob("test_*.py")
    )
    assert len(skipped) == marked, output


def test_memory_strategy_on_libsql_is_refused_clearly(turso_project: Path) -> None:
    result = run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/integration"],
        turso_project,
        env=clean_env(DATABASE_DRIVER="libsql", ISOLATION_STRATEGY="memory"),
    )
    assert result.returncode == 4, result.stdout  # a usage error, before any test runs
    assert "the memory strategy needs the sqlite3 engine" in result.stdout
    assert "Traceback" not in result.stdout


def test_tests_never_reach_a_remote_database(turso_project: Path) -> None:
    """With production Turso settings in the environment the suite still runs locally."""
    remote = clean_env(
        DATABASE_URL="libsql://production-db.example.turso.io",
        TURSO_DATABASE_URL="libsql://production-db.example.turso.io",
        TURSO_AUTH_TOKEN="production-secret",
    )
    output = run_pytest(turso_project, "tests/integration", env=remote)
    assert passed_count(output) > 0
    assert "production-secret" not in output


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_nox_integration_libsql_session(turso_project: Path) -> None:
    run_nox(turso_project, "integration_libsql")
