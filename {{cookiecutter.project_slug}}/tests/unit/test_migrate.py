"""Migrations on databases that hold data, and where ``python -m lib.migrate`` refuses to go.

The test template is built from empty tables, so a migration that only fails on real rows
never fails in the integration tests: these tests migrate SQLite files that hold rows.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import sqlite_utils

from lib import migrate
from lib.database import DatabaseClient
from lib.scope_databases import cached_template
from tests.unit.disk_limits import BULK_MIGRATION, run_with_file_size_limit
from tests.unit.holding import new_database_held_for

PROJECT_ROOT = migrate.MIGRATIONS_DIR.parent

SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE books (
    id INTEGER PRIMARY KEY,
    author_id INTEGER NOT NULL REFERENCES authors (id),
    title TEXT NOT NULL
);
"""
SEED = """
INSERT INTO authors (id, name) VALUES (1, 'Le Guin'), (2, 'Calvino');
INSERT INTO books (id, author_id, title) VALUES
    (1, 1, 'The Dispossessed'), (2, 2, 'Invisible Cities'), (3, 2, 'Cosmicomics');
"""
# SQLite's recipe for a change ALTER TABLE cannot make: new table, copy, drop, rename.
REBUILD_AUTHORS = """
CREATE TABLE new_authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE CHECK (name <> ''));
INSERT INTO new_authors (id, name) SELECT id, name FROM authors;
DROP TABLE authors;
ALTER TABLE new_authors RENAME TO authors;
"""
# The same rebuild, but it forgets author 2, whom books 2 and 3 still reference.
REBUILD_LOSING_AN_AUTHOR = REBUILD_AUTHORS.replace("FROM authors;", "FROM authors WHERE id <> 2;")
BOOKS_BY_AUTHOR = (
    "SELECT authors.name, books.title FROM books JOIN authors ON authors.id = books.author_id "
    "ORDER BY books.id"
)


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A migrations directory holding only the first migration: authors and their books."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_authors_and_books.sql").write_text(SCHEMA)
    return directory


@pytest.fixture
def client(tmp_path: Path, migrations: Path) -> Iterator[DatabaseClient]:
    """A database file, migrated and holding rows, on a client as the application opens it
    (foreign keys on)."""
    client = DatabaseClient(str(tmp_path / "app.db"), owner="test_migrate")
    migrate.apply_migrations(client.db, migrations)
    client.executescript(SEED)
    yield client
    client.close()


def foreign_keys(client: DatabaseClient) -> int:
    value: int = client.execute("PRAGMA foreign_keys").rows[0][0]
    return value


def books_by_author(client: DatabaseClient) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in client.execute(BOOKS_BY_AUTHOR).rows]


def test_rebuilding_a_referenced_table_keeps_its_rows(
    client: DatabaseClient, migrations: Path
) -> None:
    before = books_by_author(client)
    (migrations / "0002_unique_author_names.sql").write_text(REBUILD_AUTHORS)

    assert migrate.apply_migrations(client.db, migrations) == ["0002_unique_author_names"]

    assert books_by_author(client) == before
    authors = client.execute("SELECT sql FROM sqlite_master WHERE name = 'authors'").rows[0][0]
    assert "UNIQUE" in authors
    assert client.execute("PRAGMA foreign_key_check").rows == []
    assert foreign_keys(client) == 1
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):  # enforced again
        client.execute("INSERT INTO books (author_id, title) VALUES (99, 'Nobody')")


@pytest.mark.parametrize("enforced", ["ON", "OFF"])
def test_a_run_leaving_a_dangling_reference_applies_nothing(
    client: DatabaseClient, migrations: Path, enforced: str
) -> None:
    client.execute(f"PRAGMA foreign_keys={enforced}")
    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    (migrations / "0003_unique_author_names.sql").write_text(REBUILD_LOSING_AN_AUTHOR)
    schema = client.execute("SELECT name, sql FROM sqlite_master ORDER BY name").rows

    with pytest.raises(migrate.MigrationError) as failure:
        migrate.apply_migrations(client.db, migrations)

    message = str(failure.value)
    assert "0002_genres.sql, 0003_unique_author_names.sql" in message
    assert "2 row(s) of books (rowid 2, 3) reference missing authors rows" in message
    assert "no migration of this run was applied" in message
    with closing(sqlite3.connect(client.path)) as conn:
        assert migrate.applied_migrations(conn) == ["0001_authors_and_books"]
    assert client.execute("SELECT name, sql FROM sqlite_master ORDER BY name").rows == schema
    assert len(books_by_author(client)) == 3
    assert foreign_keys(client) == (enforced == "ON")
    assert not client.get_connection_stats()["in_transaction"]


def test_dangling_references_the_database_already_had_do_not_fail_a_migration(
    client: DatabaseClient, migrations: Path
) -> None:
    """Rows written with enforcement off (sqlite3's default) belong to the data: an
    unrelated migration applies, and one adding dangling references still fails."""
    client.execute("PRAGMA foreign_keys=OFF")
    client.execute("INSERT INTO books (author_id, title) VALUES (42, 'Orphan')")
    (migrations / "0002_index.sql").write_text("CREATE INDEX books_title ON books (title);")
    assert migrate.apply_migrations(client.db, migrations) == ["0002_index"]

    (migrations / "0003_unique_author_names.sql").write_text(REBUILD_LOSING_AN_AUTHOR)
    with pytest.raises(migrate.MigrationError, match=r"2 row\(s\) of books \(rowid 2, 3\)"):
        migrate.apply_migrations(client.db, migrations)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param(
            "CREATE INDEX a ON t (x); CREATE INDEX b ON t (y);",
            ["CREATE INDEX a ON t (x);", "CREATE INDEX b ON t (y);"],
            id="two-on-one-line",
        ),
        pytest.param(
            "INSERT INTO t VALUES ('a;b'); -- one; two\nSELECT 1;",
            ["INSERT INTO t VALUES ('a;b');", "-- one; two\nSELECT 1;"],
            id="semicolons-in-a-string-and-a-comment",
        ),
        pytest.param(
            "CREATE TRIGGER t AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END; SELECT 3",
            ["CREATE TRIGGER t AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;", "SELECT 3"],
            id="a-trigger-and-no-final-semicolon",
        ),
        pytest.param(
            "SELECT 1; ; -- the end\n/* really; */",
            ["SELECT 1;"],
            id="pieces-of-comments-alone-left-out",
        ),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert migrate.split_statements(script) == expected


def test_a_failing_statement_names_its_file_and_restores_foreign_keys(
    client: DatabaseClient, migrations: Path
) -> None:
    (migrations / "0002_broken.sql").write_text("CREATE TABLE ok (id INTEGER);\nCREATE TABLE (;")
    with pytest.raises(migrate.MigrationError, match=r"0002_broken\.sql failed at statement 2"):
        migrate.apply_migrations(client.db, migrations)
    assert foreign_keys(client) == 1
    assert client.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ok'").rows[0][0] == 0


def test_a_migration_that_is_not_utf8_names_its_file_and_applies_nothing(
    client: DatabaseClient, migrations: Path
) -> None:
    (migrations / "0002_cafe.sql").write_bytes(b"-- caf\xe9\nCREATE TABLE cafe (id INTEGER);")
    with pytest.raises(migrate.MigrationError, match=r"0002_cafe\.sql is not UTF-8 text"):
        migrate.apply_migrations(client.db, migrations)
    assert client.execute("SELECT count(*) FROM sqlite_master WHERE name = 'cafe'").rows[0][0] == 0


def test_migrations_apply_in_the_natural_order_of_their_names_without_down_files(
    tmp_path: Path,
) -> None:
    """``2_`` before ``10_`` even unpadded; a ``.down.sql`` file undoes its migration."""
    for name in ["10_c.sql", "2_b.sql", "1_a.sql", "1_a.down.sql", "2_b.DOWN.sql", "notes.txt"]:
        (tmp_path / name).write_text("SELECT 1;")
    names = [path.name for path in migrate.migration_files(tmp_path)]
    assert names == ["1_a.sql", "2_b.sql", "10_c.sql"]


def test_migrations_only_in_subdirectories_are_an_error_not_an_empty_schema(
    tmp_path: Path,
) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "0001_a.sql").write_text("CREATE TABLE a (id INTEGER);")
    with pytest.raises(migrate.MigrationsDirectoryError) as raised:
        migrate.migration_files(tmp_path)
    assert f"only in its subdirectories ({tmp_path / 'v1'})" in str(raised.value)
    assert migrate.migration_files(tmp_path / "v1") == [tmp_path / "v1" / "0001_a.sql"]


def test_a_directory_without_migrations_is_an_error_not_an_empty_schema(tmp_path: Path) -> None:
    with pytest.raises(migrate.MigrationsDirectoryError, match=r"\(it is empty\)"):
        migrate.migration_files(tmp_path)
    (tmp_path / "0001_a.down.sql").write_text("DROP TABLE a;")
    with pytest.raises(migrate.MigrationsDirectoryError, match=r"\(it holds 0001_a.down.sql\)"):
        migrate.migration_files(tmp_path)
    database = tmp_path / "app.db"
    result = run_cli(tmp_path, {"DATABASE_URL": str(database)}, "--migrations", str(tmp_path))
    assert result.returncode == 2, result  # the setting is wrong, not a migration
    assert result.stderr.startswith(f"error: migrations directory {tmp_path} has no *.sql")
    assert not database.exists()


@pytest.mark.parametrize("control", ["COMMIT", "END", "ROLLBACK", "BEGIN"])
def test_a_migration_controlling_the_transaction_applies_nothing(
    client: DatabaseClient, migrations: Path, control: str
) -> None:
    """A COMMIT in a migration would apply part of the run behind the runner, a ROLLBACK
    undo it: refused as the statement is compiled, before anything is committed."""
    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    source = f"CREATE TABLE refunds (id INTEGER PRIMARY KEY);\n{control};\n"
    (migrations / "0003_refunds.sql").write_text(source)
    shown = "COMMIT or END" if control in ("COMMIT", "END") else control
    expected = f"0003_refunds.sql failed at statement 2: {shown} is not allowed in a migration"
    with pytest.raises(migrate.MigrationError, match=expected):
        migrate.apply_migrations(client.db, migrations)

    with closing(sqlite3.connect(client.path)) as conn:
        assert migrate.applied_migrations(conn) == ["0001_authors_and_books"]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert not tables & {"genres", "refunds"}
    assert foreign_keys(client) == 1
    client.execute("SAVEPOINT later")  # the guard is gone once the migrations are done
    client.execute("RELEASE later")
    client.execute("BEGIN")
    client.execute("COMMIT")


def test_a_migration_may_use_its_own_savepoints(client: DatabaseClient, migrations: Path) -> None:
    source = "SAVEPOINT step;\nCREATE TABLE genres (id INTEGER PRIMARY KEY);\nRELEASE step;\n"
    (migrations / "0002_genres.sql").write_text(source)
    assert migrate.apply_migrations(client.db, migrations) == ["0002_genres"]
    assert client.execute("SELECT count(*) FROM genres").rows[0][0] == 0


def test_migrating_inside_an_open_transaction_is_refused(
    client: DatabaseClient, migrations: Path
) -> None:
    """Foreign keys cannot be switched off inside a transaction: rather than migrate with
    them on, say so."""
    (migrations / "0002_unique_author_names.sql").write_text(REBUILD_AUTHORS)
    with client.transaction(), pytest.raises(migrate.MigrationError, match="open transaction"):
        migrate.apply_migrations(client.db, migrations)
    assert migrate.pending_migrations(client, migrations) == ["0002_unique_author_names"]


def test_pending_migrations_are_the_files_not_recorded_in_order_and_found_by_reading_only(
    tmp_path: Path, migrations: Path
) -> None:
    (migrations / "0010_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    (migrations / "0002_prizes.sql").write_text("CREATE TABLE prizes (id INTEGER PRIMARY KEY);")
    fresh = DatabaseClient(str(tmp_path / "fresh.db"), owner="a database never migrated")
    try:
        assert migrate.pending_migrations(fresh, migrations) == [
            "0001_authors_and_books",
            "0002_prizes",
            "0010_genres",
        ]
        assert fresh.execute("SELECT count(*) FROM sqlite_master").rows[0][0] == 0

        migrate.apply_migrations(fresh.db, migrations)
        assert migrate.pending_migrations(fresh, migrations) == []
        fresh.execute(f"DELETE FROM {migrate.MIGRATIONS_TABLE} WHERE name = '0002_prizes'")
        assert migrate.pending_migrations(fresh, migrations) == ["0002_prizes"]
    finally:
        fresh.close()


def test_the_template_build_can_rebuild_a_table_that_seed_rows_reference(
    migrations: Path, tmp_path: Path
) -> None:
    (migrations / "0002_seed.sql").write_text(SEED)
    (migrations / "0003_unique_author_names.sql").write_text(REBUILD_AUTHORS)
    template = cached_template(migrations, tmp_path / "data")
    with closing(sqlite3.connect(template)) as conn:
        assert len(conn.execute(BOOKS_BY_AUTHOR).fetchall()) == 3
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m lib.migrate`` of this project with only ``env`` set, run in ``cwd``: were
    the default ``file:./data/app.db`` ever opened, it would be a file of the test's, never
    the developer's database."""
    return subprocess.run(
        [sys.executable, "-m", "lib.migrate", *args],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(PROJECT_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_says_when_the_disk_refuses_the_write(migrations: Path, tmp_path: Path) -> None:
    """A file size limit stands in for a full disk: the advice is to make room, not to
    check DATABASE_URL."""
    (migrations / "0099_bulk.sql").write_text(BULK_MIGRATION)
    result = run_with_file_size_limit(
        200_000,
        f"""
        import runpy
        sys.argv = ["lib.migrate", "--migrations", {str(migrations)!r}]
        runpy.run_module("lib.migrate", run_name="__main__")
        """,
        cwd=tmp_path,
        env={"DATABASE_URL": "file:./app.db"},
    )
    assert result.returncode == 1, result.stderr
    assert "the disk refused the write: make room on it (is it full?)" in result.stderr


def test_the_cli_migrates_a_local_file_holding_rows(
    client: DatabaseClient, migrations: Path, tmp_path: Path
) -> None:
    client.close()
    (migrations / "0002_unique_author_names.sql").write_text(REBUILD_AUTHORS)
    env = {"DATABASE_URL": f"file:{client.path}"}
    result = run_cli(tmp_path, env, "--migrations", str(migrations))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == (
        f"Applied 1 migration(s) to {client.path}: 0002_unique_author_names"
    )
    with closing(sqlite3.connect(client.path)) as conn:
        assert len(conn.execute(BOOKS_BY_AUTHOR).fetchall()) == 3


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"DATABASE_URL": "libsql://x.turso.io?authToken=secret-token"},
            "DATABASE_URL=libsql://x.turso.io is a remote Turso/libSQL database",
            id="libsql-url",
        ),
        pytest.param(
            {"TURSO_DATABASE_URL": "libsql://x.turso.io", "TURSO_AUTH_TOKEN": "secret-token"},
            "TURSO_DATABASE_URL=libsql://x.turso.io is a remote Turso/libSQL database",
            id="turso-url",
        ),
        pytest.param(
            {"DATABASE_URL": "file:REPLICA", "TURSO_DATABASE_URL": "libsql://x.turso.io"},
            "DATABASE_URL=REPLICA is an embedded replica of TURSO_DATABASE_URL=libsql://x.turso.io",
            id="embedded-replica",
        ),
    ],
)
def test_the_cli_refuses_remote_databases_and_says_what_to_do(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    replica = tmp_path / "replica.db"
    env = {name: value.replace("REPLICA", str(replica)) for name, value in env.items()}
    result = run_cli(tmp_path, env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {expected.replace('REPLICA', str(replica))}")
    assert "turso db shell <database-name> <" in result.stderr
    assert "secret-token" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"
    assert not replica.exists(), "the local replica was left alone"
    assert not (tmp_path / "data").exists(), "nor was the default database opened"


@pytest.mark.parametrize(
    ("module", "said"),
    [
        ("sqlite_utils", "sqlite_utils, which is not installed here"),
        ("sqlite_utils.migrations", "of sqlite-utils 4 or later (the one installed here is"),
    ],
    ids=["missing", "too old"],
)
def test_the_cli_names_a_missing_sqlite_utils(tmp_path: Path, module: str, said: str) -> None:
    without = f"import runpy, sys; sys.modules[{module!r}] = None; "
    without += "runpy.run_module('lib.migrate', run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", without],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: migrations run with {module}"), result.stderr
    assert said in result.stderr
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"
    assert list(tmp_path.iterdir()) == [], "no database file, nor its directory"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"DATABASE_URL": "ftp://example.com/app.db"},
            "DATABASE_URL=ftp://example.com... uses the unsupported scheme",
            id="unsupported-scheme",
        ),
        pytest.param(
            {"TURSO_DATABASE_URL": "./data/app.db"},
            "TURSO_DATABASE_URL='./data/app.db' must be a libsql://",
            id="turso-url-not-remote",
        ),
        pytest.param(
            {"DATABASE_URL": "sqlite:data/app.db"},
            "DATABASE_URL=sqlite:... uses the unsupported scheme 'sqlite'",
            id="scheme-without-slashes",
        ),
        pytest.param(
            {"DATABASE_DRIVER": "postgres"},
            "DATABASE_DRIVER='postgres' is not one of",
            id="unknown-driver",
        ),
    ],
)
def test_the_cli_reports_a_bad_setting_without_a_traceback(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    result = run_cli(tmp_path, env, "--list")
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: {expected}")
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"
    assert not (tmp_path / "data").exists(), "no database was opened"


@pytest.mark.parametrize("command", [(), ("--list",)])
def test_the_cli_names_a_pending_migration_that_is_not_utf8(
    migrations: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Listed as pending, it would fail only once applied."""
    (migrations / "0002_cafe.sql").write_bytes(b"-- caf\xe9\nCREATE TABLE cafe (id INTEGER);")
    database = tmp_path / "app.db"
    env = {"DATABASE_URL": str(database)}
    result = run_cli(tmp_path, env, "--migrations", str(migrations), *command)
    assert result.returncode == 1, result
    assert result.stderr.startswith("error: migration 0002_cafe.sql is not UTF-8 text")
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"


@pytest.mark.parametrize("command", [(), ("--list",)])
def test_the_cli_reports_a_file_that_is_not_a_database_without_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, but text long enough to have a header of its own\n" * 2)
    result = run_cli(tmp_path, {"DATABASE_URL": str(notes)}, *command)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: cannot open the SQLite database ")
    assert str(notes) in result.stderr
    assert "(from DATABASE_URL)" in result.stderr
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"


@pytest.mark.parametrize("command", [(), ("--list",)])
def test_the_cli_names_the_variable_of_a_directory_given_as_the_database(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = run_cli(tmp_path, {"DATABASE_URL": str(tmp_path)}, *command)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: cannot open the SQLite database '{tmp_path}' (from")
    assert f"it is a directory: point DATABASE_URL at a file, such as '{tmp_path / 'app.db'}'" in (
        result.stderr
    )


def test_listing_a_database_it_may_not_read_never_suggests_listing() -> None:
    """SQLite writes a WAL database's -shm file even to read it: ``--list`` fails in a
    directory it may not write, and saying "use --list, which only reads" would loop."""
    error = sqlite3.OperationalError("attempt to write a readonly database")
    for path in ("/srv/app.db", "file:/srv/app.db?mode=ro"):
        message = migrate._database_problem(path, error, listing=True)
        assert message.startswith(f"cannot read {path!r} (from DATABASE_URL): attempt to write")
        assert "(its -shm) even to read it" in message
        assert "--list" not in message


def test_listing_pending_migrations_writes_nothing(
    client: DatabaseClient, migrations: Path, tmp_path: Path
) -> None:
    """Not a directory or database for a mistyped DATABASE_URL, not a byte of one that exists."""
    missing = run_cli(
        tmp_path, {"DATABASE_URL": "file:./dta/app.db"}, "--migrations", str(migrations), "--list"
    )
    assert (missing.returncode, missing.stderr) == (0, ""), missing
    assert missing.stdout == "1 pending migration(s) for ./dta/app.db: 0001_authors_and_books\n"
    assert not (tmp_path / "dta").exists()

    client.close()
    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    files = {path.name: path.read_bytes() for path in tmp_path.glob("app.db*")}
    env = {"DATABASE_URL": client.path}
    result = run_cli(tmp_path, env, "--list", "--migrations", str(migrations))
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.strip() == f"1 pending migration(s) for {client.path}: 0002_genres"
    assert {path.name: path.read_bytes() for path in tmp_path.glob("app.db*")} == files


def test_the_cli_explains_a_locked_database_without_a_traceback(
    client: DatabaseClient, migrations: Path, tmp_path: Path
) -> None:
    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    client.execute("BEGIN IMMEDIATE")  # a writer that does not let go
    try:
        env = {"DATABASE_URL": client.path}
        result = run_cli(tmp_path, env, "--migrations", str(migrations))
    finally:
        client.execute("ROLLBACK")
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"error: cannot migrate {client.path!r} (from DATABASE_URL)")
    assert "another connection holds a write lock on it" in result.stderr
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"


def test_the_cli_names_a_missing_migrations_directory(tmp_path: Path) -> None:
    env = {"DATABASE_URL": str(tmp_path / "app.db")}
    result = run_cli(tmp_path, env, "--migrations", str(tmp_path / "db" / "migrations"))
    assert result.returncode == 2, result
    assert "does not exist: pass --migrations" in result.stderr
    assert not (tmp_path / "app.db").exists()


def migrate_in_process(
    monkeypatch: pytest.MonkeyPatch, database: Path, migrations: Path, *args: str
) -> int:
    """``migrate.main`` in this process, with only ``DATABASE_URL`` of the settings set."""
    for name in ("TURSO_DATABASE_URL", "TURSO_AUTH_TOKEN", "DATABASE_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", str(database))
    return migrate.main(["--migrations", str(migrations), *args])


def test_a_run_started_while_another_migrates_waits_and_finds_nothing_pending(
    client: DatabaseClient, migrations: Path
) -> None:
    """The write lock is taken before anything is read: a deferred BEGIN would read, then
    fail at its first write ("database is locked") once the other run had committed."""
    genres = "CREATE TABLE genres (id INTEGER PRIMARY KEY);"
    (migrations / "0002_genres.sql").write_text(genres)
    other = sqlite3.connect(client.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the first run, half-way through
    outcome: list[object] = []

    def second_run() -> None:
        try:
            outcome.append(migrate.apply_migrations(client.db, migrations))
        except Exception as error:  # shown by the assertion below, not lost in the thread
            outcome.append(error)

    second = threading.Thread(target=second_run)
    second.start()
    try:
        second.join(0.5)  # waiting for the lock, up to the busy timeout
        assert second.is_alive()
        other.execute(genres)
        other.execute(
            f"INSERT INTO {migrate.MIGRATIONS_TABLE} (migration_set, name, applied_at) "
            "VALUES ('app', '0002_genres', 'now')"
        )
        other.execute("COMMIT")
    finally:
        second.join(10)
        other.close()
    assert outcome == [[]]
    with closing(sqlite3.connect(client.path)) as conn:
        assert migrate.applied_migrations(conn) == ["0001_authors_and_books", "0002_genres"]


def test_a_run_waits_for_a_new_database_another_run_is_setting_up(
    migrations: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Switching a new file to WAL does not wait for another connection's lock, as the
    busy timeout would: two runs started at once on a new database both succeed."""
    database = tmp_path / "new.db"
    with new_database_held_for(0.5, database):
        code = migrate_in_process(monkeypatch, database, migrations)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.startswith("Applied 1 migration(s)")


def test_a_read_only_url_is_named_as_such_not_the_first_migration(
    client: DatabaseClient, migrations: Path, tmp_path: Path
) -> None:
    client.close()
    url = f"file:{client.path}?mode=ro"
    nothing_to_do = run_cli(tmp_path, {"DATABASE_URL": url}, "--migrations", str(migrations))
    assert (nothing_to_do.returncode, nothing_to_do.stderr) == (0, ""), nothing_to_do
    assert nothing_to_do.stdout.startswith("No pending migrations")

    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    result = run_cli(tmp_path, {"DATABASE_URL": url}, "--migrations", str(migrations))
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: cannot migrate {url!r} (from DATABASE_URL): ")
    assert "the URL opens it read-only" in result.stderr
    assert f"set DATABASE_URL without that parameter (file:{client.path})" in result.stderr
    assert "0002_genres" not in result.stderr
    assert "?mode=ro" not in result.stderr.partition("(from DATABASE_URL)")[2], "no way out"
    assert len(result.stderr.splitlines()) == 1, "one message, no traceback"
    with closing(sqlite3.connect(client.path)) as conn:
        assert migrate.applied_migrations(conn) == ["0001_authors_and_books"]


def test_a_database_file_it_may_not_write_gets_its_own_advice(tmp_path: Path) -> None:
    """SQLite opens such a file read-only without a word (root may write any file, so the
    file itself cannot be made unwritable here): no read-only URL is suggested."""
    path = str(tmp_path / "app.db")
    problem = migrate._read_only_problem(path)
    assert problem.startswith(f"cannot migrate {path!r} (from DATABASE_URL)")
    assert "the database is read-only to this process" in problem
    assert "make both writable for this user, or point DATABASE_URL at a writable file" in problem
    assert "mode=ro" not in problem


def test_a_database_that_cannot_be_written_fails_before_any_migration(
    client: DatabaseClient, migrations: Path
) -> None:
    """Found by a write before the first migration's, which would otherwise be blamed."""
    client.close()
    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    read_only = DatabaseClient(f"file:{client.path}?mode=ro", owner="test_migrate")
    try:
        with pytest.raises(migrate.ReadOnlyDatabaseError, match="the database is read-only"):
            migrate.apply_migrations(read_only.db, migrations)
        assert not read_only.get_connection_stats()["in_transaction"]
    finally:
        read_only.close()


def applied_by_cli(migrations: Path, database: Path, cwd: Path) -> None:
    result = run_cli(cwd, {"DATABASE_URL": str(database)}, "--migrations", str(migrations))
    assert (result.returncode, result.stderr) == (0, ""), result


def test_an_applied_migration_missing_from_the_directory_is_warned_about(
    migrations: Path, tmp_path: Path
) -> None:
    """As after switching back from a branch that added it: exit 0, but said."""
    database = tmp_path / "app.db"
    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    applied_by_cli(migrations, database, tmp_path)
    (migrations / "0002_genres.sql").unlink()
    for command in [(), ("--list",)]:
        result = run_cli(
            tmp_path, {"DATABASE_URL": str(database)}, "--migrations", str(migrations), *command
        )
        assert result.returncode == 0, result
        warnings = result.stderr.splitlines()
        assert warnings[0].startswith(
            "warning: 1 applied migration(s) are not in migrations: 0002_genres "
        )
        assert warnings[1].startswith(
            f"warning: the schema of {database} differs from what its applied migration "
            "files build: table genres is not built by the files. "
        )
        assert len(warnings) == 2


def test_a_pending_migration_sorting_before_an_applied_one_is_warned_about(
    migrations: Path, tmp_path: Path
) -> None:
    """Merged after a later one was applied: it applies last here, in its place in a new
    database (and the tests' template), so the columns end up in another order."""
    database = tmp_path / "app.db"
    (migrations / "0003_rating.sql").write_text("ALTER TABLE books ADD COLUMN rating INTEGER;")
    applied_by_cli(migrations, database, tmp_path)
    (migrations / "0002_isbn.sql").write_text("ALTER TABLE books ADD COLUMN isbn TEXT;")

    listed = run_cli(
        tmp_path, {"DATABASE_URL": str(database)}, "--list", "--migrations", str(migrations)
    )
    assert listed.returncode == 0, listed
    assert listed.stderr.startswith(
        "warning: pending migration(s) 0002_isbn sort before 0003_rating, which is already "
        "applied: they apply after it here"
    )
    result = run_cli(tmp_path, {"DATABASE_URL": str(database)}, "--migrations", str(migrations))
    assert result.returncode == 0, result
    assert result.stdout.startswith("Applied 1 migration(s)")
    first, second = result.stderr.splitlines()
    assert first == listed.stderr.strip()
    assert "table books differs" in second
    assert "Recreate this development database" in second


def test_an_edited_applied_migration_is_warned_about(migrations: Path, tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    applied_by_cli(migrations, database, tmp_path)
    first = migrations / "0001_authors_and_books.sql"
    first.write_text(
        first.read_text().replace("title TEXT NOT NULL", "title TEXT NOT NULL, year INTEGER")
    )
    for command in [(), ("--list",)]:
        result = run_cli(
            tmp_path, {"DATABASE_URL": str(database)}, "--migrations", str(migrations), *command
        )
        assert result.returncode == 0, result
        assert result.stderr.startswith(
            f"warning: the schema of {database} differs from what its applied migration files "
            "build: table books differs. An applied migration was edited"
        )
        assert "new migration rather than by editing an applied one" in result.stderr


@pytest.mark.parametrize("command", [(), ("--list",)])
def test_a_renamed_applied_migration_is_refused_not_applied_again(
    client: DatabaseClient, migrations: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Applied again under its new name, a seed would add its rows a second time."""
    seed = migrations / "0002_seed.sql"
    seed.write_text("INSERT INTO authors (name) VALUES ('Morrison');")
    migrate.apply_migrations(client.db, migrations)
    seed.rename(migrations / "0002_more_authors.sql")
    with pytest.raises(migrate.MigrationError, match=r"0002_seed as 0002_more_authors\.sql:"):
        migrate.apply_migrations(client.db, migrations)

    client.close()
    result = run_cli(
        tmp_path, {"DATABASE_URL": client.path}, "--migrations", str(migrations), *command
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith(
        "error: applied migration(s) renamed? 0002_seed as 0002_more_authors.sql: the "
        "applied ones are recorded in this database but no longer in "
    )
    assert (
        "SET name = '0002_more_authors' WHERE migration_set = 'app' AND name = '0002_seed'"
        in result.stderr
    )
    assert len(result.stderr.splitlines()) == 1, "one message"
    with closing(sqlite3.connect(client.path)) as conn:
        assert conn.execute("SELECT count(*) FROM authors WHERE name = 'Morrison'").fetchone() == (
            1,
        )
        assert migrate.applied_migrations(conn) == ["0001_authors_and_books", "0002_seed"]


def test_a_renumbered_migration_is_refused_and_paired_by_its_name(
    client: DatabaseClient, migrations: Path
) -> None:
    """Two branches took number 0002: renumbering one is the usual fix. A seed renumbered
    after it was applied would add its rows again; and where main's new 0002 has the
    number of the applied one, the pair named is the one with the same name."""
    (migrations / "0002_description.sql").write_text("ALTER TABLE books ADD description TEXT;")
    migrate.apply_migrations(client.db, migrations)
    (migrations / "0002_description.sql").rename(migrations / "0003_description.sql")
    (migrations / "0002_refunds.sql").write_text("CREATE TABLE refunds (id INTEGER);")
    with pytest.raises(migrate.MigrationError) as raised:
        migrate.apply_migrations(client.db, migrations)
    message = str(raised.value)
    assert "renamed? 0002_description as 0003_description.sql:" in message
    assert "0002_refunds" not in message
    assert migrate.applied_migrations(client.db.conn) == [
        "0001_authors_and_books",
        "0002_description",
    ]


def test_the_drift_check_builds_the_schema_without_seeds_and_backfills(
    client: DatabaseClient, migrations: Path
) -> None:
    """Every command compares the database with what its applied files build: re-running a
    seed of two million rows each time cost seconds, and rows shape no schema."""
    (migrations / "0002_seed.sql").write_text(
        "INSERT INTO authors (name) VALUES ('Morrison');\n"
        "-- the backfill\nUPDATE authors SET name = upper(name);\n"
        "CREATE INDEX authors_name ON authors (name);\n"
        "WITH n(i) AS (VALUES (1)) INSERT INTO books (author_id, title) SELECT i, 'x' FROM n;"
    )
    # SQLite's writable_schema procedure changes the schema with an UPDATE: kept.
    (migrations / "0003_notes.sql").write_text(
        "CREATE TABLE notes (body TEXT);\n"
        "PRAGMA writable_schema=ON;\n"
        "UPDATE sqlite_schema SET sql = 'CREATE TABLE notes (body TEXT NOT NULL)' "
        "WHERE name = 'notes';\n"
        "PRAGMA writable_schema=OFF;"
    )
    migrate.apply_migrations(client.db, migrations)
    applied = migrate.applied_migrations(client.db.conn)
    assert migrate.schema_differences(client.db.conn, migrations, applied) == []

    with closing(sqlite_utils.Database(sqlite3.connect(":memory:", isolation_level=None))) as built:
        for path in migrate.migration_files(migrations):
            migrate._sql_migration(path, schema_only=True)(built)
        assert built.table("authors").count == built.table("books").count == 0
        assert "authors_name" in {index.name for index in built.table("authors").indexes}


def test_a_database_built_by_its_files_gets_no_drift_warning(
    migrations: Path, tmp_path: Path
) -> None:
    """The comparison leaves out sqlite-utils' table and SQLite's own (sqlite_sequence),
    and a database no migration was applied to yet (one being adopted) is not compared."""
    (migrations / "0002_tags.sql").write_text(
        "CREATE TABLE tags (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);\n"
        "INSERT INTO tags (name) VALUES ('fiction');\n"
        "CREATE VIEW tag_names AS SELECT name FROM tags;\n"
    )
    database = tmp_path / "app.db"
    applied_by_cli(migrations, database, tmp_path)
    for command in [(), ("--list",)]:
        result = run_cli(
            tmp_path, {"DATABASE_URL": str(database)}, "--migrations", str(migrations), *command
        )
        assert (result.returncode, result.stderr) == (0, ""), result

    adopted = tmp_path / "adopted.db"  # tables, but no migration applied yet: not drift
    with closing(sqlite3.connect(adopted)) as conn:
        conn.execute("CREATE TABLE legacy (id INTEGER)")
    env = {"DATABASE_URL": str(adopted)}
    result = run_cli(tmp_path, env, "--list", "--migrations", str(migrations))
    assert (result.returncode, result.stderr) == (0, ""), result


@pytest.mark.parametrize(
    "url",
    [":memory:", "file::memory:", "file:app?mode=memory&cache=shared", "file:/a.db?vfs=memdb"],
)
def test_an_in_memory_database_is_refused_as_nothing_to_migrate(tmp_path: Path, url: str) -> None:
    for command in [(), ("--list",)]:
        result = run_cli(tmp_path, {"DATABASE_URL": url}, *command)
        assert result.returncode == 2, result
        assert result.stdout == ""
        assert result.stderr.startswith("error: DATABASE_URL=")
        assert " is an in-memory database, new and empty each time" in result.stderr
        assert "there is nothing to migrate" in result.stderr
        assert len(result.stderr.splitlines()) == 1, "one message, no traceback"


def test_a_migration_with_an_upper_case_extension_counts(tmp_path: Path) -> None:
    """Windows would glob ``.SQL`` as ``.sql``: everywhere the same files apply."""
    for name in ["1_a.sql", "2_b.SQL", "3_c.Sql", "3_c.DOWN.SQL", "notes.sqlite"]:
        (tmp_path / name).write_text("SELECT 1;")
    names = [path.name for path in migrate.migration_files(tmp_path)]
    assert names == ["1_a.sql", "2_b.SQL", "3_c.Sql"]


def test_two_migration_files_differing_only_in_the_extension_are_named(tmp_path: Path) -> None:
    (tmp_path / "1_a.sql").write_text("SELECT 1;")
    (tmp_path / "1_a.SQL").write_text("SELECT 2;")
    with pytest.raises(
        migrate.MigrationError, match=r"migrations 1_a\.SQL, 1_a\.sql have the same"
    ):
        migrate.migration_files(tmp_path)


def test_the_cli_says_a_migrations_file_is_not_a_directory(
    migrations: Path, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": str(tmp_path / "app.db")}
    schema = tmp_path / "schema.sql"
    schema.write_text(SCHEMA)
    result = run_cli(tmp_path, env, "--migrations", str(schema))
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"error: --migrations {schema} is a file, not a directory")
    assert f"mv {schema} migrations/0001_schema.sql" in result.stderr

    (migrations / "0002_genres.sql").write_text("CREATE TABLE genres (id INTEGER PRIMARY KEY);")
    result = run_cli(tmp_path, env, "--migrations", str(migrations / "0002_genres.sql"))
    assert result.returncode == 2, result
    assert f"Point it at the directory that holds this file and the others: {migrations}" in (
        result.stderr
    )
    assert not (tmp_path / "app.db").exists()
    with pytest.raises(migrate.MigrationError, match="is a file, not a directory"):
        migrate.migration_files(schema)
