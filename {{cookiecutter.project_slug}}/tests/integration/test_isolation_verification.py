"""Each test sees its own database, and only its own, whatever the order."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from lib.database import (
    DatabaseClient,
    get_database_client,
    local_database_file,
    parse_database_url,
    reset_database_instance,
)
from lib.isolation_manager import TestIsolationManager
from tests.integration.schema import table_names
from tests.setup_integration import get_db_client, get_isolation_stats

# Database files seen by the tests in this module, checked by the others.
_SEEN_PATHS: list[Path] = []


def _current_path() -> Path:
    """The current test's database file (skips under the memory strategy)."""
    path = local_database_file(get_db_client().path)
    if path is None:
        pytest.skip("the memory strategy has no database file")
    return path


def _check_and_record_path() -> None:
    """Earlier tests' files are gone and never reused, in whichever order tests run
    (nothing to check in memory)."""
    path = local_database_file(get_db_client().path)
    if path is None:
        return
    assert path.exists()
    for earlier in _SEEN_PATHS:
        assert earlier != path
        assert not earlier.exists()
        assert not Path(f"{earlier}-wal").exists()
        assert not Path(f"{earlier}-shm").exists()
    _SEEN_PATHS.append(path)


@pytest.mark.parametrize("marker", ["first", "second"])
def test_same_table_created_by_two_tests(db: DatabaseClient, marker: str) -> None:
    """No IF NOT EXISTS: this fails in whichever test runs second unless each is isolated."""
    db.execute("CREATE TABLE isolation_probe (test_id TEXT, data TEXT)")
    db.execute("INSERT INTO isolation_probe VALUES (?, ?)", (marker, "test_data"))
    rows = db.execute("SELECT test_id FROM isolation_probe").rows
    assert [r["test_id"] for r in rows] == [marker]
    _check_and_record_path()


@pytest.mark.parametrize("name", ["Alice", "Bob"])
def test_users_table_starts_empty(db: DatabaseClient, name: str) -> None:
    """Rows inserted by one test are never seen by another: exactly one user each time."""
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
    db.execute(
        "INSERT INTO users (email, name) VALUES (?, ?)", (f"{name.lower()}@example.com", name)
    )
    rows = db.execute("SELECT name, email FROM users").rows
    assert len(rows) == 1
    assert rows[0]["name"] == name


def test_database_is_migrated(db: DatabaseClient) -> None:
    tables = table_names(db)
    assert {"users", "products", "orders", "order_items", "logs"} <= tables


def _count_users_in_application_code() -> int:
    """Application code: asks for the client at call time, like real code should."""
    value = get_database_client().execute("SELECT COUNT(*) FROM users").rows[0][0]
    assert isinstance(value, int)
    return value


def test_application_code_sees_the_test_database(db: DatabaseClient) -> None:
    db.execute("INSERT INTO users (email, name) VALUES ('app@example.com', 'App')")
    assert _count_users_in_application_code() == 1
    get_database_client().execute(
        "INSERT INTO users (email, name) VALUES ('app2@example.com', 'App2')"
    )
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 2


def test_resetting_the_application_singleton_keeps_the_test_database(
    db: DatabaseClient,
) -> None:
    """Application code that resets its singleton in a test connects again to the test's
    database, and the test's own client stays open: the scope owns it."""
    db.execute("INSERT INTO users (email, name) VALUES ('reset@example.com', 'Reset')")
    assert _count_users_in_application_code() == 1  # the application is connected
    reset_database_instance()
    assert _count_users_in_application_code() == 1
    assert db.execute("SELECT name FROM users").rows[0][0] == "Reset"


def test_a_test_that_closes_its_client_gets_its_database_back(db: DatabaseClient) -> None:
    """Closing the client loses nothing, in memory too: the scope keeps the database."""
    db.execute("INSERT INTO users (email, name) VALUES ('closed@example.com', 'Closed')")
    db.close()
    again = get_db_client()
    assert again is not db
    assert again.execute("SELECT name FROM users").rows[0][0] == "Closed"


def test_database_url_points_at_the_scope_database(db: DatabaseClient) -> None:
    """A connection of the test's own, opened from DATABASE_URL, sees the test's rows,
    in memory too."""
    assert parse_database_url(os.environ["DATABASE_URL"]) == db.path
    db.execute("INSERT INTO users (email, name) VALUES ('url@example.com', 'Url')")
    own = DatabaseClient(db.path, owner="a connection of the test's own", engine=db.engine)
    try:
        assert own.execute("SELECT name FROM users").rows[0][0] == "Url"
    finally:
        own.close()
    assert "TURSO_DATABASE_URL" not in os.environ
    assert "TURSO_AUTH_TOKEN" not in os.environ
    _check_and_record_path()


def test_scope_database_lives_in_this_process_run_directory(
    isolation_manager: TestIsolationManager,
) -> None:
    path = _current_path()
    run_directory = path.parent
    assert run_directory.parent == isolation_manager.runs_dir
    assert run_directory.name.startswith(f"{os.getpid()}-")


def test_each_scope_has_its_own_file_removed_at_scope_end(
    isolation_manager: TestIsolationManager,
) -> None:
    """Deterministic version of the cross-test check, using two nested scopes."""
    first = isolation_manager.create_scope("paths-1")
    second = isolation_manager.create_scope("paths-2")
    path1 = isolation_manager.active_scopes[first].database_path
    path2 = isolation_manager.active_scopes[second].database_path
    assert path1 is not None
    assert path2 is not None
    assert path1 != path2
    assert path1.exists()
    assert path2.exists()
    isolation_manager.get_scoped_database_client(first).execute(
        "INSERT INTO users (email, name) VALUES ('x@example.com', 'X')"
    )
    assert isolation_manager.destroy_scope(first)
    assert not path1.exists()
    assert not Path(f"{path1}-wal").exists()
    assert not Path(f"{path1}-shm").exists()
    assert path2.exists()
    client2 = isolation_manager.get_scoped_database_client(second)
    assert client2.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
    assert isolation_manager.destroy_scope(second)
    assert not path2.exists()


def test_stats_show_the_current_scope(
    db: DatabaseClient, request: pytest.FixtureRequest, isolation_manager: TestIsolationManager
) -> None:
    stats = get_isolation_stats()
    assert stats["is_test_mode"] is True
    assert stats["current_test_id"] == isolation_manager.current_test_id
    assert stats["active_scope_count"] == len(isolation_manager.active_scopes) >= 1
    assert stats["active_connection_count"] >= 1
    mine = [scope for scope in stats["scopes"] if scope["test_name"] == request.node.nodeid]
    assert len(mine) == 1
    assert mine[0]["connection_count"] == 1
    assert mine[0]["migration_completed"] is True
    assert mine[0]["id"] == isolation_manager.current_test_id
    assert db in isolation_manager.active_scopes[mine[0]["id"]].connections


def test_foreign_keys_enforced_in_test_database(db: DatabaseClient) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO orders (user_id, status, total_cents) VALUES (999, 'pending', 0)")
