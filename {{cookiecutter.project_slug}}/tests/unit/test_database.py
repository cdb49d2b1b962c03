"""The database service and client, exercised on real SQLite files (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lib import async_database, database, libsql_engine
from lib.client_lock import ClientLock, Reservation, RolledBackError, acting_for, run_for
from lib.database import (
    AsyncDatabaseClient,
    AsyncTransaction,
    ClientClosedError,
    DatabaseAccessBlockedError,
    DatabaseClient,
    DatabaseConfigError,
    DatabaseService,
    DatabaseShuttingDownError,
    Transaction,
    get_database_client,
)
from tests.unit.holding import held_in_another_thread, new_database_held_for

SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    qty INTEGER NOT NULL DEFAULT 0 CHECK (qty >= 0)
);
CREATE TABLE parents (id INTEGER PRIMARY KEY);
CREATE TABLE children (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER NOT NULL REFERENCES parents(id)
);
"""


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "unit.db"


@pytest.fixture
def client(db_path: Path) -> Iterator[DatabaseClient]:
    """A client on a fresh file with a small schema; always closed afterwards."""
    c = schema_client(db_path, "unit-test")
    yield c
    c.close()


def schema_client(path: Path, owner: str) -> DatabaseClient:
    """A client on ``path`` holding the small schema, owned by ``owner`` (its messages
    name it)."""
    client = DatabaseClient(str(path), owner=owner)
    client.executescript(SCHEMA)
    return client


def count(client: DatabaseClient, table: str = "items") -> int:
    value = client.execute(f"SELECT COUNT(*) AS n FROM {table}").rows[0]["n"]
    assert isinstance(value, int)
    return value


# --- URIs and read-only databases --------------------------------------------------------


def test_client_opens_sqlite_uris(client: DatabaseClient, db_path: Path) -> None:
    """``file:...?mode=ro`` is opened as a URI: read-only, not a file of that name."""
    client.execute("INSERT INTO items (name) VALUES ('kept')")
    reader = DatabaseClient(f"file:{db_path}?mode=ro", owner="reader")
    try:
        assert reader.execute("SELECT name FROM items").rows[0][0] == "kept"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO items (name) VALUES ('refused')")
    finally:
        reader.close()
    assert not Path(f"file:{db_path}?mode=ro").exists()


def _rollback_journal_database(path: Path) -> Path:
    """A database in the default (rollback journal) mode, as another tool would leave it."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA + "INSERT INTO items (name) VALUES ('kept');")
    return path


@pytest.mark.parametrize(
    "query", ["mode=ro", "immutable=1", "cache=private&mode=ro", "immutable=yes"]
)
def test_read_only_urls_open_a_database_that_is_not_in_wal_mode(tmp_path: Path, query: str) -> None:
    """Switching to WAL writes to the file: a read-only connection keeps its journal mode
    and still gets the settings that write nothing."""
    path = _rollback_journal_database(tmp_path / "shipped.db")
    reader = DatabaseClient(f"file:{path}?{query}", owner="reader")
    try:
        assert reader.execute("SELECT name FROM items").rows[0][0] == "kept"
        assert reader.execute("PRAGMA journal_mode").rows[0][0] == "delete"
        assert reader.execute("PRAGMA foreign_keys").rows[0][0] == 1
        assert reader.execute("PRAGMA busy_timeout").rows[0][0] == 5000
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO items (name) VALUES ('refused')")
    finally:
        reader.close()


def test_a_read_write_url_still_switches_to_wal(tmp_path: Path) -> None:
    path = _rollback_journal_database(tmp_path / "writable.db")
    writer = DatabaseClient(f"file:{path}?mode=rw", owner="writer")
    try:
        assert writer.execute("PRAGMA journal_mode").rows[0][0] == "wal"
    finally:
        writer.close()


def test_the_service_opens_a_read_only_database_url(tmp_path: Path) -> None:
    """``DATABASE_URL=file:/path/db.sqlite?mode=ro``, as the README advertises."""
    path = _rollback_journal_database(tmp_path / "readonly.sqlite")
    service = DatabaseService(f"file:{path}?mode=ro")
    try:
        assert service.get_client().execute("SELECT COUNT(*) FROM items").rows[0][0] == 1
    finally:
        service.close()


def test_restore_from_fills_a_named_in_memory_database(
    client: DatabaseClient, tmp_path: Path
) -> None:
    """Every connection to the name sees the copy: what ``deserialize`` cannot do. A WAL
    source (``client``'s) is refused: its copy could not be opened in memory."""
    url = f"file:/restore-{uuid.uuid4().hex}?vfs=memdb"
    first = DatabaseClient(url, owner="first")
    second = DatabaseClient(url, owner="second")
    try:
        with (
            contextlib.closing(sqlite3.connect(str(client.path))) as wal,
            pytest.raises(DatabaseConfigError, match="WAL"),
        ):
            first.restore_from(wal)
        with contextlib.closing(sqlite3.connect(tmp_path / "rollback.db")) as source:
            source.executescript(SCHEMA + "INSERT INTO items (name) VALUES ('copied');")
            first.restore_from(source)
        assert second.execute("SELECT name FROM items").rows[0][0] == "copied"
    finally:
        first.close()
        second.close()


def test_tests_never_connect_to_a_remote_database() -> None:
    """The test session forbids remote databases before any connection is attempted."""
    with pytest.raises(DatabaseAccessBlockedError, match="remote database"):
        DatabaseService(url="libsql://example.turso.io").get_client()


def test_database_config_error_is_a_value_error() -> None:
    assert issubclass(DatabaseConfigError, ValueError)
    assert issubclass(ClientClosedError, RuntimeError)


# --- connection setup --------------------------------------------------------------------


def test_pragmas_are_applied(client: DatabaseClient) -> None:
    """WAL, foreign keys and a busy timeout are what make concurrent tests safe."""
    assert client.execute("PRAGMA journal_mode").rows[0][0] == "wal"
    assert client.execute("PRAGMA foreign_keys").rows[0][0] == 1
    assert client.execute("PRAGMA busy_timeout").rows[0][0] > 0


def test_foreign_keys_are_enforced(client: DatabaseClient) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        client.execute("INSERT INTO children (parent_id) VALUES (?)", (999,))


def test_client_creates_the_file(db_path: Path, client: DatabaseClient) -> None:
    assert db_path.exists()


def _not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("these are notes, not an SQLite database\n" * 100)
    return path


def _open_failure(path: str, **options: Any) -> DatabaseConfigError:
    """The error opening ``path`` raises; it must keep sqlite3's error as its cause."""
    with pytest.raises(DatabaseConfigError) as excinfo:
        DatabaseClient(path, owner="opening", **options)
    assert isinstance(excinfo.value.__cause__, sqlite3.Error)
    return excinfo.value


@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path, read_only: bool) -> None:
    """Found at open (read-only too), not at the first query, and named with the fix."""
    path = str(_not_a_database(tmp_path))
    error = _open_failure(f"file:{path}?mode=ro" if read_only else path)
    assert path in str(error)
    assert "not an SQLite database" in str(error)
    assert "move this file away" in str(error)
    assert isinstance(error.__cause__, sqlite3.DatabaseError)


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    error = _open_failure(str(tmp_path))
    assert repr(str(tmp_path)) in str(error)
    assert "it is a directory" in str(error)


def test_a_file_url_whose_directory_is_missing_is_a_config_error(tmp_path: Path) -> None:
    url = f"file:{tmp_path}/missing/app.db?cache=private"
    error = _open_failure(url, source="DATABASE_URL")
    assert repr(url) in str(error)
    assert "(from DATABASE_URL)" in str(error)
    assert f"its directory {str(tmp_path / 'missing')!r} does not exist" in str(error)
    assert "point DATABASE_URL elsewhere" in str(error)


def test_a_missing_file_opened_read_only_is_a_config_error(tmp_path: Path) -> None:
    error = _open_failure(f"file:{tmp_path}/absent.db?mode=ro")
    assert "a read-only URL never creates it" in str(error)


def test_the_service_names_database_url_when_it_cannot_open_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _not_a_database(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"file:{path}")
    service = DatabaseService()
    try:
        with pytest.raises(DatabaseConfigError, match="DATABASE_URL") as excinfo:
            service.get_client()
    finally:
        service.close()
    assert str(path) in str(excinfo.value)
    assert "point DATABASE_URL at a database file" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, sqlite3.DatabaseError)


def test_the_service_explains_a_directory_it_cannot_create(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the directory should be")
    service = DatabaseService(str(tmp_path / "taken" / "app.db"))
    try:
        with pytest.raises(DatabaseConfigError, match=r"DatabaseService\(url\)") as excinfo:
            service.get_client()
    finally:
        service.close()
    assert "cannot create the directory" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, OSError)


def test_a_url_given_to_the_service_is_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a replica of TURSO_DATABASE_URL, and its errors name it, not DATABASE_URL."""
    monkeypatch.setenv("TURSO_DATABASE_URL", "libsql://production.turso.io")
    service = DatabaseService(str(tmp_path / "local.db"))
    try:
        client = service.get_client()
        assert (client.engine, client.path) == ("sqlite3", str(tmp_path / "local.db"))
    finally:
        service.close()
    with pytest.raises(DatabaseConfigError, match=r"^DatabaseService\(url\)=postgres://"):
        DatabaseService("postgres://db.example/app").get_client()


def test_a_locked_database_at_open_stays_a_sqlite3_error(tmp_path: Path) -> None:
    """Contention is another connection's doing, not a setting to fix."""
    path = _rollback_journal_database(tmp_path / "locked.db")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked") as excinfo:
            DatabaseClient(str(path), pragmas={"busy_timeout": "10", "journal_mode": "WAL"})
        holder.execute("ROLLBACK")
    assert not isinstance(excinfo.value, DatabaseConfigError)


# --- ResultSet ---------------------------------------------------------------------------


def test_result_set_rows_support_name_index_and_dict(client: DatabaseClient) -> None:
    client.execute("INSERT INTO items (name, qty) VALUES (?, ?)", ("apple", 3))
    result = client.execute("SELECT id, name, qty FROM items")
    assert tuple(result.columns) == ("id", "name", "qty")
    assert len(result.rows) == 1
    row = result.rows[0]
    assert row["name"] == "apple"
    assert row[1] == "apple"
    assert row[2] == 3
    assert dict(row) == {"id": 1, "name": "apple", "qty": 3}


def test_result_set_rows_affected_and_last_insert_rowid(client: DatabaseClient) -> None:
    first = client.execute("INSERT INTO items (name) VALUES ('a')")
    second = client.execute("INSERT INTO items (name) VALUES ('b')")
    assert first.rows_affected == 1
    assert first.last_insert_rowid == 1
    assert second.last_insert_rowid == 2
    updated = client.execute("UPDATE items SET qty = qty + 1")
    assert updated.rows_affected == 2
    deleted = client.execute("DELETE FROM items WHERE name = 'a'")
    assert deleted.rows_affected == 1


def test_rows_affected_counts_rows_changed_by_returning_statements(
    client: DatabaseClient,
) -> None:
    inserted = client.execute("INSERT INTO items (name) VALUES ('a'), ('b'), ('c') RETURNING id")
    assert (inserted.rows_affected, len(inserted.rows)) == (3, 3)
    updated = client.execute("UPDATE items SET qty = 5 WHERE name != 'a' RETURNING id, qty")
    assert updated.rows_affected == 2
    deleted = client.execute("DELETE FROM items WHERE name = 'c' RETURNING *")
    assert deleted.rows_affected == 1
    assert client.execute("SELECT * FROM items").rows_affected == 0
    assert client.execute("PRAGMA journal_mode").rows_affected == 0


@pytest.mark.parametrize(
    ("sql", "rows", "expected"),
    [
        ("CREATE TABLE t (a)", [], 0),
        ("PRAGMA user_version = 3", [], 0),
        ("VACUUM", [], 0),
        ("-- note\nUPDATE t SET a = 1", [], 3),
        ("DELETE FROM t RETURNING a", [(1,), (2,)], 2),
        ("SELECT a FROM t", [(1,)], 0),
    ],
)
def test_libsql_rows_affected_counts_only_what_the_statement_changed(
    sql: str, rows: list[Any], expected: int
) -> None:
    """libsql repeats the previous statement's count after one that changes no rows (here
    3); the client reports what sqlite3 would."""
    columns = ("a",) if rows or sql.startswith("SELECT") else ()
    assert libsql_engine.rows_affected(sql, 3, rows, columns) == expected


def test_select_on_empty_table_has_columns_and_no_rows(client: DatabaseClient) -> None:
    result = client.execute("SELECT name FROM items")
    assert len(result.rows) == 0
    assert list(result.columns) == ["name"]


def test_args_as_sequence_and_mapping(client: DatabaseClient) -> None:
    client.execute("INSERT INTO items (name, qty) VALUES (?, ?)", ["seq", 1])
    client.execute("INSERT INTO items (name, qty) VALUES (?, ?)", ("tup", 2))
    client.execute("INSERT INTO items (name, qty) VALUES (:name, :qty)", {"name": "map", "qty": 3})
    rows = client.execute("SELECT name, qty FROM items ORDER BY qty").rows
    assert [(r["name"], r["qty"]) for r in rows] == [("seq", 1), ("tup", 2), ("map", 3)]


# --- batch -------------------------------------------------------------------------------


def test_batch_accepts_the_three_statement_forms(client: DatabaseClient) -> None:
    results = client.batch(
        [
            "INSERT INTO items (name) VALUES ('plain')",
            ("INSERT INTO items (name, qty) VALUES (?, ?)", ("tuple", 2)),
            {"sql": "INSERT INTO items (name, qty) VALUES (:n, :q)", "args": {"n": "dict", "q": 3}},
            "SELECT name FROM items ORDER BY id",
        ]
    )
    assert len(results) == 4
    assert [r.rows_affected for r in results[:3]] == [1, 1, 1]
    assert [row["name"] for row in results[3].rows] == ["plain", "tuple", "dict"]


@pytest.mark.parametrize(
    "malformed",
    [
        ("INSERT INTO items (name) VALUES (?)", "a", "b"),
        {"query": "SELECT 1"},
        {"sql": "INSERT INTO items (name) VALUES (?)", "arg": ["a"]},
        ("SELECT 1",),
        ("INSERT INTO items (name) VALUES (?)", "a"),
        42,
    ],
    ids=["three items", "no sql key", "misspelt args key", "one item", "string args", "a number"],
)
def test_a_malformed_batch_statement_names_the_forms_and_runs_nothing(
    client: DatabaseClient, malformed: object
) -> None:
    statements = ["INSERT INTO items (name) VALUES ('first')", malformed]
    with pytest.raises(TypeError, match=r"batch statement 2 is .*: write each statement as"):
        client.batch(statements)  # type: ignore[arg-type]
    assert count(client) == 0


def test_batch_is_atomic(client: DatabaseClient) -> None:
    """A failing statement undoes the whole batch: all or nothing."""
    with pytest.raises(sqlite3.IntegrityError):
        client.batch(
            [
                ("INSERT INTO items (name) VALUES (?)", ("one",)),
                ("INSERT INTO items (name) VALUES (?)", ("two",)),
                ("INSERT INTO items (name) VALUES (?)", ("one",)),  # UNIQUE violation
            ]
        )
    assert count(client) == 0
    # The client is still usable after the failed batch.
    client.batch([("INSERT INTO items (name) VALUES (?)", ("three",))])
    assert count(client) == 1


# --- transactions ------------------------------------------------------------------------


def test_transaction_commit(client: DatabaseClient) -> None:
    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('kept')")
    tx.commit()
    assert count(client) == 1


def test_transaction_rollback(client: DatabaseClient) -> None:
    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('dropped')")
    assert tx.execute("SELECT COUNT(*) FROM items").rows[0][0] == 1
    tx.rollback()
    assert count(client) == 0


def test_transaction_context_manager_commits_on_success(client: DatabaseClient) -> None:
    with client.transaction() as tx:
        tx.execute("INSERT INTO items (name) VALUES ('a')")
        tx.execute("INSERT INTO items (name) VALUES ('b')")
    assert count(client) == 2


class Boom(Exception):
    """Raised on purpose inside a transaction."""


def _insert_then_fail(client: DatabaseClient, name: str) -> None:
    with client.transaction() as tx:
        tx.execute("INSERT INTO items (name) VALUES (?)", (name,))
        raise Boom(name)


def test_transaction_context_manager_rolls_back_on_exception(client: DatabaseClient) -> None:
    with pytest.raises(Boom):
        _insert_then_fail(client, "a")
    assert count(client) == 0


def test_execute_inside_transaction_joins_it(client: DatabaseClient) -> None:
    """Code that calls db.execute while a transaction is open is part of it."""
    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('via-tx')")
    client.execute("INSERT INTO items (name) VALUES ('via-client')")
    tx.rollback()
    assert count(client) == 0


def test_transaction_is_isolated_from_other_connections(
    db_path: Path, client: DatabaseClient
) -> None:
    other = DatabaseClient(str(db_path), owner="reader")
    try:
        with client.transaction() as tx:
            tx.execute("INSERT INTO items (name) VALUES ('pending')")
            assert count(other) == 0
        assert count(other) == 1
    finally:
        other.close()


def test_executescript(client: DatabaseClient) -> None:
    client.executescript(
        """
        CREATE TABLE notes (body TEXT);
        INSERT INTO notes VALUES ('x');
        INSERT INTO notes VALUES ('y');
        """
    )
    assert count(client, "notes") == 2


def test_sqlite_utils_view_shares_the_connection(client: DatabaseClient) -> None:
    client.db.table("items").insert({"name": "via-utils", "qty": 7})
    assert client.execute("SELECT qty FROM items WHERE name = 'via-utils'").rows[0][0] == 7
    assert "items" in client.db.table_names()


# --- closing -----------------------------------------------------------------------------


def test_close_is_idempotent(db_path: Path) -> None:
    c = DatabaseClient(str(db_path))
    assert not c.closed
    c.close()
    c.close()
    assert c.closed


CLOSED_OPERATIONS: dict[str, Callable[[DatabaseClient], object]] = {
    "execute": lambda c: c.execute("SELECT 1"),
    "batch": lambda c: c.batch(["SELECT 1"]),
    "transaction": lambda c: c.transaction().execute("SELECT 1"),
    "executescript": lambda c: c.executescript("SELECT 1;"),
    "db.execute": lambda c: c.db.execute("SELECT 1"),
    "db.table_names": lambda c: c.db.table_names(),
    "db.insert": lambda c: c.db.table("items").insert({"name": "x"}),
}


@pytest.mark.parametrize("operation", sorted(CLOSED_OPERATIONS))
def test_every_operation_on_a_closed_client_raises_client_closed(
    db_path: Path, operation: str
) -> None:
    """Never a raw sqlite3.ProgrammingError: the error says what was closed, and where."""
    c = schema_client(db_path, "scope-x::test_owner")
    c.close()
    with pytest.raises(ClientClosedError) as excinfo:
        CLOSED_OPERATIONS[operation](c)
    message = str(excinfo.value)
    assert message.startswith("CLIENT_CLOSED:")
    assert "scope-x::test_owner" in message
    assert "closed at" in message
    assert "test_database.py" in message
    assert not isinstance(excinfo.value, sqlite3.ProgrammingError)


def test_sqlite_utils_view_taken_before_close_raises_client_closed(db_path: Path) -> None:
    """A `.db` handle kept across close is stale too, and says so."""
    c = schema_client(db_path, "kept-db")
    view = c.db
    c.close()
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
        view.table("items").insert({"name": "late"})
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
        view.execute("SELECT 1")
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"), view.conn:
        pass
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
        view.register_function(lambda: 1, name="one")
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
        view.conn.blobopen("items", "name", 1)


def _backup_into_memory(conn: sqlite3.Connection) -> None:
    with contextlib.closing(sqlite3.connect(":memory:")) as target:
        conn.backup(target)


KEPT_CONNECTION_USES: dict[str, Callable[[Any], object]] = {
    "iterdump": lambda conn: next(conn.iterdump()),
    "backup": lambda conn: _backup_into_memory(conn),
    "serialize": lambda conn: conn.serialize(),
    "total_changes": lambda conn: conn.total_changes,
    "commit": lambda conn: conn.commit(),
    "rollback": lambda conn: conn.rollback(),
}


@pytest.mark.parametrize("use", sorted(KEPT_CONNECTION_USES))
def test_the_connection_kept_from_a_closed_client_raises_client_closed(
    db_path: Path, use: str
) -> None:
    """``client.db.conn`` kept across close: sqlite3's own methods say CLIENT_CLOSED too."""
    c = schema_client(db_path, "kept-connection")
    conn = c.db.conn
    c.close()
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:.*kept-connection") as excinfo:
        KEPT_CONNECTION_USES[use](conn)
    assert not isinstance(excinfo.value, sqlite3.ProgrammingError)


def test_a_with_conn_block_cut_short_by_close_raises_client_closed(db_path: Path) -> None:
    """sqlite3's ``__exit__`` would replace the block's CLIENT_CLOSED with its own error."""
    c = schema_client(db_path, "closed-mid-block")
    conn = c.db.conn

    def insert_across_a_close() -> None:
        with conn:
            conn.execute("INSERT INTO items (name) VALUES ('a')")
            c.close()
            conn.execute("INSERT INTO items (name) VALUES ('b')")

    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:.*closed-mid-block"):
        insert_across_a_close()


@pytest.mark.parametrize("how", ["db.close()", "with db"])
def test_closing_the_sqlite_utils_view_is_refused_and_the_client_stays_open(
    db_path: Path, how: str
) -> None:
    """sqlite-utils closes the connection it was given, which is the client's: that would
    leave the client broken (or, in memory, its database gone with its rows)."""
    c = schema_client(db_path, "closed-through-db")

    def close_the_view() -> None:
        if how == "with db":
            with c.db as view:
                view["items"].insert({"name": "a"})
        else:
            c.db.close()

    with pytest.raises(RuntimeError, match="only the client's owner closes"):
        close_the_view()
    assert not c.closed
    assert count(c) == (1 if how == "with db" else 0)
    assert c.close() is True


KEPT_CURSOR_READS: dict[str, Callable[[Any], object]] = {
    "fetchone": lambda cursor: cursor.fetchone(),
    "fetchmany": lambda cursor: cursor.fetchmany(2),
    "fetchall": lambda cursor: cursor.fetchall(),
    "iteration": lambda cursor: next(iter(cursor)),
}


class _CountingCursor(sqlite3.Cursor):
    """A cursor class of the code under test, with a method of its own."""

    def fetchone(self) -> Any:
        self.fetched = getattr(self, "fetched", 0) + 1
        return super().fetchone()


@pytest.mark.parametrize("factory", [None, sqlite3.Cursor, _CountingCursor])
@pytest.mark.parametrize("read", sorted(KEPT_CURSOR_READS))
def test_a_cursor_taken_before_close_raises_client_closed(
    db_path: Path, read: str, factory: type[sqlite3.Cursor] | None
) -> None:
    """A half-read cursor kept across close fails with the owner's name, not sqlite3's,
    also one made by a cursor class of the caller's, whose own methods still run."""
    c = schema_client(db_path, "kept-cursor")
    c.batch([("INSERT INTO items (name) VALUES (?)", (f"i{i}",)) for i in range(5)])
    cursor = c.db.conn.cursor(factory).execute("SELECT name FROM items")
    assert isinstance(cursor, factory or sqlite3.Cursor)
    assert cursor.fetchone() is not None
    c.close()
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:.*kept-cursor") as excinfo:
        KEPT_CURSOR_READS[read](cursor)
    assert not isinstance(excinfo.value, sqlite3.ProgrammingError)
    if factory is _CountingCursor:
        assert getattr(cursor, "fetched", 0) == (2 if read == "fetchone" else 1)


def test_a_sqlite_utils_generator_read_across_close_raises_client_closed(db_path: Path) -> None:
    """``db["t"].rows`` is a generator over a cursor: the next row after close is stale."""
    c = schema_client(db_path, "kept-rows")
    c.batch([("INSERT INTO items (name) VALUES (?)", (f"i{i}",)) for i in range(5)])
    rows = c.db["items"].rows
    assert next(rows)["name"] == "i0"
    c.close()
    with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:.*kept-rows"):
        next(rows)


def test_a_query_interrupted_by_close_raises_client_closed(client: DatabaseClient) -> None:
    """Closed from another thread mid-query: the caller learns the client was closed."""
    running = threading.Event()

    def mark_running() -> int:
        running.set()
        return 1

    client.db.register_function(mark_running, name="running")
    errors: list[BaseException] = []

    def endless() -> None:
        try:
            client.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                "SELECT COUNT(*) FROM c WHERE running()"
            )
        except BaseException as error:  # asserted on below
            errors.append(error)

    thread = threading.Thread(target=endless, daemon=True)
    thread.start()
    assert running.wait(timeout=5)
    assert client.close(timeout=5) is True
    thread.join(timeout=5)
    assert len(errors) == 1
    assert isinstance(errors[0], ClientClosedError)
    assert str(errors[0]).startswith("CLIENT_CLOSED:")
    assert isinstance(errors[0].__cause__, sqlite3.OperationalError)


def test_open_transaction_on_closed_client_raises_client_closed(db_path: Path) -> None:
    c = schema_client(db_path, "tx-owner")
    tx = c.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('a')")
    c.close()
    with pytest.raises(ClientClosedError, match="tx-owner"):
        tx.execute("SELECT 1")
    # The uncommitted insert was not persisted.
    reopened = DatabaseClient(str(db_path))
    try:
        assert count(reopened) == 0
    finally:
        reopened.close()


def test_closed_client_fails_at_once_while_another_thread_holds_it(
    client: DatabaseClient,
) -> None:
    """A stale client must not make its caller wait for whoever still holds it."""
    with held_in_another_thread(client):
        assert client.close(timeout=0.1) is False  # still held: given up after the timeout
        assert client.closed
        assert client.close(timeout=0.1) is False  # asked again: the close is still waiting
        started = time.monotonic()
        with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
            client.execute("SELECT 1")
        with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED:"):
            client.batch(["SELECT 1"])  # a transaction of its own
        assert time.monotonic() - started < 10  # waiting for the holder would take 30 s
    assert client.close() is True  # the holder let go: the waiting close is done


def test_a_close_that_waited_for_a_statement_happens_when_it_lets_go(db_path: Path) -> None:
    """Any statement, not only a transaction's end: else the connection stays open (a file
    handle on a deleted database, or an in-memory database that never goes away)."""
    client = DatabaseClient(str(db_path), owner="unit-test", pragmas={"busy_timeout": "10000"})
    client.executescript(SCHEMA)
    writer = sqlite3.connect(db_path)
    writer.execute("BEGIN IMMEDIATE")  # the client's INSERT waits for this lock
    started = threading.Event()

    def trace(sql: str) -> None:
        if sql.startswith("INSERT"):
            started.set()

    client.db.conn.set_trace_callback(trace)
    outcome: list[BaseException] = []

    def insert() -> None:
        try:
            client.execute("INSERT INTO items (name) VALUES ('waits')")
        except BaseException as error:
            outcome.append(error)

    inserting = threading.Thread(target=insert, daemon=True)
    inserting.start()
    try:
        assert started.wait(timeout=10)
        assert client.close(timeout=0.1) is False  # the INSERT still holds the client
        writer.rollback()  # the INSERT goes on
        inserting.join(timeout=10)
        assert client.close(timeout=0.1) is True  # it let go: the waiting close is done
        assert len(outcome) == 1
        assert isinstance(outcome[0], ClientClosedError), outcome
    finally:
        writer.close()


def test_committing_a_transaction_someone_else_ended_is_an_error(client: DatabaseClient) -> None:
    """Not a silent success: its writes were rolled back (here by a ROLLBACK on the
    connection itself, as sqlite-utils issues one)."""
    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('lost')")
    client.db.conn.execute("ROLLBACK")
    with pytest.raises(RuntimeError, match="had already ended when it was to be committed"):
        tx.commit()
    assert count(client) == 0
    client.transaction().rollback()  # the client is free again


def test_a_statement_after_sqlite_ended_the_transaction_is_refused(
    client: DatabaseClient,
) -> None:
    """A RAISE(ROLLBACK) trigger ends the transaction: a later tx.execute would commit on
    its own, and the rollback that follows would undo nothing."""
    client.executescript(
        "CREATE TRIGGER no_negative BEFORE INSERT ON items WHEN NEW.qty < 0 "
        "BEGIN SELECT RAISE(ROLLBACK, 'negative quantity'); END;"
    )

    def write_on_after_the_trigger() -> None:
        with client.transaction() as tx:
            tx.execute("INSERT INTO items (name) VALUES ('first')")
            with pytest.raises(sqlite3.IntegrityError, match="negative quantity"):
                tx.execute("INSERT INTO items (name, qty) VALUES ('bad', -1)")
            tx.execute("INSERT INTO items (name) VALUES ('after the rollback')")

    with pytest.raises(RuntimeError, match="had already ended before this statement"):
        write_on_after_the_trigger()
    assert count(client) == 0


ANOTHER_THREADS_ENDINGS: dict[str, Callable[[Any], object]] = {
    "commit": lambda conn: conn.commit(),
    "rollback": lambda conn: conn.rollback(),
    "with conn": lambda conn: conn.__exit__(None, None, None),
}


@pytest.mark.parametrize("ending", sorted(ANOTHER_THREADS_ENDINGS))
def test_another_thread_cannot_end_a_transaction_through_the_connection(
    client: DatabaseClient, ending: str
) -> None:
    """``conn.commit()`` (or a ``with conn:`` block ending) in another thread waits for
    the transaction instead of committing or ending it halfway."""
    conn = client.db.conn
    done = threading.Event()

    def end_elsewhere() -> None:
        ANOTHER_THREADS_ENDINGS[ending](conn)
        done.set()

    other = threading.Thread(target=end_elsewhere, daemon=True)

    def write_then_fail() -> None:
        with client.transaction() as tx:
            tx.execute("INSERT INTO items (name) VALUES ('rolled back')")
            other.start()
            assert not done.wait(timeout=0.3), "it did not wait for the transaction"
            tx.execute("INSERT INTO items (name) VALUES ('rolled back too')")
            raise KeyError("roll back")

    with pytest.raises(KeyError):
        write_then_fail()
    other.join(timeout=10)
    assert done.is_set()
    assert count(client) == 0


def test_a_transaction_used_from_another_thread_is_an_error(client: DatabaseClient) -> None:
    """Its thread holds the client until it ends: another thread would wait forever."""
    errors: list[BaseException] = []

    def use(tx: Transaction) -> None:
        try:
            tx.execute("INSERT INTO items (name) VALUES ('elsewhere')")
        except RuntimeError as error:
            errors.append(error)

    with client.transaction() as tx:
        other = threading.Thread(target=use, args=(tx,), daemon=True)
        other.start()
        other.join(timeout=5)
        assert not other.is_alive(), "it waited for the transaction's own thread"
        tx.execute("INSERT INTO items (name) VALUES ('here')")
    assert len(errors) == 1
    assert "belongs to the thread that began it" in str(errors[0])
    assert count(client) == 1


def test_a_backup_gives_up_on_a_client_another_thread_holds(
    client: DatabaseClient, tmp_path: Path
) -> None:
    """Saving a failed test's in-memory database must not hang on a thread that never
    lets go of the client."""
    with held_in_another_thread(client):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"still busy in another thread after 0\.2s"):
            client.backup(tmp_path / "copy.db", timeout=0.2)
        assert time.monotonic() - started < 5
    client.backup(tmp_path / "copy.db", timeout=0.2)  # free again: the backup is made
    assert (tmp_path / "copy.db").stat().st_size > 0


@pytest.mark.parametrize("where", ["file", "memory"])
def test_a_backup_inside_the_clients_own_transaction_copies_what_it_sees(
    tmp_path: Path, where: str
) -> None:
    """A failed test's database is kept while its transaction is still open: SQLite's
    backup would wait for that transaction forever, deaf to Ctrl-C and pytest-timeout (so
    it runs in a thread here, which the test does not wait for long)."""
    url = str(tmp_path / "app.db") if where == "file" else f"file:/{uuid.uuid4().hex}?vfs=memdb"
    client = DatabaseClient(url)
    client.execute("CREATE TABLE t (a INTEGER)")
    client.execute("INSERT INTO t VALUES (1)")

    def fail_inside_a_transaction_and_keep_the_database() -> None:
        transaction = client.transaction()
        transaction.execute("INSERT INTO t VALUES (2)")
        client.backup(tmp_path / "copy.db")
        transaction.rollback()

    test = threading.Thread(target=fail_inside_a_transaction_and_keep_the_database, daemon=True)
    test.start()
    test.join(timeout=10)
    assert not test.is_alive(), "the backup waits for the client's own transaction"
    client.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "copy.db")) as copy:
        assert copy.execute("SELECT a FROM t ORDER BY a").fetchall() == [(1,), (2,)]


def test_health_check(client: DatabaseClient, db_path: Path) -> None:
    health = client.health_check()
    assert health["healthy"] is True
    c = DatabaseClient(str(db_path))
    c.close()
    assert c.health_check()["healthy"] is False


def test_a_health_check_reports_a_client_held_too_long_as_busy(client: DatabaseClient) -> None:
    """A readiness probe answers within its timeout instead of waiting for a transaction."""
    with held_in_another_thread(client):
        health = client.health_check(timeout=0.2)
    assert health["healthy"] is False
    assert "still busy in another thread after 0.2s" in health["error"]
    assert client.health_check()["healthy"] is True


def test_get_connection_stats_is_a_dict(client: DatabaseClient) -> None:
    stats = client.get_connection_stats()
    assert isinstance(stats, dict)
    assert stats


# --- threads and asyncio -----------------------------------------------------------------


def test_one_client_is_safe_from_many_threads(client: DatabaseClient) -> None:
    """8 threads x 50 inserts on one client: no lost writes, no errors."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                client.execute("INSERT INTO items (name, qty) VALUES (?, ?)", (f"t{n}-{i}", i))
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert count(client) == 400


def test_a_transaction_that_reads_then_writes_never_fails_on_another_connections_write(
    db_path: Path, client: DatabaseClient
) -> None:
    """Two connections to one file, as two processes of a server have: a transaction that
    reads, then writes, takes the write lock as it begins (BEGIN IMMEDIATE), so the other
    connection's write waits for it; a deferred one failed at its write with "database is
    locked", which no busy timeout helps with."""
    client.execute("INSERT INTO items (name, qty) VALUES ('pen', 10)")
    other = DatabaseClient(str(db_path), owner="another process")
    read, wrote = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write_elsewhere() -> None:
        assert read.wait(timeout=5)
        try:
            other.execute("UPDATE items SET qty = qty - 1")  # waits for the transaction
        except sqlite3.Error as error:
            errors.append(error)
        wrote.set()

    writer = threading.Thread(target=write_elsewhere, daemon=True)
    writer.start()
    try:
        with client.transaction() as tx:
            qty = tx.execute("SELECT qty FROM items").rows[0][0]
            read.set()
            assert not wrote.wait(timeout=0.3), "the other write did not wait"
            tx.execute("UPDATE items SET qty = ?", (qty - 2,))
        writer.join(timeout=10)
    finally:
        other.close()
    assert errors == []
    assert client.execute("SELECT qty FROM items").rows[0][0] == 7


def test_transactions_from_two_threads_do_not_mix(client: DatabaseClient) -> None:
    """A rollback in one thread must not drop another thread's committed work."""
    ready = threading.Event()
    errors: list[BaseException] = []

    def rolled_back() -> None:
        try:
            with client.transaction() as tx:
                tx.execute("INSERT INTO items (name) VALUES ('rolled-back')")
                ready.set()
                raise Boom("undo")
        except Boom:
            pass
        except BaseException as exc:
            errors.append(exc)

    def committed() -> None:
        try:
            ready.wait(timeout=10)
            with client.transaction() as tx:
                tx.execute("INSERT INTO items (name) VALUES ('committed')")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rolled_back), threading.Thread(target=committed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    names = [r["name"] for r in client.execute("SELECT name FROM items").rows]
    assert names == ["committed"]


async def test_an_async_health_check_reports_a_client_another_task_holds_as_busy(
    client: DatabaseClient,
) -> None:
    """It answers within its timeout, as the sync one does, instead of waiting for the
    other task's transaction and then reporting a fast, healthy client."""
    adb = AsyncDatabaseClient(client)
    began, finish = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with adb.transaction():
            began.set()
            await finish.wait()

    holder = asyncio.create_task(hold())
    await began.wait()
    started = time.monotonic()
    health = await adb.health_check(timeout=0.2)
    waited = time.monotonic() - started
    finish.set()
    await holder
    assert health["healthy"] is False
    assert "still busy in another task or thread after 0.2s" in health["error"]
    assert waited < 5
    assert (await adb.health_check())["healthy"] is True


async def test_async_client_gather(client: DatabaseClient) -> None:
    adb = AsyncDatabaseClient(client)
    results = await asyncio.gather(*(adb.execute("SELECT ? AS i", (i,)) for i in range(50)))
    assert [r.rows[0]["i"] for r in results] == list(range(50))
    await asyncio.gather(
        *(adb.execute("INSERT INTO items (name) VALUES (?)", (f"a{i}",)) for i in range(20))
    )
    assert count(client) == 20


async def test_async_client_batch_and_script(client: DatabaseClient) -> None:
    adb = AsyncDatabaseClient(client)
    await adb.executescript("CREATE TABLE notes (body TEXT);")
    results = await adb.batch(
        ["INSERT INTO notes VALUES ('x')", ("INSERT INTO notes VALUES (?)", ("y",))]
    )
    assert len(results) == 2
    assert count(client, "notes") == 2


async def test_async_transaction_rolls_back_on_exception(client: DatabaseClient) -> None:
    adb = AsyncDatabaseClient(client)

    async def insert_then_fail() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('a')")
            raise Boom("undo")

    with pytest.raises(Boom, match="undo"):
        await insert_then_fail()
    assert count(client) == 0
    async with adb.transaction() as tx:
        await tx.execute("INSERT INTO items (name) VALUES ('b')")
    assert count(client) == 1


def test_sqlite_utils_in_another_thread_waits_for_an_open_transaction(
    client: DatabaseClient,
) -> None:
    """As the client's own calls do: its statements never land inside (and vanish with)
    another thread's transaction."""
    handle = client.db  # fetched once, as one does, then used from another thread
    inserted = threading.Event()

    def insert_elsewhere() -> None:
        handle.table("items").insert({"name": "other thread"})
        inserted.set()

    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('rolled back')")
    other = threading.Thread(target=insert_elsewhere, daemon=True)
    other.start()
    assert not inserted.wait(timeout=0.3), "it did not wait for the transaction"
    tx.rollback()
    other.join(timeout=10)
    names = [row[0] for row in client.execute("SELECT name FROM items").rows]
    assert names == ["other thread"]


def test_a_sqlite_utils_call_that_waited_for_a_closing_client_raises_client_closed(
    client: DatabaseClient,
) -> None:
    handle = client.db
    outcome: list[BaseException] = []

    def insert_elsewhere() -> None:
        try:
            handle.execute("INSERT INTO items (name) VALUES ('late')")
        except BaseException as error:
            outcome.append(error)

    tx = client.transaction()
    other = threading.Thread(target=insert_elsewhere, daemon=True)
    other.start()
    other.join(timeout=0.3)  # it waits for the transaction
    client.close(reason="by the test")
    with contextlib.suppress(ClientClosedError):
        tx.rollback()
    other.join(timeout=10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ClientClosedError), outcome


def test_a_script_inside_a_transaction_is_refused_before_it_commits(
    client: DatabaseClient,
) -> None:
    """sqlite3's executescript commits the open transaction first: the rollback that
    follows would then undo nothing."""
    tx = client.transaction()
    tx.execute("INSERT INTO items (name) VALUES ('a')")
    with pytest.raises(RuntimeError, match="would commit it first"):
        client.executescript("INSERT INTO items (name) VALUES ('b');")
    tx.rollback()
    assert count(client) == 0
    client.executescript("INSERT INTO items (name) VALUES ('c');")  # outside one: runs
    assert count(client) == 1


async def test_async_calls_inside_the_loops_own_sync_transaction_are_an_error(
    client: DatabaseClient,
) -> None:
    """Their worker thread would wait for that transaction, which cannot end while the
    event loop waits for the worker: a hang until pytest-timeout, made an error."""
    adb = AsyncDatabaseClient(client)
    with client.transaction() as tx:
        tx.execute("INSERT INTO items (name) VALUES ('sync')")
        with pytest.raises(RuntimeError, match=r"inside this thread's open db\.transaction"):
            await asyncio.wait_for(adb.execute("SELECT 1"), timeout=5)
        with pytest.raises(RuntimeError, match=r"inside this thread's open db\.transaction"):
            await asyncio.wait_for(adb.transaction().__aenter__(), timeout=5)
    assert (await adb.execute("SELECT COUNT(*) FROM items")).rows[0][0] == 1  # free again
    refused = pytest.raises(RuntimeError, match=r"inside this thread's open db\.transaction")
    async with adb.transaction():  # the sync one inside is a savepoint: the same holds
        with client.transaction(), refused:
            await asyncio.wait_for(adb.execute("SELECT 1"), timeout=5)


async def test_a_task_cancelled_as_its_transaction_begins_leaves_none_open(
    client: DatabaseClient, db_path: Path
) -> None:
    """A timeout or a failed TaskGroup sibling cancels the task while BEGIN runs in its
    thread: left open, that transaction would swallow every later write of the client."""
    adb = AsyncDatabaseClient(client)

    async def insert() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('cancelled')")

    task = asyncio.create_task(insert())
    await asyncio.sleep(0)  # the task is in BEGIN now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await adb.execute("INSERT INTO items (name) VALUES ('later')")  # waits for the rollback
    assert not client.get_connection_stats()["in_transaction"]
    with contextlib.closing(sqlite3.connect(db_path)) as other:
        assert other.execute("SELECT name FROM items").fetchall() == [("later",)]


async def test_a_savepoint_cancelled_as_it_begins_loses_nothing_written_after(
    client: DatabaseClient,
) -> None:
    """Its rollback happens before the task goes on: done later, in the background, it
    would undo what the task wrote into the outer transaction meanwhile."""
    adb = AsyncDatabaseClient(client)
    release = threading.Event()

    def busy() -> None:  # a thread working for the task holds the client: the SAVEPOINT waits
        with client.transaction():
            release.wait(timeout=10)

    async with adb.transaction() as outer:
        await outer.execute("INSERT INTO items (name) VALUES ('before')")
        holder = threading.Thread(target=run_for, args=(acting_for(), busy), daemon=True)
        holder.start()
        await asyncio.sleep(0.05)
        # Let the holder go once the timeout has fired (a later timer of the same loop):
        # the cancelled savepoint can only begin, and be rolled back, after that.
        asyncio.get_running_loop().call_later(0.3, release.set)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1), adb.transaction():
                pass
        assert release.is_set()  # the task went on only once its savepoint was undone
        await outer.execute("INSERT INTO items (name) VALUES ('after')")
        await asyncio.sleep(0.1)
    holder.join(timeout=10)
    names = [row[0] for row in client.execute("SELECT name FROM items ORDER BY id").rows]
    assert names == ["before", "after"]


async def _client_calls_inside_a_transaction(adb: AsyncDatabaseClient) -> None:
    async with adb.transaction() as tx:
        await tx.execute("INSERT INTO items (name) VALUES ('via-tx')")
        await adb.execute("INSERT INTO items (name) VALUES ('via-client')")
        await adb.batch([("INSERT INTO items (name) VALUES (?)", ("via-batch",))])
        async with adb.transaction() as nested:
            await nested.execute("INSERT INTO items (name) VALUES ('via-nested')")
        assert (await adb.execute("SELECT COUNT(*) FROM items")).rows[0][0] == 4
        raise Boom("undo all four")


async def test_an_async_transaction_holds_other_threads_out(client: DatabaseClient) -> None:
    """Their statements wait for it to end, instead of landing inside it and vanishing with
    its rollback: an in-process server's request, a sqlite-utils handle."""
    adb = AsyncDatabaseClient(client)
    handle = client.db
    written: list[str] = []

    def write(name: str) -> None:
        client.execute("INSERT INTO items (name) VALUES (?)", (name,))
        written.append(name)

    def write_with_sqlite_utils() -> None:
        handle.table("items").insert({"name": "sqlite-utils"})
        written.append("sqlite-utils")

    others = [
        threading.Thread(target=write, args=("request",), daemon=True),
        threading.Thread(target=write_with_sqlite_utils, daemon=True),
    ]
    tx = await adb.transaction()
    await tx.execute("INSERT INTO items (name) VALUES ('rolled back')")
    for other in others:
        other.start()
    await asyncio.sleep(0.3)
    assert written == [], "another thread wrote inside the transaction"
    await tx.rollback()
    for other in others:
        await asyncio.to_thread(other.join, 10)
    names = sorted(row[0] for row in client.execute("SELECT name FROM items").rows)
    assert names == ["request", "sqlite-utils"]


async def test_sync_calls_on_the_loop_inside_an_async_transaction(client: DatabaseClient) -> None:
    """The transaction's own task joins it; a task that was there before would block the
    loop that the transaction needs to end, so it gets an error instead of a hang."""
    adb = AsyncDatabaseClient(client)
    go = asyncio.Event()

    async def task_from_before() -> None:
        await go.wait()
        client.execute("SELECT 1")

    other = asyncio.create_task(task_from_before())
    tx = await adb.transaction()
    client.execute("INSERT INTO items (name) VALUES ('joined')")
    assert count(client) == 1
    go.set()
    with pytest.raises(RuntimeError, match="async transaction of another task"):
        await other
    await tx.rollback()
    assert count(client) == 0  # the task's own statement was inside the transaction


async def test_what_the_transactions_task_runs_in_threads_or_tasks_joins_it(
    client: DatabaseClient,
) -> None:
    """``asyncio.to_thread`` (Starlette's ``run_in_threadpool`` too) and tasks started inside
    copy the task's context: application code run that way is the task's own work."""
    adb = AsyncDatabaseClient(client)

    async def started_inside() -> None:
        client.execute("INSERT INTO items (name) VALUES ('task')")

    async with asyncio.timeout(5):
        tx = await adb.transaction()
        await asyncio.to_thread(client.execute, "INSERT INTO items (name) VALUES ('thread')")
        await asyncio.create_task(started_inside())
        assert count(client) == 2
        await tx.rollback()
    assert count(client) == 0


async def test_two_wrappers_of_one_client_share_its_transaction(client: DatabaseClient) -> None:
    """The reservation belongs to the client: a second wrapper's calls in the task join
    the transaction, and its nested transaction (a savepoint) does not end the reservation."""
    first, second = AsyncDatabaseClient(client), AsyncDatabaseClient(client)
    written: list[str] = []

    def write_elsewhere() -> None:
        client.execute("INSERT INTO items (name) VALUES ('other thread')")
        written.append("other thread")

    other = threading.Thread(target=write_elsewhere, daemon=True)
    async with asyncio.timeout(5):
        tx = await first.transaction()
        await second.execute("INSERT INTO items (name) VALUES ('second wrapper')")
        async with second.transaction() as nested:
            await nested.execute("INSERT INTO items (name) VALUES ('savepoint')")
        other.start()
        await asyncio.sleep(0.3)
        assert written == [], "the savepoint's end let another thread in"
        await tx.rollback()
    await asyncio.to_thread(other.join, 10)
    assert [row[0] for row in client.execute("SELECT name FROM items").rows] == ["other thread"]


async def test_sibling_savepoints_take_turns_and_stand_or_fall_alone(
    client: DatabaseClient,
) -> None:
    """Tasks started inside a transaction that open their own (savepoints, through any
    wrapper) wait for one another: a sibling's statement never lands in another's."""
    adb = AsyncDatabaseClient(client)

    async def keeps(name: str) -> None:
        async with AsyncDatabaseClient(client).transaction() as tx:  # asked for at call time
            await tx.execute("INSERT INTO items (name) VALUES (?)", (name,))
            await asyncio.sleep(0.05)

    async def fails() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('undone')")
            await asyncio.sleep(0.05)
            raise Boom

    async with asyncio.timeout(10):
        tx = await adb.transaction()
        results = await asyncio.gather(
            keeps("first"),
            fails(),
            adb.execute("INSERT INTO items (name) VALUES ('plain')"),
            adb.batch(["INSERT INTO items (name) VALUES ('batch')"]),
            keeps("last"),
            return_exceptions=True,
        )
        await tx.commit()
    assert [type(result) for result in results][1] is Boom
    names = sorted(row[0] for row in client.execute("SELECT name FROM items").rows)
    assert names == ["batch", "first", "last", "plain"]


async def test_a_task_that_was_running_before_a_later_transaction_waits_for_it(
    client: DatabaseClient,
) -> None:
    """Having worked inside an earlier transaction of the same task gives it no part in
    the next one."""
    adb = AsyncDatabaseClient(client)
    go = asyncio.Event()

    async def background() -> None:
        await go.wait()
        await adb.execute("INSERT INTO items (name) VALUES ('background')")

    async with asyncio.timeout(10):
        async with adb.transaction() as first:
            await first.execute("INSERT INTO items (name) VALUES ('first')")
        task = asyncio.create_task(background())
        second = await adb.transaction()
        go.set()
        await asyncio.sleep(0.1)
        assert not task.done()
        await second.rollback()
        await task
    assert sorted(row[0] for row in client.execute("SELECT name FROM items").rows) == [
        "background",
        "first",
    ]


def test_one_wrapper_serves_two_event_loops(client: DatabaseClient) -> None:
    """A server thread runs its own loop: each loop's tasks take turns on their own."""
    adb = AsyncDatabaseClient(client)

    async def insert_many(prefix: str) -> None:
        async with asyncio.timeout(10):
            await asyncio.gather(
                *(
                    adb.execute("INSERT INTO items (name) VALUES (?)", (f"{prefix}{i}",))
                    for i in range(20)
                )
            )

    other = threading.Thread(target=asyncio.run, args=(insert_many("thread-"),), daemon=True)
    other.start()
    asyncio.run(insert_many("main-"))
    other.join(timeout=10)
    assert count(client) == 40


async def test_a_transaction_begun_under_wait_for_does_not_hang_its_caller(
    client: DatabaseClient,
) -> None:
    """On Python 3.11, ``wait_for`` begins it in a task of its own, which ends at once."""
    adb = AsyncDatabaseClient(client)
    async with asyncio.timeout(10):
        tx = await asyncio.wait_for(adb.transaction(), 5)
        await adb.execute("INSERT INTO items (name) VALUES ('joined')")
        await tx.rollback()
    assert count(client) == 0


async def test_calls_waiting_for_a_transaction_take_no_worker_thread_it_needs(
    client: DatabaseClient,
) -> None:
    """Savepoints taking turns wait on the event loop, and threads of application code
    waiting in asyncio's default pool do not starve the transaction of workers."""
    adb = AsyncDatabaseClient(client)
    go = asyncio.Event()

    async def running_before(i: int) -> None:
        await go.wait()
        await asyncio.to_thread(client.execute, "INSERT INTO items (name) VALUES (?)", (f"t{i}",))

    async def savepoint(i: int) -> None:
        async with adb.transaction() as inner:
            await inner.execute("INSERT INTO items (name) VALUES (?)", (f"s{i}",))
            await inner.execute("SELECT 1")

    waiting = [asyncio.create_task(running_before(i)) for i in range(12)]
    async with asyncio.timeout(20):
        async with adb.transaction() as tx:
            go.set()
            await asyncio.sleep(0.1)  # twelve threads now wait for the transaction
            await asyncio.gather(*(savepoint(i) for i in range(12)))
            await tx.execute("INSERT INTO items (name) VALUES ('outer')")
        await asyncio.gather(*waiting)
    assert count(client) == 25


async def test_a_task_started_in_a_savepoint_that_ended_works_for_its_transaction(
    client: DatabaseClient,
) -> None:
    adb = AsyncDatabaseClient(client)
    go = asyncio.Event()

    async def late() -> None:
        await go.wait()
        await adb.execute("INSERT INTO items (name) VALUES ('late')")

    async with asyncio.timeout(10):
        tx = await adb.transaction()
        async with adb.transaction():
            started = asyncio.create_task(late())
        go.set()
        await started
        assert count(client) == 1
        await tx.rollback()
    assert count(client) == 0


async def test_committing_a_transaction_before_the_one_inside_it_is_an_error(
    client: DatabaseClient,
) -> None:
    """It would wait for the inner one, which only this very task can end."""
    adb = AsyncDatabaseClient(client)
    async with asyncio.timeout(10):
        outer = await adb.transaction()
        inner = await adb.transaction()
        with pytest.raises(RuntimeError, match="still open: commit or roll it back first"):
            await outer.commit()
        await inner.execute("INSERT INTO items (name) VALUES ('kept')")
        await inner.commit()
        await outer.commit()
    assert count(client) == 1


async def test_work_started_in_a_transaction_that_rolled_back_writes_nothing_after(
    client: DatabaseClient,
) -> None:
    """Children of a transaction whose body failed (``gather`` returns the first error
    while the others go on) may not go on writing outside it, nor begin transactions of
    their own; and the rollback does not wait for their savepoints."""
    adb = AsyncDatabaseClient(client)

    async def child(i: int) -> None:
        async with adb.transaction() as savepoint:
            await savepoint.execute("INSERT INTO items (name) VALUES (?)", (f"c{i}-1",))
            await asyncio.sleep(0.2)
            await savepoint.execute("INSERT INTO items (name) VALUES (?)", (f"c{i}-2",))

    async def fails() -> None:
        await asyncio.sleep(0.1)
        raise Boom

    children: list[asyncio.Future[None]] = []
    async with asyncio.timeout(10):
        with contextlib.suppress(Boom):
            async with adb.transaction():
                children.extend(asyncio.ensure_future(child(i)) for i in range(3))
                await asyncio.gather(fails(), *children)
        outcomes = await asyncio.gather(*children, return_exceptions=True)
    assert all(isinstance(outcome, RolledBackError) for outcome in outcomes), outcomes
    assert count(client) == 0
    assert not client.get_connection_stats()["in_transaction"]


@pytest.mark.parametrize("yields", range(6))
async def test_a_rollback_does_not_wait_for_a_savepoint_begun_as_it_ends(
    client: DatabaseClient, yields: int
) -> None:
    """Whenever the child's SAVEPOINT runs, the parent's ROLLBACK undoes it at once."""
    adb = AsyncDatabaseClient(client)
    never = asyncio.Event()

    async def child() -> None:
        async with adb.transaction() as savepoint:
            await savepoint.execute("INSERT INTO items (name) VALUES ('child')")
            await never.wait()

    started: list[asyncio.Task[None]] = []
    async with asyncio.timeout(10):
        with contextlib.suppress(Boom):
            async with adb.transaction():
                started.append(asyncio.create_task(child()))
                for _ in range(yields):
                    await asyncio.sleep(0)
                raise Boom
        started[0].cancel()
        await asyncio.gather(*started, return_exceptions=True)
    assert count(client) == 0
    assert not client.get_connection_stats()["in_transaction"]


async def test_a_closed_client_is_reported_as_closed_inside_an_async_transaction(
    client: DatabaseClient,
) -> None:
    """CLIENT_CLOSED naming the owner, not a rollback error, and at once, not after the
    transaction's task lets go of this loop's lock."""
    adb = AsyncDatabaseClient(client)
    holding = asyncio.Event()

    async def holds_a_transaction() -> None:
        async with adb.transaction():
            holding.set()
            await asyncio.sleep(5)

    async with asyncio.timeout(10):
        tx = await adb.transaction()
        other = asyncio.create_task(holds_a_transaction())
        await asyncio.to_thread(client.close, 1.0, reason="by the test")
        for call in (adb.execute("SELECT 1"), tx.execute("SELECT 1"), tx.commit()):
            with pytest.raises(ClientClosedError, match=r"^CLIENT_CLOSED: .*unit-test"):
                await call
        assert (await adb.health_check())["healthy"] is False
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)


async def test_closing_through_the_async_client_names_the_callers_line(
    client: DatabaseClient,
) -> None:
    adb = AsyncDatabaseClient(client)
    await adb.close()
    with pytest.raises(ClientClosedError, match=r"closed at .*test_database\.py:\d+"):
        await adb.execute("SELECT 1")


def test_the_reservations_can_be_read_while_another_thread_changes_them() -> None:
    """The event loop reads them without the lock: never half-changed."""
    lock, stop = ClientLock(), threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        while not stop.is_set():
            reservation = Reservation(None)
            with lock:
                lock.reserve(reservation)
            lock.end_reservation(reservation, committed=True)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 0.5
        probe = Reservation(None)
        while time.monotonic() < deadline:
            try:
                lock.admits(None)
                lock.inside(probe)
                lock.abandoned()
            except Exception as error:
                failures.append(error)
    finally:
        stop.set()
        worker.join(timeout=5)
        sys.setswitchinterval(interval)
    assert failures == []


async def test_a_task_cancelled_while_its_commit_waits_rolls_back(client: DatabaseClient) -> None:
    """Its commit waits for a savepoint of a task it started; cancelled meanwhile, it rolls
    back (that savepoint with it) instead of leaving the transaction open."""
    adb = AsyncDatabaseClient(client)
    inside, release = asyncio.Event(), asyncio.Event()

    async def child() -> None:
        async with adb.transaction() as savepoint:
            await savepoint.execute("INSERT INTO items (name) VALUES ('child')")
            inside.set()
            await release.wait()

    children: list[asyncio.Task[None]] = []

    async def parent() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('parent')")
            children.append(asyncio.create_task(child()))
            await inside.wait()

    async with asyncio.timeout(10):
        task = asyncio.create_task(parent())
        await inside.wait()
        await asyncio.sleep(0.05)  # the parent's commit is waiting for the child's savepoint
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not client.get_connection_stats()["in_transaction"]
        release.set()
        with pytest.raises(RolledBackError, match="has been rolled back"):
            await children[0]  # its savepoint's commit: undone with the parent
    assert count(client) == 0
    client.execute("INSERT INTO items (name) VALUES ('free again')")  # nothing holds it


def test_a_task_that_ended_inside_its_transaction_holds_no_one_out(
    client: DatabaseClient,
) -> None:
    """Its loop is gone: nobody could end the transaction for it, so waiting would be for
    ever (a teardown on the loop's thread, or another thread, after a failed test)."""
    adb = AsyncDatabaseClient(client)

    async def leave_it_open() -> None:
        tx = await adb.transaction()
        await tx.execute("INSERT INTO items (name) VALUES ('left open')")

    asyncio.run(leave_it_open())
    assert count(client) == 1  # the loop's own thread, after the loop
    seen: list[int] = []
    other = threading.Thread(target=lambda: seen.append(count(client)), daemon=True)
    other.start()
    other.join(timeout=5)
    assert seen == [1]


def test_a_new_database_another_connection_holds_is_switched_to_wal_once_it_lets_go(
    tmp_path: Path,
) -> None:
    """Switching to WAL does not wait for the busy timeout as other statements do: two
    processes opening a new database at once failed with "database is locked"."""
    path = tmp_path / "new.db"
    with new_database_held_for(0.3, path):
        client = DatabaseClient(str(path), owner="opens a new database")
    assert client.execute("PRAGMA journal_mode").rows[0][0] == "wal"
    client.close()


def test_opening_a_database_held_longer_than_the_busy_timeout_waits_only_that_long(
    tmp_path: Path,
) -> None:
    """The WAL switch's own busy wait counts towards the timeout: waiting it out and then
    retrying for as long again took twice the busy timeout."""
    path = tmp_path / "held.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE a (x)")
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            DatabaseClient(str(path), pragmas={"busy_timeout": "1000", "journal_mode": "WAL"})
        waited = time.monotonic() - started
    assert 0.95 < waited < 1.8  # twice the timeout would be 2 s


def test_the_async_client_is_importable_from_lib_database_too() -> None:
    """The public names of the contract stay where they were."""
    assert database.AsyncDatabaseClient is async_database.AsyncDatabaseClient
    assert database.AsyncTransaction is async_database.AsyncTransaction
    with pytest.raises(AttributeError, match="no attribute 'AsyncClient'"):
        database.AsyncClient  # noqa: B018


def test_the_clients_type_hints_resolve_at_run_time() -> None:
    """For tools that read annotations at run time (typeguard, pydantic, Sphinx)."""
    for cls in (
        DatabaseClient,
        AsyncDatabaseClient,
        AsyncTransaction,
        Transaction,
        DatabaseService,
    ):
        for name, member in vars(cls).items():
            if callable(member) and not name.startswith("__"):
                typing.get_type_hints(member)


async def test_async_calls_from_the_transactions_task_join_it(client: DatabaseClient) -> None:
    """As with the sync client: no deadlock, and the rollback undoes all of it."""
    adb = AsyncDatabaseClient(client)
    with pytest.raises(Boom):
        await asyncio.wait_for(_client_calls_inside_a_transaction(adb), timeout=10)
    assert count(client) == 0
    await adb.execute("INSERT INTO items (name) VALUES ('after')")  # the client is free again
    assert count(client) == 1


async def test_a_nested_async_transaction_is_a_savepoint(client: DatabaseClient) -> None:
    adb = AsyncDatabaseClient(client)

    async def inner() -> None:
        async with adb.transaction() as nested:
            await nested.execute("INSERT INTO items (name) VALUES ('inner')")
            raise Boom("undo the savepoint only")

    async def outer() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('outer')")
            with pytest.raises(Boom):
                await inner()

    await asyncio.wait_for(outer(), timeout=10)
    assert [row["name"] for row in client.execute("SELECT name FROM items").rows] == ["outer"]


async def test_tasks_started_inside_an_async_transaction_join_it_and_others_wait(
    client: DatabaseClient,
) -> None:
    """``asyncio.gather`` of ``async_db`` calls inside the block runs inside the
    transaction; a task that was running before waits for it to end."""
    adb = AsyncDatabaseClient(client)
    go = asyncio.Event()

    async def task_from_before() -> None:
        await go.wait()
        await adb.execute("INSERT INTO items (name) VALUES ('outside')")

    outside = asyncio.create_task(task_from_before())
    async with asyncio.timeout(10):
        tx = await adb.transaction()
        await asyncio.gather(
            adb.execute("INSERT INTO items (name) VALUES ('a')"),
            adb.execute("INSERT INTO items (name) VALUES ('b')"),
        )
        go.set()
        await asyncio.sleep(0.1)
        assert not outside.done()
        await tx.rollback()
        await outside
    assert [row["name"] for row in client.execute("SELECT name FROM items").rows] == ["outside"]


async def test_an_awaited_async_transaction_commits_or_rolls_back(
    client: DatabaseClient,
) -> None:
    """``tx = await adb.transaction()`` works like the sync ``db.transaction()``."""
    adb = AsyncDatabaseClient(client)
    tx = await adb.transaction()
    await tx.execute("INSERT INTO items (name) VALUES ('kept')")
    await adb.execute("INSERT INTO items (name) VALUES ('joined')")  # this task joins it
    nested = await adb.transaction()  # a savepoint
    await nested.execute("INSERT INTO items (name) VALUES ('savepoint')")
    await nested.rollback()
    await tx.commit()
    undone = await adb.transaction()
    await undone.execute("INSERT INTO items (name) VALUES ('undone')")
    await undone.rollback()
    async with await adb.transaction() as entered:  # entering it later: commit on exit
        await entered.execute("INSERT INTO items (name) VALUES ('entered')")
    # Another task is not kept waiting: the transactions let go of the client.
    await asyncio.wait_for(asyncio.create_task(adb.execute("SELECT 1")), timeout=5)
    names = [row["name"] for row in client.execute("SELECT name FROM items ORDER BY id").rows]
    assert names == ["kept", "joined", "entered"]


async def test_async_get_connection_stats(client: DatabaseClient) -> None:
    adb = AsyncDatabaseClient(client)
    await adb.execute("SELECT 1")
    stats = await adb.get_connection_stats()
    assert stats["owner"] == "unit-test"
    assert stats["queries_executed"] == client.get_connection_stats()["queries_executed"]
    assert stats["closed"] is False


async def test_async_close(db_path: Path) -> None:
    adb = AsyncDatabaseClient(DatabaseClient(str(db_path), owner="async-owner"))
    assert not adb.closed
    await adb.close()
    assert adb.closed
    with pytest.raises(ClientClosedError, match="async-owner"):
        await adb.execute("SELECT 1")


# --- DatabaseService ---------------------------------------------------------------------


@pytest.fixture
def service(db_path: Path) -> Iterator[DatabaseService]:
    svc = DatabaseService(f"file:{db_path}")
    yield svc
    svc.close()


def test_service_lifecycle(service: DatabaseService, db_path: Path) -> None:
    service.initialize()
    c = service.get_client()
    assert c.execute("SELECT 1 AS one").rows[0]["one"] == 1
    assert db_path.exists()
    assert c in service.active_connections
    assert not service.is_closing
    service.close()
    assert c.closed
    assert len(service.active_connections) == 0
    assert not service.is_closing
    with pytest.raises(ClientClosedError):
        c.execute("SELECT 1")


def test_service_get_client_initializes_lazily(service: DatabaseService) -> None:
    c = service.get_client()
    assert not c.closed
    assert c.health_check()["healthy"] is True


def test_service_reads_database_url_at_initialize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "from-env.db"
    svc = DatabaseService()
    monkeypatch.setenv("DATABASE_URL", f"file:{target}")
    try:
        svc.initialize()
        svc.get_client().execute("CREATE TABLE marker (x)")
    finally:
        svc.close()
    assert target.exists()
    check = DatabaseClient(str(target))
    try:
        assert "marker" in check.db.table_names()
    finally:
        check.close()


def test_service_bad_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://nope")
    svc = DatabaseService()
    try:
        with pytest.raises(DatabaseConfigError, match="DATABASE_URL"):
            svc.initialize()
    finally:
        svc.close()


def test_service_reset_for_testing_closes_clients_and_allows_reuse(
    service: DatabaseService,
) -> None:
    first = service.get_client()
    service.reset_for_testing()
    assert first.closed
    assert len(service.active_connections) == 0
    second = service.get_client()
    assert second is not first
    assert second.execute("SELECT 2").rows[0][0] == 2


def test_a_service_forgets_a_client_its_factory_made_without_closing_it(tmp_path: Path) -> None:
    """The factory's maker owns the client (a test's scope): resetting the application's
    singleton must not close the test's own ``db``, nor wait for a connect in progress."""
    made: list[DatabaseClient] = []

    def factory() -> DatabaseClient:
        made.append(DatabaseClient(str(tmp_path / "owned.db")))
        return made[-1]

    service = DatabaseService(client_factory=factory)
    first = service.get_client()
    try:
        assert service.close() is True
        assert not first.closed
        assert service.active_connections == frozenset()
        assert service.get_client() is made[1]
    finally:
        for client in made:
            client.close()


def test_a_service_forgets_a_factorys_client_without_waiting_for_a_connect_in_progress(
    tmp_path: Path,
) -> None:
    """A test's scope ending (its manager's lock held) resets the application's singleton
    while another thread connects through the scope, waiting for that lock: close() must
    not wait for the connect, which waits for close()'s caller."""
    scope_lock = threading.Lock()
    connecting = threading.Event()

    def factory() -> DatabaseClient:
        connecting.set()
        with scope_lock:
            return DatabaseClient(str(tmp_path / "owned.db"))

    service = DatabaseService(client_factory=factory)
    made: list[DatabaseClient] = []
    connector = threading.Thread(target=lambda: made.append(service.get_client()), daemon=True)
    with scope_lock:  # the scope is ending
        connector.start()
        assert connecting.wait(timeout=5)
        closer = threading.Thread(target=service.close, daemon=True)
        closer.start()
        closer.join(timeout=5)
        assert not closer.is_alive(), "close() waited for the connect, which waits for it"
    connector.join(timeout=5)
    for client in made:
        client.close()


def test_service_refuses_new_clients_while_closing(service: DatabaseService) -> None:
    """While close() waits for a busy client, asking for a client fails fast instead of racing."""
    client = service.get_client()
    tx = client.transaction()  # holds the client: close() must wait for it
    closer = threading.Thread(target=service.close, kwargs={"timeout": 10.0}, daemon=True)
    closer.start()
    deadline = time.monotonic() + 10
    while not service.is_closing and time.monotonic() < deadline:
        time.sleep(0.001)
    assert service.is_closing
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            service.get_client()
        except BaseException as exc:
            errors.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join(timeout=10)
    assert len(errors) == 1
    assert isinstance(errors[0], DatabaseShuttingDownError)
    assert "ask again once its close() has returned" in str(errors[0])
    # Releasing the transaction lets close() finish; the transaction's client is gone.
    with pytest.raises(ClientClosedError):
        tx.rollback()
    closer.join(timeout=10)
    assert not closer.is_alive()
    assert client.closed
    assert not service.is_closing
    assert service.get_client() is not client


def test_service_health_check_and_stats(service: DatabaseService) -> None:
    service.get_client()
    health = service.health_check()
    assert health["healthy"] is True
    stats: dict[str, Any] = service.get_connection_stats()
    assert isinstance(stats, dict)


def test_singleton_is_blocked_in_unit_tests() -> None:
    """Unit tests get no database: the singleton refuses with a clear error."""
    with pytest.raises(DatabaseAccessBlockedError):
        get_database_client()
