"""Schema look-ups that work on every engine (sqlite3 and libsql) through the client."""

from __future__ import annotations

from lib.database import DatabaseClient


def table_names(client: DatabaseClient) -> set[str]:
    """The tables of the client's database."""
    rows = client.execute("SELECT name FROM sqlite_master WHERE type = 'table'").rows
    return {row["name"] for row in rows}
