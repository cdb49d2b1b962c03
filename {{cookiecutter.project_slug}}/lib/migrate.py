"""Schema migrations: ordered ``migrations/*.sql`` files applied with ``sqlite_utils.Migrations``.

``python -m lib.migrate`` applies the pending ones to ``DATABASE_URL`` and says which.
All pending migrations apply in one transaction: if one fails, the error names its file
and the database is left exactly as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .database import (
    DEFAULT_DATABASE_URL,
    DatabaseClient,
    DatabaseConfigError,
    local_database_file,
    parse_database_url,
)

if TYPE_CHECKING:  # imported when migrations run, so that a test session starts faster
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_SET = "app"
# Where sqlite-utils' Migrations records what it applied (``Migrations.migrations_table``).
MIGRATIONS_TABLE = "_sqlite_migrations"


class MigrationError(RuntimeError):
    """A migration file failed; nothing from this run was applied."""


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The ``*.sql`` files of ``directory`` in the order they apply (by file name)."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    return sorted(directory.glob("*.sql"))


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
    """Split a script into complete statements (triggers' ``BEGIN ... END`` stay whole)."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


def _sql_migration(path: Path) -> Callable[[sqlite_utils.Database], None]:
    def run(db: sqlite_utils.Database) -> None:
        for number, statement in enumerate(split_statements(path.read_text()), start=1):
            try:
                db.execute(statement)
            except sqlite3.Error as error:
                raise MigrationError(
                    f"migration {path.name} failed at statement {number}: {error}; "
                    "no migration of this run was applied"
                ) from error

    return run


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
    """Apply every pending migration atomically; return the names applied."""
    migrations = load_migrations(directory)
    names = [migration.name for migration in migrations.pending(db)]
    with db.atomic():
        migrations.apply(db)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.migrate",
        description="Apply pending migrations to the database named by DATABASE_URL.",
    )
    parser.add_argument("--migrations", type=Path, default=MIGRATIONS_DIR, help="SQL files")
    parser.add_argument("--list", action="store_true", help="show pending migrations only")
    args = parser.parse_args(argv)
    try:
        path = parse_database_url(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    except DatabaseConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    file = local_database_file(path)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    client = DatabaseClient(path, owner="python -m lib.migrate")
    try:
        if args.list:
            pending = pending_migrations(client.db, args.migrations)
            print(f"{len(pending)} pending migration(s) for {path}: {', '.join(pending) or '-'}")
            return 0
        applied = apply_migrations(client.db, args.migrations)
    except MigrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if applied:
        print(f"Applied {len(applied)} migration(s) to {path}: {', '.join(applied)}")
    else:
        print(f"No pending migrations for {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
