"""Many scopes created, used and destroyed in one test leave nothing behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lib.database import DatabaseClient
from lib.isolation_manager import TestIsolationManager
from tests.setup_integration import get_isolation_stats


def _counts(stats: dict[str, Any]) -> tuple[int, int]:
    return stats["active_scope_count"], stats["active_connection_count"]


def test_fifty_scopes_created_and_destroyed(isolation_manager: TestIsolationManager) -> None:
    baseline = _counts(get_isolation_stats())
    created_before = isolation_manager.performance_metrics["scopes_created"]
    scopes: list[tuple[str, DatabaseClient, Path | None]] = []
    try:
        for i in range(50):
            scope_id = isolation_manager.create_scope(f"memory-test-{i}")
            client = isolation_manager.get_scoped_database_client(scope_id)
            client.execute("INSERT INTO logs (level, message) VALUES ('info', ?)", (f"scope {i}",))
            assert client.execute("SELECT ? AS iteration", (i,)).rows[0]["iteration"] == i
            scopes.append(
                (scope_id, client, isolation_manager.active_scopes[scope_id].database_path)
            )
        assert len({scope_id for scope_id, _, _ in scopes}) == 50
        assert len(isolation_manager.active_scopes) == baseline[0] + 50
        # Every scope sees only its own row.
        for _, client, _ in scopes:
            assert client.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 1
    finally:
        for scope_id, _, _ in scopes:
            isolation_manager.destroy_scope(scope_id)

    assert _counts(get_isolation_stats()) == baseline
    assert isolation_manager.performance_metrics["scopes_created"] == created_before + 50
    for _, client, path in scopes:
        assert client.closed
        assert client not in isolation_manager.global_connection_registry
        if path is not None:
            assert not path.exists()


@pytest.mark.sqlite3_only  # in-memory copies need sqlite3's backup
def test_memory_scopes_under_pressure(isolation_manager: TestIsolationManager) -> None:
    baseline = _counts(get_isolation_stats())
    ids = [isolation_manager.create_scope(f"mem-{i}", strategy="memory") for i in range(50)]
    try:
        for i, scope_id in enumerate(ids):
            client = isolation_manager.get_scoped_database_client(scope_id)
            client.execute("INSERT INTO logs (level, message) VALUES ('info', ?)", (str(i),))
            assert client.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 1
    finally:
        for scope_id in ids:
            isolation_manager.destroy_scope(scope_id)
    assert _counts(get_isolation_stats()) == baseline


def test_many_requests_never_see_client_closed(db: DatabaseClient) -> None:
    """More requests than any pool would allow: all succeed, none sees a closed client."""
    failures: list[str] = []
    for i in range(15):
        try:
            assert db.execute("SELECT ? AS conn_id", (i,)).rows[0]["conn_id"] == i
        except Exception as exc:  # collected: the assertion below reports them
            failures.append(str(exc))
    assert failures == []
