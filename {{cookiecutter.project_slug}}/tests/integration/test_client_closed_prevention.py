"""CLIENT_CLOSED can no longer break a suite: every test gets a fresh client.

A client kept past the end of its test is closed, and using it raises
`ClientClosedError` naming the test that owned it, never a raw sqlite3 error.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from lib.database import AsyncDatabaseClient, ClientClosedError, DatabaseClient
from lib.isolation_manager import TestIsolationManager
from tests.integration.schema import table_names
from tests.setup_integration import get_db_client

# Holds clients across tests on purpose, to show what happens to a stale client.
# (Real code must never do this; see README "Writing an isolated test".)
_KEPT: list[tuple[str, DatabaseClient]] = []


def test_store_a_client_for_later(request: pytest.FixtureRequest) -> None:
    """Keeps its client past the end of the test, as a buggy module global would."""
    db = get_db_client()
    db.execute("CREATE TABLE temp_test (id INTEGER, data TEXT)")
    db.execute("INSERT INTO temp_test (id, data) VALUES (?, ?)", (1, "test1"))
    result = db.execute("SELECT * FROM temp_test WHERE id = 1")
    assert len(result.rows) == 1
    assert result.rows[0]["data"] == "test1"
    _KEPT.append((request.node.nodeid, db))


def test_kept_clients_from_earlier_tests_are_closed() -> None:
    """Whatever ran before, a kept client is closed and fails with a clear message."""
    db = get_db_client()
    assert db.execute("SELECT 1 AS test").rows[0]["test"] == 1
    for nodeid, stale in _KEPT:
        assert stale is not db
        assert stale.closed
        with pytest.raises(ClientClosedError) as excinfo:
            stale.execute("SELECT 1")
        assert str(excinfo.value).startswith("CLIENT_CLOSED:")
        assert nodeid.split("::")[-1] in str(excinfo.value)


def test_fresh_client_does_not_see_other_tests_tables() -> None:
    db = get_db_client()
    tables = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'temp_test'"
    )
    assert len(tables.rows) == 0


def test_stale_client_after_scope_end_raises_client_closed(
    isolation_manager: TestIsolationManager,
) -> None:
    """The sequence that used to produce CLIENT_CLOSED, inside one test."""
    scope_id = isolation_manager.create_scope("first test")
    stale = isolation_manager.get_scoped_database_client(scope_id)
    stale.execute("CREATE TABLE temp_test (id INTEGER)")
    assert isolation_manager.destroy_scope(scope_id) is True

    with pytest.raises(ClientClosedError) as excinfo:
        stale.execute("SELECT 1")
    message = str(excinfo.value)
    assert message.startswith("CLIENT_CLOSED:")
    assert scope_id in message
    assert "first test" in message
    assert "closed at" in message
    assert "test_client_closed_prevention.py:" in message  # the destroy_scope call above
    assert "ended" in message
    assert not isinstance(excinfo.value, sqlite3.ProgrammingError)

    # The next scope is unaffected and starts empty.
    next_id = isolation_manager.create_scope("second test")
    try:
        fresh = isolation_manager.get_scoped_database_client(next_id)
        assert fresh is not stale
        assert fresh.execute("SELECT 1 AS ok").rows[0]["ok"] == 1
        assert "temp_test" not in table_names(fresh)
    finally:
        isolation_manager.destroy_scope(next_id)


@pytest.mark.sqlite3_only  # client.db is sqlite-utils on a sqlite3 connection
def test_stale_sqlite_utils_handle_raises_client_closed(
    isolation_manager: TestIsolationManager,
) -> None:
    scope_id = isolation_manager.create_scope("kept sqlite_utils handle")
    handle = isolation_manager.get_scoped_database_client(scope_id).db
    isolation_manager.destroy_scope(scope_id)
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
        handle.table("users").insert({"email": "late@example.com", "name": "Late"})


def test_many_operations_on_one_client(db: DatabaseClient) -> None:
    """Stress one test's client: 50 queries in a row, all answered."""
    results = [db.execute("SELECT ? AS iteration", (i,)) for i in range(50)]
    assert [r.rows[0]["iteration"] for r in results] == list(range(50))


async def test_many_concurrent_operations(async_db: AsyncDatabaseClient) -> None:
    results = await asyncio.gather(
        *(async_db.execute("SELECT ? AS iteration", (i,)) for i in range(50))
    )
    assert [r.rows[0]["iteration"] for r in results] == list(range(50))


def test_client_usable_after_transaction_rollback(db: DatabaseClient) -> None:
    tx = db.transaction()
    tx.execute("CREATE TABLE rollback_test (id INTEGER)")
    tx.execute("INSERT INTO rollback_test (id) VALUES (1)")
    tx.rollback()
    assert db.execute("SELECT 1 AS post_rollback").rows[0]["post_rollback"] == 1
    assert "rollback_test" not in table_names(db)


def test_repeated_get_db_client_returns_the_same_client(db: DatabaseClient) -> None:
    assert get_db_client() is db
    assert get_db_client() is get_db_client()


@pytest.mark.sqlite3_only  # client.db is sqlite-utils on a sqlite3 connection
def test_stale_half_read_rows_raise_client_closed(
    isolation_manager: TestIsolationManager,
) -> None:
    """A sqlite-utils generator read halfway before its scope ended: the next row says why."""
    scope_id = isolation_manager.create_scope("half-read rows")
    client = isolation_manager.get_scoped_database_client(scope_id)
    client.executescript("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('a'), ('b');")
    rows = client.db["notes"].rows
    assert next(rows)["body"] == "a"
    cursor = client.db.execute("SELECT body FROM notes")
    isolation_manager.destroy_scope(scope_id)
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:.*half-read rows"):
        next(rows)
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:.*half-read rows"):
        cursor.fetchall()
