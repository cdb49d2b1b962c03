"""The libsql engine on real local files: it behaves like the sqlite3 one, and a closed
libsql client raises ClientClosedError, never libsql's panic."""

from __future__ import annotations

import array
import enum
import re
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from lib import libsql_engine
from lib.connection_tracking import record_connections, refuse_files
from lib.database import (
    ClientClosedError,
    DatabaseAccessBlockedError,
    DatabaseClient,
    DatabaseConfigError,
    Engine,
    RemoteDatabaseError,
    forbid_remote_databases,
)
from lib.isolation_manager import TestIsolationManager
from tests.unit.own_schema import MIGRATIONS_DIR

libsql = pytest.importorskip("libsql")
# Python 3.12's first releases warn of a numbered placeholder (?1) given a sequence, as of
# a named one; later ones do not, nor does the libsql engine.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Binding \d+ \('\?\d+'\) is a named parameter:DeprecationWarning"
)


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
    manager = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data", engine="libsql"
    )
    try:
        with pytest.raises(ValueError, match="memory strategy needs the sqlite3 engine"):
            manager.create_scope("memory on libsql", strategy="memory")
    finally:
        manager.shutdown()


def test_scopes_on_libsql_are_isolated(tmp_path: Path) -> None:
    manager = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data", engine="libsql"
    )
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


FIRST_IMPORTED_IN_A_TEST = """
import sys
from lib.connection_tracking import refuse_files
from lib.database import DatabaseAccessBlockedError

refuse_files([sys.argv[1]], "it is the developer's")
import libsql  # as code of the project's would, inside a test

try:
    libsql.connect(sys.argv[1])
except DatabaseAccessBlockedError:
    print("refused")
"""


def test_libsql_imported_first_inside_a_test_is_tracked_too(tmp_path: Path) -> None:
    own = tmp_path / "app.db"
    child = subprocess.run(
        [sys.executable, "-c", FIRST_IMPORTED_IN_A_TEST, str(own)],
        cwd=Path(__file__).resolve().parents[2],  # the project, where lib is
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.stdout.strip() == "refused", child.stderr
    assert not own.exists()


@pytest.fixture(params=["sqlite3", "libsql"])
def either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseClient]:
    """A client of each engine on a file of its own: what one does, the other must."""
    client = DatabaseClient(str(tmp_path / "either.db"), owner="engine test", engine=request.param)
    yield client
    client.close()


def test_a_commit_that_fails_rolls_back_and_later_transactions_land(
    either: DatabaseClient,
) -> None:
    """A deferred foreign key fails at COMMIT: the transaction must not stay open, or every
    later one would be a savepoint inside it, lost with it."""
    either.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    either.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, "
        "pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), either.transaction() as tx:
        tx.execute("INSERT INTO child (pid) VALUES (42)")
    assert either.get_connection_stats()["in_transaction"] is False
    with either.transaction() as tx:
        tx.execute("INSERT INTO parent (id) VALUES (1)")
    with closing(sqlite3.connect(either.path)) as other:
        assert other.execute("SELECT count(*) FROM parent").fetchone() == (1,)
        assert other.execute("SELECT count(*) FROM child").fetchone() == (0,)


@pytest.mark.parametrize(
    ("sql", "args", "error", "message"),
    [
        (
            "INSERT INTO t (name) VALUES ('x'); DELETE FROM t",
            (),
            sqlite3.ProgrammingError,
            "You can only execute one statement at a time.",
        ),
        ("SELECT 1;;", (), sqlite3.ProgrammingError, "one statement at a time"),
        (
            "INSERT INTO t (name) VALUES ('x'); /* then */ DELETE FROM t",
            (),
            sqlite3.ProgrammingError,
            "one statement at a time",
        ),
        (
            "INSERT INTO t (name) VALUES ('x'); /* a */ /* b */ -- c\n DELETE FROM t /* d",
            (),
            sqlite3.ProgrammingError,
            "one statement at a time",
        ),
        (
            "INSERT INTO t (name, qty) VALUES (?, ?)",
            ("only-name",),
            sqlite3.ProgrammingError,
            "Incorrect number of bindings supplied. The current statement uses 2, and there "
            "are 1 supplied.",
        ),
        (
            "INSERT INTO t (name, qty) VALUES (?, ?)",
            ("n", 3, "extra"),
            sqlite3.ProgrammingError,
            "The current statement uses 2, and there are 3 supplied.",
        ),
        (
            "SELECT * FROM t WHERE name = ?",
            ("ada@example.com"),  # a str, not a tuple: the classic mistake
            sqlite3.ProgrammingError,
            "The current statement uses 1, and there are 15 supplied.",
        ),
        (
            "INSERT INTO t (name, qty) VALUES (?, ?)",
            ("big", 2**63),
            OverflowError,
            "Python int too large to convert to SQLite INTEGER",
        ),
        ("SELECT ?", (-(2**63) - 1,), OverflowError, "too large"),
        (
            "SELECT ?",
            (object(),),
            sqlite3.ProgrammingError,
            "Error binding parameter 1: type 'object' is not supported",
        ),
    ],
)
def test_what_sqlite3_refuses_libsql_refuses_alike(
    either: DatabaseClient, sql: str, args: Any, error: type[Exception], message: str
) -> None:
    either.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    with pytest.raises(error) as raised:
        either.execute(sql, args)
    assert message in str(raised.value)
    assert either.execute("SELECT count(*) FROM t").rows[0][0] == 0  # nothing ran


@pytest.mark.parametrize(
    ("sql", "args", "expected"),
    [
        ("SELECT 1; -- a comment after the statement", (), (1,)),
        ("SELECT 1 /* unclosed", (), (1,)),
        ("SELECT 1; /* a */ -- b\n /* c */ /* unclosed", (), (1,)),
        ("SELECT ';', '?', \"a;?\" FROM (SELECT 1 AS \"a;?\")", (), (";", "?", 1)),
        ("SELECT [x?], `y;` FROM (SELECT 1 AS [x?], 2 AS `y;`) -- ?;\n", (), (1, 2)),
        ("SELECT 'it''s ?' || ?", ("!",), ("it's ?!",)),
        ("SELECT x'3f' = CAST('?' AS BLOB), ?", (7,), (1, 7)),
        ("SELECT ?2, ?1", ("a", "b"), ("b", "a")),
        ("SELECT ?", (2**63 - 1,), (2**63 - 1,)),
        (
            "SELECT ?, typeof(?1), ?",
            (2**53 + 1, -(2**31) - 1),
            (2**53 + 1, "integer", -(2**31) - 1),
        ),
        ("SELECT typeof(?), ?", (bytearray(b"x"), memoryview(b"y")), ("blob", b"y")),
        ("SELECT ?, ?", (True, 1.5), (1, 1.5)),
    ],
)
def test_what_sqlite3_accepts_libsql_accepts_alike(
    either: DatabaseClient, sql: str, args: tuple[Any, ...], expected: tuple[Any, ...]
) -> None:
    """Placeholders and ';' inside strings, quoted names and comments do not count; named
    and numbered parameters count as SQLite counts them."""
    assert tuple(either.execute(sql, args).rows[0]) == expected


class Status(str, enum.Enum):  # noqa: UP042 - its str() is "Status.ACTIVE", unlike StrEnum
    ACTIVE = "active"


class Plan(enum.IntEnum):
    PRO = 2


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __conform__(self, protocol: Any) -> Any:
        return self.cents if protocol is sqlite3.PrepareProtocol else None


class Unadaptable:
    pass


def _refuse(value: Unadaptable) -> Any:
    raise ValueError("cannot adapt")


def test_values_are_adapted_and_bound_as_sqlite3_binds_them(either: DatabaseClient) -> None:
    row = either.execute(
        "SELECT ?, typeof(?1), ?, ?, ?, typeof(?4)",
        (Status.ACTIVE, Plan.PRO, Money(250), array.array("B", b"ab")),
    ).rows[0]
    assert tuple(row) == ("active", "text", 2, 250, b"ab", "blob")
    sqlite3.register_adapter(Unadaptable, _refuse)
    try:
        with pytest.raises(ValueError, match=r"^cannot adapt$") as raised:
            either.execute("SELECT ?", (Unadaptable(),))
        assert type(raised.value) is ValueError
    finally:
        del sqlite3.adapters[(Unadaptable, sqlite3.PrepareProtocol)]


BIG = 2**40


@pytest.mark.parametrize(
    ("sql", "args", "expected"),
    [
        ("SELECT ? = '1099511627776'", (BIG,), [(0,)]),
        ("SELECT id FROM t WHERE txt = ? ORDER BY id", (BIG,), []),
        ("SELECT id FROM t WHERE a = ?", (BIG,), []),
        ("SELECT id FROM t WHERE a IN (?, 5)", (BIG,), []),
        ("SELECT count(*) FROM t WHERE txt > ?", (BIG,), [(1,)]),
        ("SELECT id FROM t WHERE n = ?", (BIG,), [(3,)]),
        ("SELECT ?, typeof(?1), ? * 2", (-(2**63), 2**62), [(-(2**63), "integer", 2.0**63)]),
        ("SELECT ? - ?, ?", (BIG, -BIG, 7), [(2 * BIG, 7)]),
        ("SELECT ?2, ?1, ?", (BIG, 2**62, 3), [(2**62, BIG, 3)]),
    ],
)
def test_a_wide_int_compares_as_sqlite3_compares_it(
    either: DatabaseClient, sql: str, args: tuple[Any, ...], expected: list[tuple[Any, ...]]
) -> None:
    """A bound int has no affinity: a text column's affinity turns it into text."""
    either.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, txt TEXT, a, n INTEGER)")
    either.execute(f"INSERT INTO t VALUES (1, '{BIG}.0', '{BIG}', NULL)")
    either.execute(f"INSERT INTO t VALUES (2, '0{BIG}', NULL, NULL), (3, NULL, NULL, {BIG})")
    assert [tuple(row) for row in either.execute(sql, args).rows] == expected


def outcome(client: DatabaseClient, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What ``client`` does with ``sql``: its row and the warnings it gave (but of a
    numbered placeholder, as the first releases of Python 3.12 gave), or its error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            row = tuple(client.execute(sql, args).rows[0])
        except sqlite3.Error as error:
            return type(error), "is a named parameter, but you supplied a sequence" in str(error)
    said = [str(w.message) for w in caught if not re.search(r"\('\?\d+'\)", str(w.message))]
    return row, said


@pytest.mark.parametrize(
    ("sql", "args", "expected"),
    [
        ("SELECT :a, ?, :a, ?5, ?", (1, 2, 3, 4, 5, 6), (1, 2, 1, 5, 6)),
        ("SELECT @a, $a, :a", (1, 2, 3), (1, 2, 3)),
        ("SELECT #a, ?, #a", (1, 2), (1, 2, 1)),
        ("SELECT ?, :a, ?", (1, BIG, 3), (1, BIG, 3)),
    ],
)
def test_a_named_placeholder_given_a_sequence_is_bound_warned_or_refused_as_sqlite3_does(
    tmp_path: Path, sql: str, args: tuple[Any, ...], expected: tuple[Any, ...]
) -> None:
    """By its number before Python 3.12, with a DeprecationWarning on 3.12 and 3.13,
    refused from 3.14 (a mapping of args binds it on every version, with sqlite3)."""
    outcomes = []
    for engine in ("sqlite3", "libsql"):
        client = DatabaseClient(str(tmp_path / f"{engine}.db"), owner="test", engine=engine)
        with closing(client):
            outcomes.append(outcome(client, sql, args))
    assert outcomes[0] == outcomes[1]
    bound = outcomes[0] == (expected, [])
    warned = outcomes[0][0] == expected and bool(outcomes[0][1])
    assert bound or warned or outcomes[0] == (sqlite3.ProgrammingError, True), outcomes


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", ";", " /* a */ ; ; -- b"])
def test_a_text_without_a_statement_gives_no_rows(either: DatabaseClient, sql: str) -> None:
    result = either.execute(sql)
    assert (result.rows, result.columns, result.rows_affected) == ([], (), 0)


def test_parameters_of_no_sequence_are_refused_as_sqlite3_refuses_them(
    either: DatabaseClient,
) -> None:
    for args in (None, 1, (value for value in [1])):
        with pytest.raises(sqlite3.ProgrammingError, match="parameters are of unsupported type"):
            either.execute("SELECT ?", args)  # type: ignore[arg-type]


def test_a_trigger_body_is_one_statement_with_its_semicolons(either: DatabaseClient) -> None:
    either.execute("CREATE TABLE g (x)")
    either.execute(
        "CREATE TRIGGER g_log AFTER INSERT ON g BEGIN "
        "UPDATE g SET x = x + 1 WHERE rowid = NEW.rowid; SELECT 1; END;"
    )
    either.execute("INSERT INTO g VALUES (?)", (1,))
    assert either.execute("SELECT x FROM g").rows[0][0] == 2
    with pytest.raises(sqlite3.ProgrammingError, match="one statement"):
        either.execute("CREATE TRIGGER g2 AFTER INSERT ON g BEGIN SELECT 1; END; SELECT 2")


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", 0),
        ("SELECT ?, ?", 2),
        ("SELECT ?3, ?", 4),
        ("SELECT :a, :a, @a, $a::b(c)", 3),
        ("SELECT a$b, '?', \"?\", [?], `?` -- ?\n /* ? */", 0),
        ("SELECT ?; SELECT ?, ?", 1),
        (" ; /* ; */ ; SELECT ?, ?", 2),
    ],
)
def test_parameters_are_counted_as_sqlite_counts_them(sql: str, expected: int) -> None:
    assert libsql_engine._shape(sql).parameters == expected
    with closing(sqlite3.connect(":memory:")) as conn:
        first = sql.split(";")[0] if sql.startswith("SELECT ?;") else sql
        conn.execute('CREATE TABLE a ("a$b")')
        if expected:
            with pytest.raises(sqlite3.ProgrammingError, match=f"statement uses {expected},"):
                conn.execute(first.replace("a$b", "1"), ())


SCRIPT = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER CHECK (balance >= 0));
CREATE TRIGGER no_overdraft BEFORE UPDATE ON accounts WHEN NEW.balance < 0
BEGIN SELECT RAISE(ABORT, 'overdrawn'); SELECT 1; END;
INSERT INTO accounts VALUES (1, 100); /* a comment; with a ';' */ -- and another;
SELECT * FROM accounts;
"""


@pytest.mark.parametrize(
    ("statement", "error", "message"),
    [
        ("UPDATE acounts SET balance = 0 WHERE id = 1", sqlite3.OperationalError, "no such table"),
        ("UPDATE accounts SET balance = -1", sqlite3.IntegrityError, "overdrawn"),
        ("INSERT INTO accounts VALUES (1, 5)", sqlite3.IntegrityError, "UNIQUE"),
        ("SELEC 1", sqlite3.OperationalError, "syntax error"),
        ("SELECT abs(-9223372036854775807 - 1)", sqlite3.OperationalError, "integer overflow"),
    ],
)
def test_a_script_stops_at_its_first_failing_statement_with_its_error(
    either: DatabaseClient, statement: str, error: type[Exception], message: str
) -> None:
    """Those before it stay done, those after it do not run; a trigger's body is one."""
    with pytest.raises(error, match=message) as raised:
        either.executescript(f"{SCRIPT}{statement}; INSERT INTO accounts VALUES (2, 50);")
    assert type(raised.value) is error
    assert [tuple(row) for row in either.execute("SELECT * FROM accounts").rows] == [(1, 100)]
    either.executescript("INSERT INTO accounts VALUES (3, 1); -- the last one, no ';' after")
    assert either.execute("SELECT count(*) FROM accounts").rows[0][0] == 2
    with pytest.raises(ValueError, match="embedded null character"):
        either.executescript("INSERT INTO accounts VALUES (4, 1);\0 SELECT 1;")
    assert either.execute("SELECT count(*) FROM accounts").rows[0][0] == 2


def test_a_statements_text_is_lexed_once_in_a_bounded_cache() -> None:
    sql = "INSERT INTO log (id, n) VALUES " + ", ".join("(?, ?)" for _ in range(500))
    shape = libsql_engine._shape
    libsql_engine.check_statement(sql, tuple(range(1000)))
    before = shape.cache_info()
    libsql_engine.check_statement(sql, tuple(range(1000)))
    assert libsql_engine.widened(sql, tuple(range(1000)))[0] is sql
    assert libsql_engine.rows_affected(sql, 500, [], ()) == 500
    after = shape.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)
    assert after.maxsize is not None
    assert after.maxsize <= 1024


def test_text_that_is_not_utf8_is_an_operational_error(either: DatabaseClient) -> None:
    either.execute("CREATE TABLE notes (body TEXT)")
    either.execute("INSERT INTO notes VALUES (CAST(x'6361666580' AS TEXT))")
    with pytest.raises(sqlite3.OperationalError, match="decode to UTF-8"):
        either.execute("SELECT body FROM notes")
    either.executescript("SELECT body FROM notes;")  # its rows are not read
    assert either.execute("SELECT length(CAST(body AS BLOB)) FROM notes").rows[0][0] == 5


def test_rows_read_like_sqlite3_rows_with_repeated_and_cased_names(
    either: DatabaseClient,
) -> None:
    either.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    either.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INT)")
    either.execute("INSERT INTO users VALUES (7, 'ada')")
    either.execute("INSERT INTO orders VALUES (100, 7)")
    row = either.execute("SELECT * FROM orders JOIN users ON users.id = orders.user_id").rows[0]
    assert row.keys() == ["id", "user_id", "id", "name"]
    assert (row["id"], row["ID"], row["Name"]) == (100, 100, "ada")  # the first "id"
    assert dict(row) == {"id": 100, "user_id": 7, "name": "ada"}
    assert (len(row), row[-1], row[1:3], tuple(row)) == (4, "ada", (7, 7), (100, 7, 7, "ada"))
    with pytest.raises(IndexError):
        row["nope"]
    assert row != (100, 7, 7, "ada")  # a row is not a tuple
    assert not isinstance(row, tuple)
    again = either.execute("SELECT * FROM orders JOIN users ON users.id = orders.user_id").rows[0]
    assert row == again
    assert hash(row) == hash(again)
    assert row != either.execute("SELECT 100, 7, 7, 'ada'").rows[0]  # other column names


@pytest.mark.parametrize(
    ("sql", "args", "error"),
    [
        ("INSERT INTO s (n) VALUES (?)", ("abc",), sqlite3.IntegrityError),  # STRICT
        ("INSERT INTO s (id) VALUES (?)", ("abc",), sqlite3.IntegrityError),  # rowid
        ("INSERT INTO g VALUES (-1)", (), sqlite3.IntegrityError),  # RAISE(ABORT)
        ("INSERT INTO g VALUES (0)", (), sqlite3.IntegrityError),  # RAISE(FAIL)
        ("INSERT INTO g VALUES (1)", (), sqlite3.IntegrityError),  # RAISE(ROLLBACK)
        ("INSERT INTO s (n) VALUES (NULL), (NULL)", (), None),
        ("SELECT zeroblob(2000000000)", (), sqlite3.DataError),
        ("SELECT * FROM nope", (), sqlite3.OperationalError),
    ],
)
def test_errors_have_the_class_sqlite3_gives_them(
    either: DatabaseClient, sql: str, args: tuple[Any, ...], error: type[Exception] | None
) -> None:
    either.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, n INTEGER) STRICT")
    either.execute("CREATE TABLE g (x)")
    for when, action in [("x < 0", "ABORT"), ("x = 0", "FAIL"), ("x = 1", "ROLLBACK")]:
        either.execute(
            f"CREATE TRIGGER g_{action} BEFORE INSERT ON g WHEN NEW.{when} "
            f"BEGIN SELECT RAISE({action}, 'it''s {action}'); END"
        )
    if error is None:
        either.execute(sql, args)
        return
    with pytest.raises(error) as raised:
        either.execute(sql, args)
    assert type(raised.value) is error


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("UPDATE acct SET n = 2", sqlite3.IntegrityError),
        ("DELETE FROM acct", sqlite3.IntegrityError),
        ("INSERT INTO log VALUES ('bad')", sqlite3.IntegrityError),
        ("INSERT INTO log SELECT * FROM nope", sqlite3.OperationalError),
    ],
)
def test_a_triggers_raise_is_told_from_an_error_with_its_words(
    either: DatabaseClient, sql: str, error: type[Exception]
) -> None:
    either.executescript(
        "CREATE TABLE acct (id INTEGER PRIMARY KEY, state TEXT, n INTEGER);"
        "INSERT INTO acct VALUES (1, 'frozen', 1);"
        "CREATE TRIGGER frozen BEFORE UPDATE ON acct WHEN OLD.state = 'frozen' "
        "BEGIN SELECT RAISE(ABORT, 'account is locked'); END;"
        "CREATE TRIGGER kept BEFORE DELETE ON acct "
        "BEGIN SELECT RAISE(ROLLBACK, 'order is locked by its customer'); END;"
        "CREATE TABLE log (m);"
        "CREATE TRIGGER bad BEFORE INSERT ON log WHEN NEW.m = 'bad' "
        "BEGIN SELECT RAISE(FAIL, 'no such table: nope'); END;"
    )
    with pytest.raises(error) as raised:
        either.execute(sql)
    assert type(raised.value) is error


def test_backup_replaces_an_existing_copy(either: DatabaseClient, tmp_path: Path) -> None:
    either.execute("CREATE TABLE t (x)")
    either.execute("INSERT INTO t VALUES (1)")
    copy = tmp_path / "copy.db"
    either.backup(copy)
    either.execute("INSERT INTO t VALUES (2)")
    either.backup(copy)
    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert sorted(path.name for path in tmp_path.iterdir() if "copy" in path.name) == ["copy.db"]


def test_backup_over_a_copy_another_connection_holds_in_wal_mode(
    either: DatabaseClient, tmp_path: Path
) -> None:
    """The old copy's -wal must not be replayed onto the new one."""
    either.execute("CREATE TABLE t (x)")
    either.execute("INSERT INTO t VALUES ('new')")
    copy = tmp_path / "copy.db"
    with closing(sqlite3.connect(copy, isolation_level=None)) as reader:
        reader.execute("PRAGMA journal_mode=WAL")
        reader.execute("CREATE TABLE t (x)")
        reader.execute("INSERT INTO t VALUES ('yesterday')")
        either.backup(copy)
        assert reader.execute("SELECT * FROM t").fetchall() == [("new",)]
        with closing(sqlite3.connect(copy)) as fresh:
            assert fresh.execute("SELECT * FROM t").fetchall() == [("new",)]
    with closing(sqlite3.connect(copy)) as fresh:
        assert fresh.execute("SELECT * FROM t").fetchall() == [("new",)]
    assert not [path.name for path in tmp_path.iterdir() if ".tmp" in path.name]


def test_a_backup_file_and_a_missing_directory_are_as_sqlite3_makes_them(
    either: DatabaseClient, tmp_path: Path
) -> None:
    either.execute("CREATE TABLE t (x)")
    with closing(sqlite3.connect(tmp_path / "made-by-sqlite3.db")) as made:
        made.execute("CREATE TABLE t (x)")
    either.backup(tmp_path / "copy.db")
    assert (tmp_path / "copy.db").stat().st_mode == (tmp_path / "made-by-sqlite3.db").stat().st_mode
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        either.backup(tmp_path / "missing" / "copy.db")


def test_a_libsql_backup_inside_a_transaction_says_what_to_do(
    client: DatabaseClient, tmp_path: Path
) -> None:
    with client.transaction() as tx:
        tx.execute("INSERT INTO items (name) VALUES ('pen')")
        with pytest.raises(RuntimeError, match=r"needs the sqlite3 engine.*after the trans"):
            client.backup(tmp_path / "copy.db")
    assert not list(tmp_path.glob("*copy*"))


@pytest.fixture
def remote_allowed() -> Iterator[None]:
    """The test session refuses remote databases; these tests reach only a closed port."""
    previous = forbid_remote_databases(None)
    yield
    forbid_remote_databases(previous)


@pytest.mark.usefixtures("remote_allowed")
def test_an_unreachable_remote_database_names_its_setting() -> None:
    client = DatabaseClient(
        "libsql://127.0.0.1:9?authToken=secret-token", engine="libsql", source="DATABASE_URL"
    )  # libsql connects at the first statement
    with closing(client), pytest.raises(RemoteDatabaseError) as raised:
        client.execute("SELECT 1")
    message = str(raised.value)
    assert "libsql://127.0.0.1:9 (DATABASE_URL) could not be reached" in message
    assert "TURSO_AUTH_TOKEN" in message
    assert "network" in message
    assert "secret-token" not in message
    assert isinstance(raised.value, sqlite3.OperationalError)


@pytest.mark.usefixtures("remote_allowed")
def test_a_url_of_a_client_never_shows_its_password_and_ws_is_refused() -> None:
    client = DatabaseClient(
        "https://user:SECRETPW@127.0.0.1:9", engine="libsql", source="DATABASE_URL"
    )
    with closing(client), pytest.raises(RemoteDatabaseError) as raised:
        client.execute("SELECT 1")
    assert "https://127.0.0.1:9 (DATABASE_URL)" in str(raised.value)
    assert "SECRETPW" not in str(raised.value) + repr(client)
    with pytest.raises(DatabaseConfigError, match=r"^DATABASE_URL=.*libsql:// or https://"):
        DatabaseClient("wss://127.0.0.1:9", engine="libsql", source="DATABASE_URL")


@pytest.mark.usefixtures("remote_allowed")
def test_an_embedded_replica_that_cannot_sync_names_both_settings(tmp_path: Path) -> None:
    with pytest.raises(RemoteDatabaseError) as raised:
        DatabaseClient(
            str(tmp_path / "replica.db"),
            engine="libsql",
            sync_url="libsql://127.0.0.1:9",
            source="DATABASE_URL",
        )
    message = str(raised.value)
    assert "replica.db' (DATABASE_URL) could not sync from libsql://127.0.0.1:9" in message
    assert "TURSO_DATABASE_URL" in message
    assert "TURSO_AUTH_TOKEN" in message


def _stream_error(message: str, code: str) -> ValueError:
    """A statement's error as libsql reports what a remote database answered."""
    fields = f'message: "{message}", code: "{code}"'
    return ValueError("Hrana: `stream error: `Error { " + fields + " }``")


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (
            _stream_error(
                "SQLITE_CONSTRAINT: UNIQUE constraint failed: users.email", "SQLITE_CONSTRAINT"
            ),
            sqlite3.IntegrityError,
            "UNIQUE constraint failed: users.email",
        ),
        (
            _stream_error(
                'SQLite error: CHECK constraint failed: \\"n\\" >= 0', "SQLITE_CONSTRAINT_CHECK"
            ),
            sqlite3.IntegrityError,
            'CHECK constraint failed: "n" >= 0',
        ),
        (
            _stream_error("SQLITE_ERROR: no such table: nope", "SQLITE_ERROR"),
            sqlite3.OperationalError,
            "no such table: nope",
        ),
        (_stream_error("string or blob too big", "SQLITE_TOOBIG"), sqlite3.DataError, None),
        (_stream_error("file is not a database", "SQLITE_NOTADB"), sqlite3.DatabaseError, None),
        (
            _stream_error('near \\"SELEC\\": syntax error', "SQL_PARSE_ERROR"),
            sqlite3.OperationalError,
            'near "SELEC": syntax error',
        ),
        (
            ValueError("Hrana: `http error: `error trying to connect: tcp connect error``"),
            RemoteDatabaseError,
            "could not be reached",
        ),
        (ValueError("Hrana: `api error: `status=401 Unauthorized``"), RemoteDatabaseError, None),
    ],
)
def test_a_remote_databases_sql_errors_are_sqlite3_errors_and_only_failures_to_reach_it_remote(
    error: ValueError, expected: type[sqlite3.Error], message: str | None
) -> None:
    translated = libsql_engine.translate_error(error, remote="it could not be reached")
    assert type(translated) is expected
    assert message is None or str(translated).endswith(message)


HOLD = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("engine", ["sqlite3", "libsql"])
def test_a_database_another_process_holds_is_waited_for_the_busy_timeout_only(
    tmp_path: Path, engine: Engine
) -> None:
    """Another process: libsql does not see the locks of this process's sqlite3."""
    path = tmp_path / "held.db"
    with closing(sqlite3.connect(path)) as setup:
        setup.execute("CREATE TABLE a (x)")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        started = time.monotonic()
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                DatabaseClient(
                    str(path),
                    engine=engine,
                    pragmas={"busy_timeout": "1000", "journal_mode": "WAL"},
                )
            waited = time.monotonic() - started
        finally:
            holder.kill()
    assert 0.95 < waited < 1.8  # twice the timeout would be 2 s
