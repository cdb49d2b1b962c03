"""Planted bugs in a baked project: each one is named with its test and the culprit.

Leaks (a scope never destroyed, a raw sqlite3 connection to the test's database left
open, a project module keeping a client in a global) are warnings: the run passes and
reports them, and fails with ``--isolation-strict``. Misuse (a client asked for at import
time, a client used after its test ended, a unit test asking for the scoped database) is an
error.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Bake, run

LEAKY_MODULE = '''
"""A project module with the bug behind CLIENT_CLOSED: a client kept in a global."""

from lib.database import DatabaseClient, get_database_client

CLIENT: DatabaseClient | None = None


def remember_client() -> DatabaseClient:
    global CLIENT
    CLIENT = get_database_client()
    return CLIENT
'''

LEAKY_TESTS = """
import os
import sqlite3

from lib.isolation_manager import TestIsolationManager
from planted import cache

OPEN_CONNECTIONS = []


def test_forgets_a_scope(isolation_manager: TestIsolationManager) -> None:
    isolation_manager.create_scope("never destroyed")


def test_leaves_a_connection_open() -> None:
    OPEN_CONNECTIONS.append(sqlite3.connect(os.environ["DATABASE_URL"], uri=True))  # LEAK-LINE


def test_keeps_a_client_in_a_module_global() -> None:
    assert cache.remember_client().execute("SELECT 1").rows[0][0] == 1


def test_clean_one(db) -> None:
    assert db.execute("SELECT count(*) FROM users").rows[0][0] == 0
"""

IMPORT_TIME_TEST = """
from lib.database import get_database_client

CLIENT = get_database_client()  # IMPORT-LINE


def test_never_runs() -> None:
    assert CLIENT is not None
"""

STALE_CLIENT_TESTS = """
KEPT = []


def test_a_keeps_its_client(db) -> None:
    KEPT.append(db)


def test_b_uses_the_kept_client() -> None:
    KEPT[0].execute("SELECT 1")
"""

IMPORT_TIME_HOLDER = """
from lib.database import get_database_client

CLIENT = get_database_client()
"""

INTERRUPTED_TEST = """
def test_imports_a_holder_then_is_interrupted(db) -> None:
    import planted.import_time  # noqa: F401

    raise KeyboardInterrupt
"""

OUTLIVING_SCOPE_TEST = """
from lib.isolation_manager import TestIsolationManager
from planted import cache


def test_keeps_a_scope_for_later(isolation_manager: TestIsolationManager) -> None:
    scope = isolation_manager.create_scope("kept for later", auto_cleanup=False)
    cache.CLIENT = isolation_manager.get_scoped_database_client(scope)
"""

UNIT_TEST = """
from tests.setup_integration import get_db_client


def test_unit_asks_for_the_database() -> None:
    get_db_client()
"""


def line_of(source: str, marker: str) -> int:
    """The 1-based line of ``marker`` in the file written from ``source``."""
    lines = textwrap.dedent(source).lstrip("\n").splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


def write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip("\n"))


@pytest.fixture(scope="module")
def planted(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baked project with planted-bug modules and tests beside its own."""
    project = bake(tmp_path_factory.mktemp("planted"))
    write(project / "planted" / "__init__.py", "")
    write(project / "planted" / "cache.py", LEAKY_MODULE)
    write(project / "tests" / "integration" / "test_planted_leaks.py", LEAKY_TESTS)
    write(project / "tests" / "integration" / "test_planted_import.py", IMPORT_TIME_TEST)
    write(project / "tests" / "integration" / "test_planted_stale.py", STALE_CLIENT_TESTS)
    write(project / "planted" / "import_time.py", IMPORT_TIME_HOLDER)
    write(project / "tests" / "integration" / "test_planted_interrupt.py", INTERRUPTED_TEST)
    write(project / "tests" / "integration" / "test_planted_outliving.py", OUTLIVING_SCOPE_TEST)
    write(project / "tests" / "unit" / "test_planted_unit.py", UNIT_TEST)
    return project


def pytest_in(project: Path, *args: str) -> tuple[int, str]:
    result = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], project)
    return result.returncode, result.stdout


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two workers"])
def test_leaks_are_reported_with_test_and_culprit(
    planted: Path, tmp_path: Path, workers: list[str]
) -> None:
    """Also on xdist workers: a module global holding a client is found once pytest lets
    go of the test, and reported with the test's other findings."""
    report = tmp_path / "report.json"
    leaks = "tests/integration/test_planted_leaks.py"
    code, output = pytest_in(planted, leaks, f"--isolation-report={report}", *workers)

    assert code == 1, output  # the project's isolation_strict: the tests passed, the leaks fail
    assert "isolation strict mode: leaks fail this run" in output
    assert "4 passed" in output
    assert f"Scope leak detected in test: {leaks}::test_forgets_a_scope" in output
    leak_line = line_of(LEAKY_TESTS, "LEAK-LINE")
    assert f"Connection leak detected in test: {leaks}::test_leaves_a_connection_open" in output
    assert f"test_planted_leaks.py:{leak_line}" in output
    assert (
        f"Stale client binding in test: {leaks}::test_keeps_a_client_in_a_module_global "
        "(planted.cache.CLIENT)" in output
    )
    assert "Isolation Metrics Report" in output
    assert "Performance Metrics" in output

    data = json.loads(report.read_text())
    found = {(leak["kind"], leak["test"].split("::")[-1]) for leak in data["leaks"]}
    assert found == {
        ("scope", "test_forgets_a_scope"),
        ("connection", "test_leaves_a_connection_open"),
        ("stale_binding", "test_keeps_a_client_in_a_module_global"),
    }
    assert data["summary"]["scope_leaks"] == 1
    assert data["summary"]["connection_leaks"] == 1


def test_a_binding_found_after_the_test_is_shown_even_where_warnings_are_errors(
    planted: Path,
) -> None:
    """planted.cache was imported before the test, so its global is looked for once pytest
    has made the test's reports: raised as an error then, it would crash the run."""
    leaks = "tests/integration/test_planted_leaks.py"
    error = "error::lib.isolation_manager.IsolationWarning"
    not_strict = "-o", "isolation_strict=false"  # a leak found then would fail the run
    code, output = pytest_in(planted, leaks, "-k", "module_global", "-W", error, *not_strict)
    assert code == 0, output
    assert "INTERNALERROR" not in output
    assert "IsolationWarning: planted.cache.CLIENT still holds the database client" in output


def test_a_binding_found_at_session_end_never_stops_the_cleanup(
    planted: Path, tmp_path: Path
) -> None:
    """Interrupted (Ctrl-C) while a module the test imported holds its client: the session
    end ends the scope, shows the finding and still deletes the run's databases."""
    interrupted = "tests/integration/test_planted_interrupt.py"
    error = "error::lib.isolation_manager.IsolationWarning"
    data = tmp_path / "data"
    settings = ["-o", "isolation_use_dev_shm=false", "-o", f"isolation_data_dir={data}"]
    code, output = pytest_in(planted, interrupted, "-W", error, *settings)
    assert code == pytest.ExitCode.INTERRUPTED, output
    assert "planted.import_time.CLIENT still holds the database client" in output
    assert "shown, not raised" in output
    assert "Traceback" not in output
    assert [path.name for path in (data / ".isolation").iterdir()] == ["templates"]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two workers"])
def test_a_binding_found_at_session_end_is_reported_and_fails_strict_mode(
    planted: Path, tmp_path: Path, workers: list[str]
) -> None:
    """A scope allowed to outlive its test is ended with the session; a global still
    holding its client then counts like any other leak, in the report and in strict mode."""
    report = tmp_path / "report.json"
    outliving = "tests/integration/test_planted_outliving.py"
    strict = ["-o", "isolation_strict=false", "--isolation-strict"]  # the option, not the ini
    args = [outliving, *strict, f"--isolation-report={report}", *workers]
    code, output = pytest_in(planted, *args)
    assert code == 1, output
    assert "1 passed" in output
    assert (
        "Stale client binding in test: kept for later "
        "(planted.cache.CLIENT, found at the end of the session)" in output
    )
    assert "isolation strict mode: leaks fail this run" in output
    data = json.loads(report.read_text())
    assert data["leaks"] == [
        {"kind": "stale_binding", "test": "kept for later", "detail": "planted.cache.CLIENT"}
    ]
    assert data["summary"]["stale_bindings"] == 1
    metrics = data["performance_metrics"]
    assert metrics["scopes_destroyed"] == metrics["scopes_created"] == 2


def test_strict_mode_fails_the_same_run_and_the_option_turns_it_on(planted: Path) -> None:
    """The project's pyproject.toml turns it on; set off, leaks are reported and pass."""
    leaks = "tests/integration/test_planted_leaks.py"
    code, output = pytest_in(planted, leaks, "-o", "isolation_strict=false")
    assert code == 0, output
    assert "Connection leak detected in test" in output
    code, output = pytest_in(planted, leaks, "-o", "isolation_strict=false", "--isolation-strict")
    assert code == 1, output
    assert "4 passed" in output
    assert "isolation strict mode: leaks fail this run" in output


def test_client_at_import_time_names_the_module_and_line(planted: Path) -> None:
    code, output = pytest_in(planted, "tests/integration/test_planted_import.py")
    assert code != 0, output
    assert "DatabaseAccessBlockedError" in output
    line = line_of(IMPORT_TIME_TEST, "IMPORT-LINE")
    assert f"test_planted_import.py:{line}" in output
    assert "ask for it inside the test" in output


def test_client_used_after_its_test_names_the_owning_test(planted: Path) -> None:
    stale = "tests/integration/test_planted_stale.py"
    code, output = pytest_in(planted, stale)
    assert code == 1, output
    assert "1 failed, 1 passed" in output
    assert "ClientClosedError: CLIENT_CLOSED:" in output
    assert f"(test {stale}::test_a_keeps_its_client)" in output
    assert "sqlite3.ProgrammingError" not in output


def test_unit_test_asking_for_the_scoped_database_is_told_why(planted: Path) -> None:
    code, output = pytest_in(planted, "tests/unit/test_planted_unit.py")
    assert code == 1, output
    assert "IsolationError: no test scope is current" in output
    assert "tests/integration/" in output


def test_failed_test_database_is_kept_for_a_post_mortem(planted: Path) -> None:
    stale = "tests/integration/test_planted_stale.py"
    code, output = pytest_in(planted, stale, "--isolation-keep-failed")
    assert code == 1, output
    kept = [line for line in output.splitlines() if "Kept database of a failed test:" in line]
    assert len(kept) == 1, output
    path = Path(kept[0].split(": ", 1)[1])
    assert path.is_file()
    assert "test_b_uses_the_kept_client" in path.name

    pytest_in(planted, "tests/integration/test_planted_leaks.py")
    assert not path.exists(), "the next run removes kept databases"
