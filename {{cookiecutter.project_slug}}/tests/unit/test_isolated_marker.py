"""Outside tests/integration/ a test has no database unless it is marked isolated."""

from __future__ import annotations

import os

import pytest

from lib.database import DatabaseAccessBlockedError, DatabaseClient, get_database_client
from lib.isolation_manager import IsolationError
from tests.setup_integration import get_db_client, get_isolation_stats


def test_unit_test_has_no_database() -> None:
    with pytest.raises(IsolationError, match="no test scope is current"):
        get_db_client()
    only_isolated = (
        r"only available inside an isolated test: .* or is marked @pytest\.mark\.isolated"
    )
    with pytest.raises(DatabaseAccessBlockedError, match=only_isolated):
        get_database_client()
    assert get_isolation_stats()["current_test_id"] is None


def test_unit_test_environment_is_local_and_safe() -> None:
    """No remote credentials, and DATABASE_URL names no file a unit test could write."""
    assert not [name for name in os.environ if name.startswith("TURSO_")]
    assert os.environ["DATABASE_URL"] == ":memory:"


@pytest.mark.isolated
def test_marked_test_gets_its_own_database(db: DatabaseClient) -> None:
    """A table of its own, whatever the project's schema: the next test has none."""
    db.execute("CREATE TABLE marked (name TEXT)")
    db.execute("INSERT INTO marked (name) VALUES ('Marked')")
    assert get_database_client().execute("SELECT COUNT(*) FROM marked").rows[0][0] == 1
    assert get_isolation_stats()["current_test_id"] is not None


@pytest.mark.isolated
async def test_marked_async_test_gets_its_own_database(db: DatabaseClient) -> None:
    tables = db.execute("SELECT name FROM sqlite_schema WHERE name = 'marked'")
    assert tables.rows == []
