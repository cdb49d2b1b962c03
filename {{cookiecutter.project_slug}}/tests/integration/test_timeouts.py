"""Slow and stuck operations end within a bounded wait and leave the database usable."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from lib.database import CONNECTION_PRAGMAS, ClientClosedError, DatabaseClient
from lib.isolation_manager import TestIsolationManager

# Never finishes on its own: only an interrupt stops it.
ENDLESS_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT COUNT(*) FROM c WHERE running()"
)


def _run_in_thread(
    client: DatabaseClient, sql: str
) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``sql`` in a thread, and return once it runs (it calls ``running()``): an
    interrupt sent before a statement starts would be lost, and the query never end."""
    errors: list[BaseException] = []
    started = threading.Event()

    def running() -> int:
        started.set()
        return 1

    client.db.register_function(running, replace=True)

    def run() -> None:
        try:
            client.execute(sql)
        except BaseException as exc:  # asserted on by the caller
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(timeout=10), "the query did not start"
    return thread, errors


@pytest.mark.sqlite3_only  # libsql connections cannot be interrupted
def test_long_query_interrupted_after_a_bounded_wait(db: DatabaseClient) -> None:
    conn = db.db.conn  # taken before the query holds the client
    thread, errors = _run_in_thread(db, ENDLESS_QUERY)
    thread.join(timeout=0.2)
    assert thread.is_alive(), "the endless query should still be running"
    conn.interrupt()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], sqlite3.OperationalError)
    assert "interrupt" in str(errors[0])
    # The next operations on the same client work.
    db.execute("INSERT INTO logs (level, message) VALUES ('info', 'after timeout')")
    assert db.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 1


@pytest.mark.sqlite3_only  # libsql connections cannot be interrupted
def test_scope_end_stops_a_query_still_running(isolation_manager: TestIsolationManager) -> None:
    """A hung statement does not hang cleanup: the scope's close interrupts it."""
    scope_id = isolation_manager.create_scope("hung query")
    client = isolation_manager.get_scoped_database_client(scope_id)
    path = isolation_manager.active_scopes[scope_id].database_path
    thread, errors = _run_in_thread(client, ENDLESS_QUERY)
    thread.join(timeout=0.1)
    assert thread.is_alive()

    started = time.monotonic()
    isolation_manager.destroy_scope(scope_id)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    assert scope_id not in isolation_manager.active_scopes
    assert client.closed
    assert len(errors) == 1
    assert isinstance(errors[0], ClientClosedError)  # not sqlite3's bare 'interrupted'
    assert str(errors[0]).startswith("CLIENT_CLOSED:")
    if path is not None:
        assert not path.exists()


def test_locked_database_fails_after_busy_timeout(db: DatabaseClient) -> None:
    """A writer blocked by another connection's transaction waits busy_timeout, then fails."""
    # The same engine as the test's client: two SQLite libraries in one process do not
    # see each other's locks.
    impatient = DatabaseClient(
        db.path,
        owner="second writer",
        pragmas={**CONNECTION_PRAGMAS, "busy_timeout": "100"},
        engine=db.engine,
    )
    try:
        tx = db.transaction()
        tx.execute("INSERT INTO logs (level, message) VALUES ('info', 'holding the lock')")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            impatient.execute("INSERT INTO logs (level, message) VALUES ('info', 'blocked')")
        waited = time.monotonic() - started
        assert 0.05 <= waited < 5
        tx.commit()
        impatient.execute("INSERT INTO logs (level, message) VALUES ('info', 'now free')")
        assert db.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 2
    finally:
        impatient.close()


def test_open_transaction_does_not_block_another_scope(
    db: DatabaseClient, isolation_manager: TestIsolationManager
) -> None:
    """Scopes have separate databases: a lock in one is invisible to the other."""
    tx = db.transaction()
    tx.execute("CREATE TABLE lock_test (id INTEGER)")
    tx.execute("INSERT INTO lock_test (id) VALUES (1)")
    other = isolation_manager.create_scope("other scope")
    try:
        client = isolation_manager.get_scoped_database_client(other)
        client.execute("INSERT INTO logs (level, message) VALUES ('info', 'unlocked')")
        assert client.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 1
    finally:
        isolation_manager.destroy_scope(other)
    tx.commit()
    assert db.execute("SELECT COUNT(*) FROM lock_test").rows[0][0] == 1
