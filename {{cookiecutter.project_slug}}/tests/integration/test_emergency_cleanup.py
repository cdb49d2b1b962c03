"""Emergency cleanup in the middle of a test: everything closed, nothing falls back.

After it, the test has no database for the rest of its body: asking for one is a clear
error, never a connection to the developer's own database.
"""

from __future__ import annotations

import os

import pytest

from lib.database import (
    ClientClosedError,
    DatabaseAccessBlockedError,
    DatabaseClient,
    get_database_client,
    local_database_file,
)
from lib.isolation_manager import IsolationError, TestIsolationManager
from tests.setup_integration import get_db_client, get_isolation_stats


def test_emergency_cleanup_closes_every_scope(isolation_manager: TestIsolationManager) -> None:
    own = get_db_client()
    first = isolation_manager.create_scope("emergency-test-1")
    second = isolation_manager.create_scope("emergency-test-2")
    client1 = isolation_manager.get_scoped_database_client(first)
    client2 = isolation_manager.get_scoped_database_client(second)
    paths = [local_database_file(client.path) for client in (own, client1, client2)]
    assert len(isolation_manager.active_scopes) >= 3
    emergencies = isolation_manager.performance_metrics["emergency_cleanups"]

    isolation_manager.emergency_cleanup()

    assert len(isolation_manager.active_scopes) == 0
    assert len(isolation_manager.global_connection_registry) == 0
    assert isolation_manager.performance_metrics["emergency_cleanups"] == emergencies + 1
    for client in (own, client1, client2):
        assert client.closed
        with pytest.raises(ClientClosedError):
            client.execute("SELECT 1")
    for path in paths:
        assert path is None or not path.exists()
    stats = get_isolation_stats()
    assert stats["active_scope_count"] == 0
    assert stats["active_connection_count"] == 0


def test_no_database_for_the_rest_of_the_test(
    db: DatabaseClient, isolation_manager: TestIsolationManager
) -> None:
    db.execute("INSERT INTO users (email, name) VALUES ('before@example.com', 'Before')")
    isolation_manager.emergency_cleanup()

    with pytest.raises(IsolationError, match="no database any more"):
        get_db_client()
    with pytest.raises(DatabaseAccessBlockedError, match="no database"):
        get_database_client()
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
        db.execute("SELECT 1")
    # DATABASE_URL no longer names a file: nothing can open the developer's database.
    assert os.environ["DATABASE_URL"] == ":memory:"


def test_manager_is_usable_after_emergency_cleanup(
    isolation_manager: TestIsolationManager,
) -> None:
    isolation_manager.emergency_cleanup()
    scope_id = isolation_manager.create_scope("post-emergency-test")
    try:
        client = isolation_manager.get_scoped_database_client(scope_id)
        assert client.execute("SELECT 1 AS recovered").rows[0]["recovered"] == 1
        assert client.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
    finally:
        assert isolation_manager.destroy_scope(scope_id)
    assert scope_id not in isolation_manager.active_scopes


def test_emergency_cleanup_of_one_scope_leaves_the_test_its_database(
    db: DatabaseClient, isolation_manager: TestIsolationManager
) -> None:
    other = isolation_manager.create_scope("only this one")
    other_client = isolation_manager.get_scoped_database_client(other)
    assert isolation_manager.emergency_cleanup(other)
    assert other_client.closed
    assert other not in isolation_manager.active_scopes
    assert not db.closed
    assert get_db_client() is db
    assert db.execute("SELECT 1").rows[0][0] == 1


def test_next_test_after_an_emergency_gets_a_fresh_database(db: DatabaseClient) -> None:
    """Whatever order the tests above ran in, this test has its own working database."""
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
    assert get_database_client().execute("SELECT 1").rows[0][0] == 1
