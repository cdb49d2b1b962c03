"""The libsql engine on real local files: it behaves like the sqlite3 one, and a closed
libsql client raises ClientClosedError, never libsql's panic."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from lib.connection_tracking import record_connections, refuse_files
from lib.database import (
    ClientClosedError,
    DatabaseAccessBlockedError,
    DatabaseClient,
    DatabaseConfigError,
)
from lib.isolation_manager import TestIsolationManager

libsql = pytest.importorskip("libsql")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[DatabaseClient]:
    client = DatabaseClient(str(tmp_path / "libsql.db"), owner="libsql unit test", engine="libsql")
    client.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    yield client
    client.close()


def test_rows_read_like_sqlite3_rows(client: DatabaseClient) -> None:
    inserted = client.execute("INSERT INTO items (name) VALUES (?)", ["pen"])
    assert inserted.rows_affected == 1
    assert inserted.last_insert_rowid == 1
    result = client.execute("SELECT id, name FROM items")
    assert result.columns == ("id", "name")
    row = result.rows[0]
    assert (row["name"], row[0], dict(row)) == ("pen", 1, {"id": 1, "name": "pen"})


def test_errors_are_sqlite3_errors(client: DatabaseClient) -> None:
    client.execute("INSERT INTO items (name) VALUES ('pen')")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        client.execute("INSERT INTO items (name) VALUES ('pen')")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        client.execute("SELECT * FROM nope")


def test_transactions_and_batches_are_atomic(client: DatabaseClient) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        client.batch(
            [
                ("INSERT INTO items (name) VALUES (?)", ["a"]),
                "INSERT INTO items (name) VALUES ('a')",
            ]
        )
    with client.transaction() as tx:
        tx.execute("INSERT INTO items (name) VALUES ('b')")
    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('c')")
    tx.rollback()
    assert [row["name"] for row in client.execute("SELECT name FROM items").rows] == ["b"]


def test_closed_client_raises_client_closed_not_a_panic(client: DatabaseClient) -> None:
    client.close()
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED: .*libsql unit test"):
        client.execute("SELECT 1")
    assert client.close() is True  # idempotent


def test_what_libsql_lacks_is_refused_clearly(client: DatabaseClient, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="named parameters"):
        client.execute("SELECT :x", {"x": 1})
    with pytest.raises(NotImplementedError, match="sqlite3 engine"):
        _ = client.db
    with (
        closing(sqlite3.connect(":memory:")) as source,
        pytest.raises(DatabaseConfigError, match="file strategy"),
    ):
        client.restore_from(source)
    manager = TestIsolationManager(data_dir=tmp_path / "data", engine="libsql")
    try:
        with pytest.raises(ValueError, match="memory strategy needs the sqlite3 engine"):
            manager.create_scope("memory on libsql", strategy="memory")
    finally:
        manager.shutdown()


def test_scopes_on_libsql_are_isolated(tmp_path: Path) -> None:
    manager = TestIsolationManager(data_dir=tmp_path / "data", engine="libsql")
    try:
        first = manager.get_scoped_database_client(manager.create_scope("first"))
        second = manager.get_scoped_database_client(manager.create_scope("second"))
        assert (first.engine, second.engine) == ("libsql", "libsql")
        first.execute("INSERT INTO logs (level, message) VALUES ('info', 'only in first')")
        assert second.execute("SELECT count(*) FROM logs").rows[0][0] == 0
    finally:
        manager.shutdown()


def test_an_open_libsql_connection_is_a_leak_with_its_line(tmp_path: Path) -> None:
    recording = record_connections()
    leaked = libsql.connect(str(tmp_path / "leak.db"))  # LEAK
    closed = libsql.connect(str(tmp_path / "closed.db"))
    closed.close()
    still_open = recording.stop()
    assert [tracked.location.rsplit(":", 1)[1] for tracked in still_open] == [
        str(_line_of("# LEAK"))
    ]
    leaked.close()


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.endswith(marker))


def test_the_developers_database_is_refused_to_libsql_too(tmp_path: Path) -> None:
    """As to sqlite3 during a test session (see tests/setup_integration.py)."""
    own, other = tmp_path / "app.db", tmp_path / "other.db"
    refuse_files([str(own)], "it is the developer's")
    try:
        with pytest.raises(DatabaseAccessBlockedError, match="it is the developer's"):
            DatabaseClient(str(own), owner="libsql unit test", engine="libsql")
        DatabaseClient(str(other), owner="libsql unit test", engine="libsql").close()
    finally:
        refuse_files([], "")
    assert not own.exists()
