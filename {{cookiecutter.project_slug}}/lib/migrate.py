"""Schema migrations: ordered ``migrations/*.sql`` files applied with ``sqlite_utils.Migrations``.

``python -m lib.migrate`` applies the pending ones to the local SQLite file of
``DATABASE_URL`` and says which; it refuses a remote Turso database or an embedded replica.
All pending migrations apply in one transaction: if one fails, the error names its file
and the database is left exactly as it was. Foreign keys are off during the run, so a
migration can rebuild a referenced table the way SQLite documents, and checked before
the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .database import DatabaseClient, is_contention
from .database_config import (
    DatabaseConfigError,
    create_database_directory,
    database_target,
    local_database_file,
    open_error,
)

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


class MigrationError(RuntimeError):
    """A migration file failed; nothing from this run was applied."""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The ``*.sql`` files of ``directory`` in the order they apply: by name, numbers
    compared as numbers (``2_`` before ``10_``). ``*.down.sql`` files, which undo a
    migration, are left out; files in subdirectories are not searched."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    files = [path for path in directory.glob("*.sql") if not path.name.lower().endswith(DOWN)]
    if not files and any(directory.glob("*/**/*.sql")):
        raise MigrationError(
            f"migrations directory {directory} has *.sql files only in its subdirectories, "
            "which are not searched: point the setting at the directory that holds them"
        )
    return sorted(files, key=_natural_order)


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
    string, a comment or a trigger's ``BEGIN ... END`` does not end one."""
    statements: list[str] = []
    start = end = 0
    while (end := sql.find(";", end) + 1) > 0:
        if sqlite3.complete_statement(sql[start:end]):
            statements.append(sql[start:end].strip())
            start = end
    if sql[start:].strip():
        statements.append(sql[start:].strip())
    return statements


def _sql_migration(path: Path) -> Callable[[sqlite_utils.Database], None]:
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
    from sqlite_utils.migrations import Migrations

    migrations = Migrations(MIGRATION_SET)
    for path in migration_files(directory):
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


def pending_migrations(db: sqlite_utils.Database, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Names of the migrations not yet applied to ``db``."""
    return [migration.name for migration in load_migrations(directory).pending(db)]


def apply_migrations(db: sqlite_utils.Database, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration atomically; return the names applied.

    Foreign keys are off for the run (``PRAGMA foreign_keys`` does nothing inside a
    transaction, and SQLite's recipe for rebuilding a table needs them off) and checked
    before the commit: a run that leaves a dangling reference applies nothing.
    """
    migrations = load_migrations(directory)
    names = [migration.name for migration in migrations.pending(db)]
    with foreign_keys_off(db.conn), db.atomic():
        before = db.conn.execute("PRAGMA foreign_key_check").fetchall()
        migrations.apply(db)
        check_foreign_keys(db.conn, [f"{name}.sql" for name in names], already=before)
    return names


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


def _shown(url: str) -> str:
    """``scheme://host`` of a URL: enough to recognise it, never a token in its query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


def _turso_instructions(directory: Path) -> str:
    with suppress(ValueError):  # relative to where the command runs: shorter to read and type
        directory = directory.resolve().relative_to(Path.cwd())
    return (
        "Apply the migration files to the Turso database with the Turso CLI instead, in "
        "the order of their names (numbers as numbers), each one not yet applied: "
        f"turso db shell <database-name> < {directory}/<file>.sql"
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
    """``python -m lib.migrate``: exit 0 when done, 1 when a migration fails, 2 on a bad
    setting or a missing package."""
    parser = argparse.ArgumentParser(
        prog="python -m lib.migrate",
        description="Apply pending migrations to the database named by DATABASE_URL.",
    )
    parser.add_argument("--migrations", type=Path, default=MIGRATIONS_DIR, help="SQL files")
    parser.add_argument("--list", action="store_true", help="show pending migrations only")
    args = parser.parse_args(argv)
    if not args.migrations.is_dir():
        print(
            f"error: migrations directory {args.migrations} does not exist: pass --migrations "
            "with the directory of the project's .sql migration files",
            file=sys.stderr,
        )
        return 2
    path = ""
    try:
        path = migration_target(os.environ, args.migrations)
        if args.list:
            pending = _pending_read_only(path, args.migrations)
            print(f"{len(pending)} pending migration(s) for {path}: {', '.join(pending) or '-'}")
            return 0
        applied = _migrate(path, args.migrations)
    except DatabaseConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MigrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:  # not a migration's statement: the database itself
        print(f"error: {_database_problem(path, error)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:  # sqlite-utils, which runs the migrations
        print(
            f"error: migrations run with {error.name}, which is not installed here: install "
            "the project's dependencies (uv sync)",
            file=sys.stderr,
        )
        return 2
    if applied:
        print(f"Applied {len(applied)} migration(s) to {path}: {', '.join(applied)}")
    else:
        print(f"No pending migrations for {path}")
    return 0


def _migrate(path: str, directory: Path) -> list[str]:
    create_database_directory(path)
    client = DatabaseClient(path, owner="python -m lib.migrate", source="DATABASE_URL")
    try:
        return apply_migrations(client.db, directory)
    finally:
        client.close()


def _pending_read_only(path: str, directory: Path) -> list[str]:
    """The pending migrations, without writing anything: a database file that does not
    exist yet has them all pending (and is not created), one that does is only read (not
    even switched to WAL)."""
    file = local_database_file(path)
    if file is not None and not file.exists():
        return [migration.stem for migration in migration_files(directory)]
    client = DatabaseClient(path, owner="python -m lib.migrate --list", pragmas={})
    try:
        return pending_migrations(client.db, directory)
    except sqlite3.DatabaseError as error:  # unopened until read: a file that is no database
        if getattr(error, "sqlite_errorname", None) != "SQLITE_NOTADB":
            raise
        raise open_error(path, "DATABASE_URL", error) from error
    finally:
        client.close()


def _database_problem(path: str, error: sqlite3.Error) -> str:
    """What to do when the database itself (not a migration) refused: locked, read-only."""
    name = getattr(error, "sqlite_errorname", None) or ""
    if is_contention(error):
        hint = (
            "another connection holds a write lock on it (a running application, a sqlite3 "
            "shell): stop it or let it finish, then run the migrations again"
        )
    elif name.startswith("SQLITE_READONLY"):
        hint = "it cannot be written here: point DATABASE_URL at a writable file"
    else:
        hint = "check that DATABASE_URL names the database to migrate"
    return f"cannot migrate {path!r} (from DATABASE_URL): {error}; {hint}"


if __name__ == "__main__":
    sys.exit(main())
