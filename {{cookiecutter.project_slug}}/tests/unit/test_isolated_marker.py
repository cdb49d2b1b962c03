"""Outside tests/integration/ a test has no database unless it is marked isolated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.database import DatabaseAccessBlockedError, DatabaseClient, get_database_client
from lib.isolation_manager import IsolationError
from tests.setup_integration import get_db_client, get_isolation_stats

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_unit_test_has_no_database() -> None:
    with pytest.raises(IsolationError, match="no test scope is current"):
        get_db_client()
    with pytest.raises(DatabaseAccessBlockedError, match="only available inside an isolated test"):
        get_database_client()
    assert get_isolation_stats()["current_test_id"] is None


def test_unit_test_environment_is_local_and_safe() -> None:
    """No remote credentials, and DATABASE_URL names no file a unit test could write."""
    assert not [name for name in os.environ if name.startswith("TURSO_")]
    assert os.environ["DATABASE_URL"] == ":memory:"


@pytest.mark.isolated
def test_marked_test_gets_its_own_database(db: DatabaseClient) -> None:
    db.execute("INSERT INTO users (email, name) VALUES ('marked@example.com', 'Marked')")
    assert get_database_client().execute("SELECT COUNT(*) FROM users").rows[0][0] == 1
    assert get_isolation_stats()["current_test_id"] is not None


@pytest.mark.isolated
async def test_marked_async_test_gets_its_own_database(db: DatabaseClient) -> None:
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0


PLUGIN_THAT_MARKS = """
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "marked_late" in item.name:
            item.add_marker(pytest.mark.isolated)
"""

TESTS_MARKED_LATE = """
from tests.setup_integration import get_db_client


def test_marked_late():
    assert get_db_client().execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
"""


def test_a_marker_another_plugin_adds_at_collection_counts(tmp_path: Path) -> None:
    """Which tests are isolated is decided after every other plugin has marked its tests,
    even one registered before the isolation plugin (whose hook would otherwise run last)."""
    (tmp_path / "marking_plugin.py").write_text(PLUGIN_THAT_MARKS)
    (tmp_path / "test_late.py").write_text(TESTS_MARKED_LATE)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        f"isolation_migrations_dir = {PROJECT_ROOT / 'migrations'}\n"
        f"isolation_data_dir = {tmp_path / 'data'}\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += ["-p", "marking_plugin", "-p", "tests.setup_integration"]
    command += ["-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_late.py")]
    child = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert "1 passed" in child.stdout
