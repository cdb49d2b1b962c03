"""The libSQL engine (Turso): what differs from the stdlib ``sqlite3`` one, in one place.

``lib.database`` uses it when ``DATABASE_DRIVER=libsql``, ``DATABASE_URL`` is a
``libsql://`` URL or ``TURSO_DATABASE_URL`` is set. libsql-python raises ``ValueError``
for every database error and has no row factory, so results and errors are translated
here into what the sqlite3 engine gives: rows that read like ``sqlite3.Row`` and
``sqlite3.IntegrityError`` / ``sqlite3.OperationalError``.
"""

from __future__ import annotations

import importlib
import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

# What sqlite3 counts as DML (its cursor.rowcount rule): the statements that change rows.
_DML = re.compile(r"(?:\s|--[^\n]*|/\*.*?\*/)*+(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.I | re.S)


class LibsqlRow(tuple[Any, ...]):
    """A result row that reads like ``sqlite3.Row``: ``row["col"]``, ``row[0]``, ``dict(row)``."""

    _index: Mapping[str, int]

    def __new__(cls, values: Sequence[Any], index: Mapping[str, int]) -> LibsqlRow:
        """The row's values, with the column index every row of its result shares."""
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._index[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        """The column names, in order: what ``dict(row)`` needs."""
        return list(self._index)


def connect(path: str, *, timeout: float, sync_url: str | None, auth_token: str | None) -> Any:
    """Open a libSQL connection: a local file, a remote URL, or an embedded replica."""
    libsql = importlib.import_module("libsql")
    options: dict[str, Any] = {"isolation_level": None, "_check_same_thread": False}
    if sync_url:
        options["sync_url"] = sync_url
    if auth_token:
        options["auth_token"] = auth_token
    try:
        return libsql.connect(path, timeout=timeout, **options)
    except ValueError as error:  # libsql reports every database error this way
        raise translate_error(error) from error


def positional(args: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...]:
    """libsql-python binds positional parameters only."""
    if isinstance(args, Mapping):
        raise TypeError(
            "named parameters (a mapping of args) need the sqlite3 engine; "
            "with DATABASE_DRIVER=libsql pass a sequence and use ? placeholders"
        )
    return tuple(args)


def translate_error(error: Exception) -> sqlite3.Error:
    """The sqlite3 exception a libSQL ``ValueError`` stands for."""
    message = str(error)
    if "constraint failed" in message:
        return sqlite3.IntegrityError(message)
    return sqlite3.OperationalError(message)


def rows(cursor: Any) -> tuple[list[LibsqlRow], tuple[str, ...]]:
    """Fetch a cursor's rows as :class:`LibsqlRow` objects, with the column names."""
    columns = tuple(column[0] for column in cursor.description or ())
    index = {name: position for position, name in enumerate(columns)}
    fetched = cursor.fetchall() or []  # libsql gives None for statements without rows
    return [LibsqlRow(values, index) for values in fetched], columns


def rows_affected(sql: str, rowcount: int, rows: list[Any], columns: tuple[str, ...]) -> int:
    """sqlite3's ``rowcount`` for ``sql``: that of INSERT, UPDATE, DELETE and REPLACE, 0 for
    any other statement (libsql repeats the previous statement's count for those).
    ``... RETURNING`` gives one row per changed row, so those are counted."""
    if not _DML.match(sql):
        return 0
    return len(rows) if columns else max(rowcount, 0)
