"""Schema migrations: ordered ``migrations/*.sql`` files applied with ``sqlite_utils.Migrations``.

``python -m lib.migrate`` applies the pending ones to the local SQLite file of
``DATABASE_URL`` and says which; it refuses a remote Turso database or an embedded replica.
All pending migrations apply in one transaction, which takes the write lock first (so a
second ``migrate`` waits for the first, then finds nothing pending): if one fails, the
error names its file and the database is left exactly as it was. Foreign keys are off
during the run, so a migration can rebuild a referenced table the way SQLite documents,
and checked before the commit. A pending file that looks like an applied one renamed is
refused; the CLI warns about other drift from the files (applied migrations missing from
the directory, pending ones sorting before applied ones, a schema that differs from what
the files build), which the tests' template, built from the files, would not have.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .connection_tracking import database_path
from .database import BUSY_TIMEOUT_MS, DatabaseClient, is_contention
from .database_config import (
    DatabaseConfigError,
    create_database_directory,
    database_target,
    is_disk_refusal,
    is_read_only_uri,
    local_database_file,
    open_error,
)
from .sql_text import DATA_STATEMENT, EDITS_SCHEMA, script_statements

if TYPE_CHECKING:  # imported when migrations run, so that a test session starts faster
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_SET = "app"
DOWN = ".down.sql"  # a migration's undo, as golang-migrate and others name it: never applied
# Where sqlite-utils' Migrations records what it applied (``Migrations.migrations_table``).
MIGRATIONS_TABLE = "_sqlite_migrations"
# How many row ids of one table a foreign key error lists before it just counts them.
SHOWN_ROWIDS = 5
# How many schema differences a drift warning names before it just counts them.
SHOWN_DIFFERENCES = 8
# How a refusal before any migration ran ends, unless the command says otherwise.
NOTHING_APPLIED = "No migration of this run was applied"
# How many directories or files a message about the migrations directory names.
SHOWN_DIRECTORIES = 5


class MigrationError(RuntimeError):
    """A migration file failed; nothing from this run was applied."""


class MigrationsDirectoryError(MigrationError):
    """The migrations setting names no directory of ``*.sql`` migrations: the setting is
    what to fix, not a migration."""


class MigrationsChangedError(MigrationError):
    """The migration files kept changing while a database was built from them (an editor
    saving, a branch checked out): running again once they are saved is what to do."""


class ReadOnlyDatabaseError(MigrationError):
    """The database cannot be written (a read-only URL, file or directory): no migration's
    fault, so the message says so instead of naming the first migration to write."""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The ``*.sql`` files of ``directory`` in the order they apply: by name, numbers
    compared as numbers (``2_`` before ``10_``). The extension counts in any case
    (``.SQL`` too: on Windows a glob would match it, elsewhere not); ``*.down.sql`` files,
    which undo a migration, are left out; files in subdirectories are not searched."""
    _check_directory(directory)
    files = [path for path in directory.iterdir() if _is_migration(path)]
    if not files:
        _refuse_a_directory_without_migrations(directory)
    _refuse_duplicate_names(files)
    return sorted(files, key=_natural_order)


def _check_directory(directory: Path) -> None:
    """A file given as the directory is named as such: a lone ``schema.sql`` is common."""
    if directory.is_file():
        raise MigrationsDirectoryError(
            f"migrations directory {directory} is a file, not a directory: the migrations "
            f"are the *.sql files of a directory. {_schema_file_hint(directory)}"
        )
    if not directory.is_dir():
        raise MigrationsDirectoryError(
            f"migrations directory {directory} does not exist: put the schema there as "
            "ordered *.sql migration files, or point the setting at the directory that "
            "holds them"
        )


def _refuse_a_directory_without_migrations(directory: Path) -> None:
    """No schema is never what was meant: the setting names the parent of the migrations,
    or another tool's directory (Alembic's ``migrations/`` holds ``env.py``)."""
    nested = sorted({str(path.parent) for path in directory.glob("*/**/*") if _is_migration(path)})
    if nested:
        raise MigrationsDirectoryError(
            f"migrations directory {directory} has *.sql files only in its subdirectories "
            f"({_some(nested)}), which are not searched: point the setting at the directory "
            "that holds them"
        )
    held = sorted(path.name + "/" * path.is_dir() for path in directory.iterdir())
    holds = f"it holds {_some(held)}" if held else "it is empty"
    if {"env.py", "versions/"} <= set(held):  # Alembic's (and Flask-Migrate's)
        raise MigrationsDirectoryError(
            f"migrations directory {directory} holds Alembic's Python migrations ({holds}), "
            "which are not run: write their SQL into a directory of its own (alembic upgrade "
            "head --sql > db/sql/0001_schema.sql, again after a new revision), and point the "
            "setting at it"
        )
    raise MigrationsDirectoryError(
        f"migrations directory {directory} has no *.sql migration files ({holds}): "
        "write the schema as the first one (0001_schema.sql), or point the setting at the "
        "directory that holds them"
    )


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_DIRECTORIES])
    return shown + (", ..." if len(names) > SHOWN_DIRECTORIES else "")


def _schema_file_hint(file: Path) -> str:
    """What to do when a migrations setting names ``file``: its directory, if that holds
    migrations, or a directory of its own (``mv schema.sql migrations/0001_schema.sql``)."""
    if _is_sql(file) and sum(_is_migration(path) for path in file.parent.iterdir()) > 1:
        return f"Point it at the directory that holds this file and the others: {file.parent}"
    return (
        "If this file is the whole schema, move it into a directory as the first migration "
        f"(mkdir migrations && mv {file} migrations/0001_{file.stem}.sql) and point at that"
    )


def _is_sql(path: Path) -> bool:
    return path.suffix.lower() == ".sql"


def _is_migration(path: Path) -> bool:
    return _is_sql(path) and not path.name.lower().endswith(DOWN) and path.is_file()


def _refuse_duplicate_names(files: Sequence[Path]) -> None:
    """``0004_a.sql`` and ``0004_a.SQL`` would be one migration, ``0004_a``: name both."""
    stems = Counter(path.stem for path in files)
    twins = sorted(path.name for path in files if stems[path.stem] > 1)
    if twins:
        raise MigrationError(
            f"migrations {', '.join(twins)} have the same name once the extension is left "
            "off, which is what the database records: rename or delete one of them"
        )


def _natural_order(path: Path) -> tuple[list[str | int], str]:
    parts = re.split(r"(\d+)", path.name)  # text, number, text, ...: the types line up
    return [int(part) if index % 2 else part for index, part in enumerate(parts)], path.name


def migrations_fingerprint(directory: Path = MIGRATIONS_DIR) -> str:
    """A hash of every migration's name and text: it changes whenever the schema would."""
    digest = hashlib.sha256()
    for path in migration_files(directory):
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements, also several on one line; a ``;`` inside a
    string, a comment or a trigger's ``BEGIN ... END`` does not end one, and pieces of
    comments alone are left out."""
    return [statement.strip() for statement in script_statements(sql)]


def _sql_migration(
    path: Path, *, schema_only: bool = False
) -> Callable[[sqlite_utils.Database], None]:
    """The migration ``path`` as sqlite-utils runs it; ``schema_only``: without the
    statements that only read or write rows (a seed, a backfill), which build no schema."""

    def run(db: sqlite_utils.Database) -> None:
        refused: list[str] = []

        def no_transaction_control(action: int, verb: str | None, *_: str | None) -> int:
            """Checked as each statement is compiled, before it runs: a COMMIT in a
            migration would apply part of the run, a ROLLBACK undo it behind the runner."""
            if action == sqlite3.SQLITE_TRANSACTION:
                refused.append(verb or "")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        db.conn.set_authorizer(no_transaction_control)
        try:
            for number, statement in enumerate(split_statements(_read(path)), start=1):
                if (
                    schema_only
                    and DATA_STATEMENT.match(statement)
                    and not EDITS_SCHEMA.search(statement)
                ):
                    continue
                try:
                    db.execute(statement)
                except sqlite3.Error as error:
                    if is_contention(error):  # another connection's doing, said as such by main()
                        raise
                    raise MigrationError(
                        f"migration {path.name} failed at statement {number}: "
                        f"{_transaction_control(refused[0]) if refused else error}; "
                        "no migration of this run was applied"
                    ) from error
        finally:
            db.conn.set_authorizer(None)

    return run


def _read(path: Path) -> str:
    """The text of the migration ``path``, written in UTF-8 (a byte order mark is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise MigrationError(
            f"migration {path.name} is not UTF-8 text ({error.reason} at byte {error.start}): "
            "save it as UTF-8; no migration of this run was applied"
        ) from error


def _transaction_control(verb: str) -> str:
    shown = "COMMIT or END" if verb == "COMMIT" else verb  # SQLite reports END as COMMIT
    return (
        f"{shown} is not allowed in a migration: all pending migrations apply in one "
        "transaction, which the runner begins and commits; remove the statement "
        "(SAVEPOINT, RELEASE and ROLLBACK TO are allowed)"
    )


def load_migrations(directory: Path = MIGRATIONS_DIR) -> Migrations:
    """A ``Migrations`` set with one migration per SQL file, named after the file."""
    return _migration_set(migration_files(directory))


def _migration_set(files: Sequence[Path]) -> Migrations:
    from sqlite_utils.migrations import Migrations

    migrations = Migrations(MIGRATION_SET)
    for path in files:
        migrations(name=path.stem)(_sql_migration(path))
    return migrations


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``conn``'s database, in the order they applied
    (read without sqlite-utils: checking a cached template must not need to import it)."""
    return [
        name
        for (name,) in conn.execute(
            f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY id",
            [MIGRATION_SET],
        )
    ]


def pending_migrations(client: DatabaseClient, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Names of the migration files not yet applied to ``client``'s database, in the order
    they apply. It only reads, through the client's own connection, so it suits a readiness
    check on either engine (sqlite3 or libsql)."""
    names = [file.stem for file in migration_files(directory)]
    found = client.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [MIGRATIONS_TABLE])
    if not found.rows:
        return names
    recorded = client.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ?", [MIGRATION_SET]
    )
    applied = {row[0] for row in recorded.rows}
    return [name for name in names if name not in applied]


def apply_migrations(db: sqlite_utils.Database, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration atomically; return the names applied.

    The transaction takes the write lock before it reads what is pending (waiting for it
    up to the busy timeout), so two runs at once apply the migrations once, the second
    finding nothing pending. Foreign keys are off for the run (``PRAGMA foreign_keys``
    does nothing inside a transaction, and SQLite's recipe for rebuilding a table needs
    them off) and checked before the commit: a run that leaves a dangling reference
    applies nothing. A pending file that looks like an applied one renamed, and a
    database that cannot be written, are refused before any migration runs.
    """
    files = migration_files(directory)
    migrations = _migration_set(files)
    with foreign_keys_off(db.conn), write_transaction(db.conn):
        applied = [migration.name for migration in migrations.applied(db)]
        names = [migration.name for migration in migrations.pending(db)]
        refuse_renamed(applied, [path.stem for path in files], directory)
        if names or not applied:  # something to write: the migrations, or their table
            check_writable(db.conn)
        before = db.conn.execute("PRAGMA foreign_key_check").fetchall()
        migrations.apply(db)
        check_foreign_keys(db.conn, [f"{name}.sql" for name in names], already=before)
    return names


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

    A deferred ``BEGIN`` (sqlite-utils' ``atomic()``) reads first and takes the write lock
    at its first write, which fails at once ("database is locked", whatever the busy
    timeout) if another connection wrote in between; IMMEDIATE waits for the lock instead.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def check_writable(conn: sqlite3.Connection) -> None:
    """Raise :class:`ReadOnlyDatabaseError` if ``conn`` cannot write its database: a
    read-only URL or a file or directory this process may not write (SQLite then opens
    the file read-only without a word), found before a migration would be blamed.

    Writes ``user_version`` back unchanged, inside the caller's write transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    try:
        conn.execute(f"PRAGMA user_version = {int(version)}")
    except sqlite3.Error as error:
        if not _is_read_only(error):
            raise
        raise ReadOnlyDatabaseError(
            f"the database is read-only ({error}): it was opened read-only, or this process "
            "may not write its file or directory. Migrations need a writable database; "
            "no migration of this run was applied"
        ) from error


def _is_read_only(error: BaseException | None) -> bool:
    name = getattr(error, "sqlite_errorname", None) or ""
    return name.startswith("SQLITE_READONLY") or "readonly database" in str(error)


def _number(name: str) -> int | None:
    """The number a migration's name starts with (``0004_phone``: 4), if any."""
    match = re.match(r"\d+", name)
    return int(match.group()) if match else None


def renamed_migrations(applied: Sequence[str], names: Sequence[str]) -> list[tuple[str, str]]:
    """``(applied, pending)`` pairs where the applied migration is no longer among ``names``
    (the files) and a pending one has its name after the number (renumbered: two
    branches took the same number) or, failing that, its number (retitled): most likely
    one file renamed, which would apply a second time under its new name."""
    missing = [name for name in applied if name not in names and _number(name) is not None]
    pending = [name for name in names if name not in applied]
    pairs = []
    for old in missing:
        renumbered = [new for new in pending if _title(old) and _title(new) == _title(old)]
        retitled = [new for new in pending if _number(new) == _number(old)]
        pairs += [(old, new) for new in renumbered or retitled]
    return pairs


def _title(name: str) -> str:
    """A migration's name after its number (``0004_phone``: ``phone``)."""
    return re.sub(r"^\d+[-_. ]*", "", name)


def refuse_renamed(
    applied: Sequence[str],
    names: Sequence[str],
    directory: Path,
    outcome: str = NOTHING_APPLIED,
) -> None:
    """Raise :class:`MigrationError` for :func:`renamed_migrations`: applying such a file
    runs statements the database has already run (a second seed row, "table exists").
    ``outcome`` ends the message: what came of the command."""
    pairs = renamed_migrations(applied, names)
    if not pairs:
        return
    renames = ", ".join(f"{old} as {new}.sql" for old, new in pairs)
    updates = " ".join(
        f"UPDATE {MIGRATIONS_TABLE} SET name = {_quoted(new)} "
        f"WHERE migration_set = '{MIGRATION_SET}' AND name = {_quoted(old)};"
        for old, new in pairs
    )
    raise MigrationError(
        f"applied migration(s) renamed? {renames}: the applied ones are recorded in this "
        f"database but no longer in {_relative(directory)}, and applying the pending ones "
        "would run the same statements a second time. Give each its applied name back (the "
        "database records applied migrations by name), or if it is the same migration "
        f"renamed, record the new name ({updates}); if they are different migrations (from "
        f"another branch), recreate the development database. {outcome}"
    )


def _quoted(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


@contextmanager
def foreign_keys_off(conn: sqlite3.Connection) -> Iterator[None]:
    """Switch foreign key enforcement off, then back to what it was, whatever happens.

    Only possible outside a transaction: inside one the pragma is silently ignored, so a
    connection with an open transaction is refused rather than left enforcing.
    """
    if conn.in_transaction:
        raise MigrationError(
            "migrations need a connection without an open transaction (SQLite cannot "
            "switch foreign keys off inside one): commit or roll back before migrating"
        )
    (enabled,) = conn.execute("PRAGMA foreign_keys").fetchone()
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")


def check_foreign_keys(
    conn: sqlite3.Connection, files: Sequence[str], already: Sequence[Sequence[Any]] = ()
) -> None:
    """Raise :class:`MigrationError` if more rows reference rows that do not exist than
    ``already`` did before the run (what enforcement would have caught, had it been on):
    dangling references the database had before are its data's, not the migration's."""
    before = Counter((table, parent) for table, _, parent, _ in already)
    after = conn.execute("PRAGMA foreign_key_check").fetchall()
    counts = Counter((table, parent) for table, _, parent, _ in after)
    grown = [row for row in after if counts[row[0], row[2]] > before[row[0], row[2]]]
    old = {(table, rowid, parent) for table, rowid, parent, _ in already}
    # The new rows, unless a rebuilt table renumbered them all: then every row of its kind.
    violations = [row for row in grown if (row[0], row[1], row[2]) not in old] or grown
    if violations:
        raise MigrationError(
            f"foreign key check failed after migration(s) {', '.join(files) or '-'}: "
            f"{_describe_violations(violations)}; no migration of this run was applied. "
            "Make the migration keep every referenced row (copy all of them when rebuilding "
            "a table) or update/delete the referencing rows in the same migration"
        )


def _describe_violations(violations: Sequence[Sequence[Any]]) -> str:
    """``PRAGMA foreign_key_check`` rows, one part per table and parent: ``2 row(s) of
    orders (rowid 3, 7) reference missing users rows``."""
    grouped: dict[tuple[str, str], list[int | None]] = {}
    for table, rowid, parent, _ in violations:
        grouped.setdefault((table, parent), []).append(rowid)
    parts = []
    for (table, parent), rowids in grouped.items():
        shown = ", ".join(str(rowid) for rowid in rowids[:SHOWN_ROWIDS] if rowid is not None)
        more = f" and {len(rowids) - SHOWN_ROWIDS} more" if len(rowids) > SHOWN_ROWIDS else ""
        which = f" (rowid {shown}{more})" if shown else ""
        parts.append(f"{len(rowids)} row(s) of {table}{which} reference missing {parent} rows")
    return "; ".join(parts)


def drift_warnings(applied: Sequence[str], names: Sequence[str], directory: Path) -> list[str]:
    """What makes this database's schema differ from the one the files build in a new
    database (and the tests' template): applied migrations ``directory`` no longer has,
    and pending ones that sort before an applied one, so apply after it here only."""
    warnings = []
    missing = [name for name in applied if name not in names]
    if missing:
        warnings.append(
            f"{len(missing)} applied migration(s) are not in {_relative(directory)}: "
            f"{', '.join(missing)} "
            "(from another branch, or renamed or deleted since): the database has changes "
            "the migration files, and so the tests' template, do not"
        )
    last = max((names.index(name) for name in applied if name in names), default=0)
    early = [name for name in names[:last] if name not in applied]
    if early:
        warnings.append(
            f"pending migration(s) {', '.join(early)} sort before {names[last]}, which is "
            "already applied: they apply after it here, but in name order in a new database "
            "and the tests' template, so columns may end up in another order"
        )
    return warnings


def schema_differences(
    conn: sqlite3.Connection, directory: Path, applied: Collection[str]
) -> list[str]:
    """The tables, indexes, views and triggers of ``conn``'s database that differ from what
    the files of its ``applied`` migrations build in a new in-memory database, in name
    order: an applied migration edited since, or migrations applied in another order."""
    files = [path for path in migration_files(directory) if path.stem in applied]
    expected = _built_schema(files)
    actual = _schema(conn)
    differences = []
    for kind, name in sorted(expected.keys() | actual.keys(), key=lambda key: (key[1], key[0])):
        if (kind, name) not in actual:
            differences.append(f"{kind} {name} is missing")
        elif (kind, name) not in expected:
            differences.append(f"{kind} {name} is not built by the files")
        elif actual[kind, name] != expected[kind, name]:
            differences.append(f"{kind} {name} differs")
    return differences


def _built_schema(files: Sequence[Path]) -> dict[tuple[str, str], str | None]:
    """The schema ``files`` build, applied in order to a new in-memory database: their
    seeds and backfills are left out, so the check costs what the schema does."""
    import sqlite_utils

    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        db = sqlite_utils.Database(conn, execute_plugins=False)
        for path in files:
            _sql_migration(path, schema_only=True)(db)
        return _schema(conn)


def _schema(conn: sqlite3.Connection) -> dict[tuple[str, str], str | None]:
    """``(type, name): sql`` of the schema, without SQLite's own objects and the table
    (and index) in which sqlite-utils records the applied migrations."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name <> ?",
        [MIGRATIONS_TABLE],
    )
    return {(kind, name): sql for kind, name, sql in rows}


def _shown(url: str) -> str:
    """``scheme://host`` of a URL: enough to recognise it, never a token in its query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


def _relative(directory: Path) -> Path:
    """``directory`` relative to where the command runs, if inside: shorter to read and type."""
    with suppress(ValueError):
        return directory.resolve().relative_to(Path.cwd())
    return directory


def _turso_instructions(directory: Path) -> str:
    return (
        "Apply the migration files to the Turso database with the Turso CLI instead, in "
        "the order of their names (numbers as numbers), each one not yet applied: "
        f"turso db shell <database-name> < {_relative(directory)}/<file>.sql"
    )


def migration_target(environ: Mapping[str, str], directory: Path = MIGRATIONS_DIR) -> str:
    """The local SQLite path to migrate, as ``lib.database`` resolves the environment.

    Raises :class:`DatabaseConfigError` for a bad setting, and for a remote database or an
    embedded replica: migrating through sqlite3 would fail, or change only the local copy.
    """
    target = database_target(environ)
    if target.sync_url is not None:
        raise DatabaseConfigError(
            f"DATABASE_URL={target.path} is an embedded replica of TURSO_DATABASE_URL="
            f"{_shown(target.sync_url)}: migrating the local file would never reach Turso. "
            f"{_turso_instructions(directory)}; the replica gets the schema at its next "
            "sync. To migrate a plain local file, unset TURSO_DATABASE_URL"
        )
    if target.remote:
        variable = "TURSO_DATABASE_URL" if environ.get("TURSO_DATABASE_URL") else "DATABASE_URL"
        raise DatabaseConfigError(
            f"{variable}={_shown(target.path)} is a remote Turso/libSQL database, and "
            f"python -m lib.migrate migrates local SQLite files only. "
            f"{_turso_instructions(directory)}. To migrate a local file instead, set DATABASE_URL "
            "to its path (file:./data/app.db) with TURSO_DATABASE_URL unset"
        )
    return target.path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.migrate``: exit 0 when done (drift from the files is a warning on
    stderr), 1 when a migration fails or is refused, 2 on a bad setting (a read-only or
    in-memory database included) or a missing package."""
    parser = argparse.ArgumentParser(
        prog="python -m lib.migrate",
        description="Apply pending migrations to the database named by DATABASE_URL.",
    )
    parser.add_argument("--migrations", type=Path, default=MIGRATIONS_DIR, help="SQL files")
    parser.add_argument("--list", action="store_true", help="show pending migrations only")
    args = parser.parse_args(argv)
    problem = _directory_problem(args.migrations)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    path = ""
    try:
        path = migration_target(os.environ, args.migrations)
        refuse_in_memory(path)
        if args.list:
            pending = _pending_read_only(path, args.migrations)
            _check_readable(args.migrations, pending)
            print(f"{len(pending)} pending migration(s) for {path}: {', '.join(pending) or '-'}")
            return 0
        for module in ("sqlite_utils", "sqlite_utils.migrations"):  # before the file is made
            importlib.import_module(module)
        applied = _migrate(path, args.migrations)
    except ReadOnlyDatabaseError:
        print(f"error: {_read_only_problem(path)}", file=sys.stderr)
        return 2
    except DatabaseConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MigrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:  # not a migration's statement: the database itself
        print(f"error: {_database_problem(path, error, listing=args.list)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:  # sqlite-utils, which runs the migrations
        missing = (
            f"{error.name}, which is not installed here"
            if error.name == "sqlite_utils"
            else f"{error.name}, of sqlite-utils 4 or later (the one installed here is older)"
        )
        print(
            f"error: migrations run with {missing}: install the project's dependencies (uv sync)",
            file=sys.stderr,
        )
        return 2
    if applied:
        print(f"Applied {len(applied)} migration(s) to {path}: {', '.join(applied)}")
    else:
        print(f"No pending migrations for {path}")
    return 0


def _directory_problem(directory: Path) -> str | None:
    """What is wrong with ``--migrations``, said before any database is opened."""
    if directory.is_file():
        return (
            f"--migrations {directory} is a file, not a directory: the migrations are the "
            f"*.sql files of a directory. {_schema_file_hint(directory)}"
        )
    if not directory.is_dir():
        return (
            f"migrations directory {directory} does not exist: pass --migrations with the "
            "directory of the project's .sql migration files"
        )
    try:
        migration_files(directory)
    except MigrationsDirectoryError as error:  # before the database file is created
        return str(error)
    return None


def refuse_in_memory(path: str) -> None:
    """Raise :class:`DatabaseConfigError` for an in-memory ``path``: a new, empty database
    each time it is opened, gone when the command exits, so migrating it does nothing."""
    if database_path(path) is None:  # the file it opens: none
        raise DatabaseConfigError(
            f"DATABASE_URL={path} is an in-memory database, new and empty each time it is "
            "opened and gone when this command exits: there is nothing to migrate. Set "
            "DATABASE_URL to the database file to migrate (file:./data/app.db); the tests "
            "migrate their own databases"
        )


def _migrate(path: str, directory: Path) -> list[str]:
    """Apply the pending migrations to ``path``; drift from the files is warned about,
    before the run (what the run cannot change) and after it (the schema)."""
    create_database_directory(path)
    client = _open_for_migrating(path)
    try:
        _check_history(client.db.conn, directory)
        done = apply_migrations(client.db, directory)
        _warn_schema(client.db.conn, path, directory)
        return done
    finally:
        client.close()


def _open_for_migrating(path: str) -> DatabaseClient:
    """The client migrating ``path``, opened with the application's pragmas; a read-only
    file or directory, which SQLite may find as it opens the file, is reported as such."""
    try:
        return DatabaseClient(path, owner="python -m lib.migrate", source="DATABASE_URL")
    except DatabaseConfigError as error:
        if not _is_read_only(error.__cause__):
            raise
        raise ReadOnlyDatabaseError(f"the database is read-only ({error.__cause__})") from error


def _check_history(
    conn: sqlite3.Connection, directory: Path, outcome: str = NOTHING_APPLIED
) -> tuple[list[str], list[str]]:
    """The names of the migration files and of the migrations ``conn``'s database records
    as applied: a renamed one is refused (``outcome`` ends the error), said before the
    drift it also is; other drift from the files is warned about."""
    names = [file.stem for file in migration_files(directory)]
    applied = recorded_migrations(conn)
    refuse_renamed(applied, names, directory, outcome)
    _warn(drift_warnings(applied, names, directory))
    return names, applied


def recorded_migrations(conn: sqlite3.Connection) -> list[str]:
    """:func:`applied_migrations`, or none in a database without the table yet."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [MIGRATIONS_TABLE])
    return applied_migrations(conn) if found.fetchone() else []


def _warn(messages: Sequence[str]) -> None:
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)


def _warn_schema(conn: sqlite3.Connection, path: str, directory: Path) -> None:
    """Warn if the schema differs from what the files of its applied migrations build;
    a database none were applied to (one being adopted, say) has nothing to compare."""
    applied = recorded_migrations(conn)
    if not applied:
        return
    try:
        differences = schema_differences(conn, directory, applied)
    except MigrationError as error:  # a file that fails in a new database fails the tests too
        _warn([f"cannot compare the schema of {path} with the migration files: {error}"])
        return
    if differences:
        shown = ", ".join(differences[:SHOWN_DIFFERENCES])
        if len(differences) > SHOWN_DIFFERENCES:
            shown += f" and {len(differences) - SHOWN_DIFFERENCES} more"
        _warn(
            [
                f"the schema of {path} differs from what its applied migration files build: "
                f"{shown}. {_recreate_hint(path)}"
            ]
        )


def _recreate_hint(path: str) -> str:
    file = local_database_file(path)
    delete = f"delete {file} and its -wal/-shm files" if file else "delete its file"
    return (
        "An applied migration was edited, or migrations applied in another order or from "
        "another branch; the tests' template is built from the files. Recreate this "
        f"development database ({delete}, then python -m lib.migrate), and change the schema "
        "with a new migration rather than by editing an applied one"
    )


def _pending_read_only(path: str, directory: Path) -> list[str]:
    """The pending migrations, without writing anything: a database file that does not
    exist yet has them all pending (and is not created), one that does is only read (not
    even switched to WAL). Drift is warned about as :func:`_migrate` does, and a renamed
    migration, which ``migrate`` would refuse, is a :class:`MigrationError`."""
    file = local_database_file(path)
    if file is not None and not file.exists():
        return [migration.stem for migration in migration_files(directory)]
    client = DatabaseClient(
        path, owner="python -m lib.migrate --list", pragmas={}, source="DATABASE_URL"
    )
    try:
        names, applied = _check_history(
            client.db.conn, directory, "python -m lib.migrate refuses until then"
        )
        _warn_schema(client.db.conn, path, directory)
        return [name for name in names if name not in applied]
    except sqlite3.DatabaseError as error:  # unopened until read: a file that is no database
        if getattr(error, "sqlite_errorname", None) != "SQLITE_NOTADB":
            raise
        raise open_error(path, "DATABASE_URL", error) from error
    finally:
        client.close()


def _check_readable(directory: Path, pending: Sequence[str]) -> None:
    """Read each pending migration as applying it would: one that is not UTF-8 is a
    :class:`MigrationError` when listed, not only when it is applied."""
    for file in migration_files(directory):
        if file.stem in pending:
            _read(file)


def _read_only_problem(path: str) -> str:
    """What to do about a database that cannot be written: not the first migration's
    fault, and a read-only URL (the hint for a read-only file when opening) is no way out."""
    where = f"cannot migrate {path!r} (from DATABASE_URL)"
    if is_read_only_uri(path):
        parts = urlsplit(path)
        return (
            f"{where}: the URL opens it read-only (mode=ro or immutable=1) and migrations "
            f"write to it: set DATABASE_URL without that parameter (file:{parts.path}), or "
            "use --list, which only reads"
        )
    return (
        f"{where}: the database is read-only to this process, which may not write the file "
        "or its directory (where SQLite keeps its -wal or -journal file): make both "
        "writable for this user, or point DATABASE_URL at a writable file"
    )


def _database_problem(path: str, error: sqlite3.Error, *, listing: bool = False) -> str:
    """What to do when the database itself (not a migration) refused: locked, read-only.
    ``listing``: ``--list`` was only reading it."""
    if _is_read_only(error) and listing:
        return (
            f"cannot read {path!r} (from DATABASE_URL): {error}; SQLite writes a file beside "
            "a WAL database (its -shm) even to read it: run this where the database's "
            "directory is writable, or on a copy of the database"
        )
    if _is_read_only(error):
        return f"{_read_only_problem(path)} ({error})"
    if is_contention(error):
        hint = (
            "another connection holds a write lock on it and kept it past the "
            f"{BUSY_TIMEOUT_MS / 1000:g} s busy timeout (a running application, a sqlite3 "
            "shell in a transaction, a long migration run): stop it or let it finish, then "
            "run the migrations again"
        )
    elif is_disk_refusal(error):
        hint = "the disk refused the write: make room on it (is it full?), then run again"
    else:
        hint = "check that DATABASE_URL names the database to migrate"
    return f"cannot migrate {path!r} (from DATABASE_URL): {error}; {hint}"


if __name__ == "__main__":
    sys.exit(main())
