"""The libSQL engine (Turso): what differs from the stdlib ``sqlite3`` one, in one place.

``lib.database`` uses it when ``DATABASE_DRIVER=libsql``, ``DATABASE_URL`` is a
``libsql://`` URL or ``TURSO_DATABASE_URL`` is set. libsql-python raises ``ValueError``
for every database error, has no row factory and checks less than sqlite3 does, so
:class:`LibsqlConnection` refuses what sqlite3 refuses (several statements at once, the
wrong number of parameters, an int too large, an unsupported type), with sqlite3's
exception classes and messages, and translates libsql's errors into the sqlite3 classes
sqlite3 raises for the same failure; rows read like ``sqlite3.Row``.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sqlite3
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from typing import Any, NamedTuple

from .sql_text import ONLY_COMMENTS, TOKEN, script_statements

# What sqlite3 counts as DML (its cursor.rowcount rule): the statements that change rows.
_DML = re.compile(r"(?:\s|--[^\n]*|/\*.*?\*/)*+(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.I | re.S)
# The statements that can fire a trigger, and so fail with the message of its RAISE().
_FIRES_TRIGGERS = re.compile(
    r"(?:\s|--[^\n]*|/\*.*?\*/)*+(?:INSERT|UPDATE|DELETE|REPLACE|WITH)\b", re.I | re.S
)

# SQLite's largest INTEGER; sqlite3 refuses larger ints, libsql would store them as REAL.
_INT_RANGE = range(-(2**63), 2**63)
_INT32_RANGE = range(-(2**31), 2**31)
# A trigger's RAISE(ABORT | FAIL | ROLLBACK, 'message'): its message is the error's.
_RAISE = re.compile(r"RAISE\s*\(\s*(?:ABORT|FAIL|ROLLBACK)\s*,\s*'((?:[^']|'')*)'\s*\)", re.I)
# SQLite's own messages for a lock it could not get.
_LOCKED = ("database is locked", "database table is locked", "database schema is locked")
# Connection failures of a remote database or an embedded replica's sync.
_REMOTE_FAILURE = ("Hrana", "sync error", "http error", "error trying to connect")
# An error the remote database answered with (Hrana's stream or cursor error, as libsql
# shows it): a failure of the statement, told by its code, not of the connection.
_REMOTE_ANSWER = re.compile(r'message: "((?:[^"\\]|\\.)*)", code: "([A-Z0-9_]+)"')
# Where sqlite3 warns of a named placeholder given a sequence (Python 3.12 and 3.13), the
# warning points past this package, at the application's call.
_AT_THE_CALLER: dict[str, Any] = {
    "skip_file_prefixes": (os.path.join(os.path.dirname(__file__), ""),)
}
_RUST_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]+\}|.)")
_RUST_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
# The sqlite3 class of each primary result code (an extended one, SQLITE_CONSTRAINT_UNIQUE,
# has its primary one's); sqlite3 raises DatabaseError for those not named here.
_CODE_CLASSES: dict[str, type[sqlite3.Error]] = {
    "SQLITE_CONSTRAINT": sqlite3.IntegrityError,
    "SQLITE_MISMATCH": sqlite3.IntegrityError,
    "SQLITE_TOOBIG": sqlite3.DataError,
    "SQLITE_RANGE": sqlite3.InterfaceError,
    "SQLITE_MISUSE": sqlite3.InterfaceError,
    "SQLITE_INTERNAL": sqlite3.InternalError,
    "SQLITE_NOTFOUND": sqlite3.InternalError,
    "SQLITE_CORRUPT": sqlite3.DatabaseError,
    "SQLITE_NOTADB": sqlite3.DatabaseError,
    **dict.fromkeys(
        (
            "SQLITE_ERROR",
            "SQLITE_PERM",
            "SQLITE_ABORT",
            "SQLITE_BUSY",
            "SQLITE_LOCKED",
            "SQLITE_NOMEM",
            "SQLITE_READONLY",
            "SQLITE_INTERRUPT",
            "SQLITE_IOERR",
            "SQLITE_FULL",
            "SQLITE_CANTOPEN",
            "SQLITE_PROTOCOL",
            "SQLITE_EMPTY",
            "SQLITE_SCHEMA",
        ),
        sqlite3.OperationalError,
    ),
}


class RemoteDatabaseError(sqlite3.OperationalError):
    """A remote Turso/libSQL database (or an embedded replica's sync) could not be reached;
    the message names the setting it came from."""


def _placeholders(sql: str) -> Iterator[tuple[re.Match[str], int]]:
    """The placeholders of the first statement of ``sql``, each with the number SQLite
    gives it: ``?`` the next number, ``?NNN`` number NNN, and a name (``:a``, ``@a``,
    ``$a``) the next number the first time it is used, the same number after that. Empty
    statements before the first one (``; SELECT ?``) are skipped, as SQLite skips them."""
    count = 0
    names: dict[str, int] = {}
    started = False
    for token in TOKEN.finditer(sql):
        if token.group("semicolon"):
            if started:
                return
            continue
        started = started or not token.group().startswith(("--", "/*"))
        if number := token.group("number"):
            if len(number) > 1:
                count = max(count, int(number[1:]))
                yield token, int(number[1:])
            else:
                count += 1
                yield token, count
        elif name := token.group("name"):
            if name not in names:
                count += 1
                names[name] = count
            yield token, names[name]


class _Shape(NamedTuple):
    """What the layer needs to know of a statement's text, found once per text."""

    second_statement: bool
    parameters: int  # as sqlite3_bind_parameter_count: the highest placeholder number
    places: tuple[tuple[int, int, int], ...]  # each placeholder's start, end and number
    names: tuple[tuple[int, str], ...]  # the named placeholders (``:a``), by number
    dml: bool
    empty: bool  # only whitespace, comments and semicolons: no statement at all


@functools.lru_cache(maxsize=512)
def _shape(sql: str) -> _Shape:
    """The shape of ``sql``; the texts an application runs are few, and each is looked at
    on every run: a statement's text is lexed once, not each time it runs."""
    found = list(_placeholders(sql))
    places = tuple((token.start(), token.end(), number) for token, number in found)
    names = {number: token.group() for token, number in found if token.group("name")}
    return _Shape(
        second_statement=_second_statement(sql),
        parameters=max((number for _, _, number in places), default=0),
        places=places,
        names=tuple(sorted(names.items())),
        dml=_DML.match(sql) is not None,
        empty=next(script_statements(sql), None) is None,
    )


def widened(sql: str, values: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """``sql`` and ``values`` with every int outside 32 bits written into the SQL, as an
    integer literal in place of its placeholder (its value bound as NULL instead):
    libsql-python binds those as REAL, which loses digits beyond 2**53 and stores a REAL
    where sqlite3 stores an INTEGER. A literal, as a bound value, has no affinity, so it
    compares as sqlite3's would (a CAST would give it INTEGER affinity). Placeholders after
    the first such literal are written with their number (``?N``), which would shift."""
    wide = {
        position: value
        for position, value in enumerate(values, 1)
        if type(value) is int and value not in _INT32_RANGE
    }
    if not wide:
        return sql, values
    pieces: list[str] = []
    end = 0
    for start, stop, number in _shape(sql).places:
        if number in wide:
            text = _int_literal(wide[number])
        elif pieces:  # after a literal
            text = f"?{number}"
        else:
            continue
        pieces += [sql[end:start], text]
        end = stop
    pieces.append(sql[end:])
    bound_values = tuple(
        None if position in wide else value for position, value in enumerate(values, 1)
    )
    return "".join(pieces), bound_values


def _int_literal(value: int) -> str:
    """``value``, an int of SQLite's range, as an SQL expression of that INTEGER: digits
    from Python's int only, in parentheses (-2**63 has no literal of its own)."""
    if value == -(2**63):
        return "(-9223372036854775807 - 1)"
    return f"({int.__repr__(value)})"


def _second_statement(sql: str) -> bool:
    """Whether ``sql`` holds more than one statement: anything but whitespace and comments
    after the first one's ``;`` (a trigger's body ends with ``END;``, not its first ``;``)."""
    start = 0
    for token in TOKEN.finditer(sql):
        if token.group("semicolon") and sqlite3.complete_statement(sql[start : token.end()]):
            if ONLY_COMMENTS.fullmatch(sql, start, token.start()):
                start = token.end()  # an empty statement first: SQLite skips it
                continue
            return ONLY_COMMENTS.fullmatch(sql, token.end()) is None
    return False


def check_statement(sql: str, args: Sequence[Any]) -> None:
    """Refuse what sqlite3 refuses before it runs a statement, as sqlite3 does."""
    shape = _shape(sql)
    if shape.second_statement:
        raise sqlite3.ProgrammingError("You can only execute one statement at a time.")
    uses = shape.parameters
    if uses != len(args):
        raise sqlite3.ProgrammingError(
            "Incorrect number of bindings supplied. The current statement uses "
            f"{uses}, and there are {len(args)} supplied."
        )
    if shape.names:
        _refuse_names_bound_from_a_sequence(shape.names)


def _refuse_names_bound_from_a_sequence(names: Sequence[tuple[int, str]]) -> None:
    """Do what this Python's sqlite3 does with named placeholders (``:a``) given a
    sequence of args: bind each by its number (before 3.12), warn of each
    (DeprecationWarning) or refuse the first (ProgrammingError, from 3.14)."""
    if _ON_A_NAME_GIVEN_A_SEQUENCE == "bind":
        return
    for number, name in names:
        message = (
            f"Binding {number} ({name!r}) is a named parameter, but you supplied a sequence "
            "which requires nameless (qmark) placeholders."
        )
        if _ON_A_NAME_GIVEN_A_SEQUENCE == "refuse":
            raise sqlite3.ProgrammingError(message)
        warnings.warn(
            f"{message} Starting with Python 3.14 an sqlite3.ProgrammingError will be raised.",
            DeprecationWarning,
            **_AT_THE_CALLER,
        )


def _sqlite3_on_a_name_given_a_sequence() -> str:
    """``bind``, ``warn`` or ``refuse``: what this Python's sqlite3 does, asked of it at
    import (changing the warning filters for a moment, as no other thread does yet)."""
    with closing(sqlite3.connect(":memory:")) as probe, warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            probe.execute("SELECT :a", (1,))
        except DeprecationWarning:
            return "warn"
        except sqlite3.ProgrammingError:
            return "refuse"
    return "bind"


_ON_A_NAME_GIVEN_A_SEQUENCE = _sqlite3_on_a_name_given_a_sequence()


def positional(args: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...]:
    """libsql-python binds positional parameters only."""
    if type(args) is tuple:
        return args
    if args is None or not hasattr(type(args), "__getitem__"):
        raise sqlite3.ProgrammingError("parameters are of unsupported type")
    if isinstance(args, Mapping):
        raise TypeError(
            "named parameters (a mapping of args) need the sqlite3 engine; "
            "with DATABASE_DRIVER=libsql pass a sequence and use ? placeholders"
        )
    return tuple(args)


def bound(values: Sequence[Any]) -> tuple[Any, ...]:
    """The parameters as libsql-python binds them, of the types it takes.

    Values are adapted as sqlite3 adapts them: a registered sqlite3 adapter applies, else
    the value's ``__conform__``, and an exception either raises is raised as it is;
    subclasses of int, float and str bind their own value (not what their ``__str__`` says,
    ``class Status(str, Enum)``), objects with the buffer protocol (bytearray, memoryview,
    array.array) their bytes. An int out of SQLite's range and a type sqlite3 does not
    support are refused with sqlite3's errors."""
    return tuple(_value(value, position) for position, value in enumerate(values, 1))


def _value(value: Any, position: int) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is float:
        return value
    if kind is int:
        if value not in _INT_RANGE:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return value
    adapter = sqlite3.adapters.get((kind, sqlite3.PrepareProtocol))
    if adapter is not None:
        value = adapter(value)
    elif (conform := getattr(value, "__conform__", None)) is not None:
        adapted = conform(sqlite3.PrepareProtocol)
        value = value if adapted is None else adapted
    return _bindable(value, position)


def _bindable(value: Any, position: int) -> Any:
    """``value``, adapted already, as sqlite3 binds it."""
    if value is None or type(value) in (str, bytes, float):
        return value
    if isinstance(value, int):  # bool, IntEnum, ...
        number = int.__int__(value)
        if number not in _INT_RANGE:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return number
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):  # class Status(str, Enum), StrEnum, ...
        return str.__str__(value)
    try:
        return memoryview(value).tobytes()
    except TypeError:
        raise sqlite3.ProgrammingError(
            f"Error binding parameter {position}: type '{type(value).__name__}' is not supported"
        ) from None


def translate_error(
    error: Exception, connection: Any = None, remote: str | None = None, sql: str | None = None
) -> sqlite3.Error:
    """The sqlite3 exception a libSQL ``ValueError`` stands for: the class sqlite3 raises
    for the same failure, told by its message (libsql gives no error code).

    ``connection``: the libsql connection it came from, to tell a trigger's RAISE() by its
    message (None when the statement fires no trigger); ``remote``: what to say of a
    remote database that cannot be reached; ``sql``: the statement that failed, which a
    trigger's RAISE() can have failed only if SQLite compiles it."""
    message = str(error)
    if message.startswith("Hrana") and (answer := _REMOTE_ANSWER.search(message)):
        return _remote_answer(answer[1], answer[2])
    if remote is not None and any(marker in message for marker in _REMOTE_FAILURE):
        return RemoteDatabaseError(f"{message}; {remote}")
    if (
        "constraint failed" in message
        or message.startswith("cannot store ")  # a STRICT table's column type
        or message == "datatype mismatch"
        or (
            connection is not None
            and not message.startswith(_LOCKED)  # the look-up would wait for that lock too
            and _raised_by_a_trigger(connection, message, sql)
        )
    ):
        return sqlite3.IntegrityError(message)
    if message == "string or blob too big":
        return sqlite3.DataError(message)
    if message.startswith("Unsupported parameter type"):
        return sqlite3.ProgrammingError(message)
    if message in ("file is not a database", "database disk image is malformed"):
        return sqlite3.DatabaseError(message)
    return sqlite3.OperationalError(message)


def _remote_answer(quoted: str, code: str) -> sqlite3.Error:
    """The sqlite3 exception for the error a remote database answered with: the class
    sqlite3 gives its result ``code``, the message as SQLite words it (without the code
    and "SQLite error: " that the server puts first). Codes of the server's own
    (SQL_PARSE_ERROR, ...) are OperationalErrors."""
    message = _RUST_ESCAPE.sub(_unescaped, quoted)
    message = re.sub(r"^(?:[A-Z0-9_]+: )?(?:SQLite error: )?", "", message)
    if not code.startswith("SQLITE_"):
        return sqlite3.OperationalError(message)
    primary = code
    while primary not in _CODE_CLASSES and "_" in primary[len("SQLITE_") :]:
        primary = primary.rpartition("_")[0]
    return _CODE_CLASSES.get(primary, sqlite3.DatabaseError)(message)


def _unescaped(escape: re.Match[str]) -> str:
    """The character a Rust string's ``\\x`` escape (``Debug``) stands for."""
    text = escape[1]
    if text.startswith("u{"):
        return chr(int(text[2:-1], 16))
    return _RUST_ESCAPES.get(text, text)


def _raised_by_a_trigger(connection: Any, message: str, sql: str | None) -> bool:
    """Whether a trigger's ``RAISE(ABORT | FAIL | ROLLBACK, message)`` says ``message``
    (and ``sql``, if given, compiles: an error of its own with that message does not)."""
    try:
        triggers = connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%RAISE%' "
            "UNION ALL "
            "SELECT sql FROM sqlite_temp_master WHERE type = 'trigger' AND sql LIKE '%RAISE%'"
        ).fetchall()
    except ValueError:
        return False
    if not any(
        raised.replace("''", "'") == message
        for (trigger,) in triggers or ()
        for raised in _RAISE.findall(trigger or "")
    ):
        return False
    if sql is None:
        return True
    try:
        connection.execute(f"EXPLAIN {sql}").fetchall()  # compiled, not run
    except ValueError:
        return False
    return True


class _NoRows:
    """The cursor of a statement that holds no statement, as sqlite3 gives it."""

    description = None
    rowcount = -1
    lastrowid = None

    def fetchall(self) -> list[Any]:
        """No rows."""
        return []


_NO_ROWS = _NoRows()


def _panic(error: BaseException) -> BaseException:
    """sqlite3's OperationalError for a panic of libsql's (a ``PanicException``, which is
    no Exception: ``except Exception`` would not catch it), such as the one text that is
    not valid UTF-8 causes; any other exception as it is."""
    if type(error).__name__ != "PanicException":
        return error
    if "Utf8Error" in str(error):
        return sqlite3.OperationalError(f"Could not decode to UTF-8 a text value read: {error}")
    return sqlite3.OperationalError(f"libsql failed: {error}")


class LibsqlConnection:
    """A libsql connection that checks and fails as a sqlite3 one does (see the module)."""

    def __init__(self, connection: Any, remote: str | None = None) -> None:
        """``remote``: what to say when the remote database cannot be reached."""
        self._connection = connection
        self._remote = remote

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return bool(self._connection.in_transaction)

    def execute(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        """Run one statement with ``args``; the cursor, or sqlite3's exception."""
        values = positional(args)
        check_statement(sql, values)  # sqlite3 counts before it looks at the values
        if _shape(sql).empty:
            return _NO_ROWS  # sqlite3 runs nothing; libsql would fail with "not an error"
        sent, values = widened(sql, bound(values))  # an adapter's error is raised as it is
        try:
            return self._connection.execute(sent, values)
        except ValueError as error:  # libsql reports every database error this way
            raise self._translated(error, sql) from error

    def executescript(self, sql: str) -> None:
        """Run the statements of the script ``sql`` one by one, as sqlite3 does: an open
        transaction is committed first, and the first statement that fails raises sqlite3's
        exception (those before it stay done, those after it do not run). libsql's own
        executescript stops at a failing statement without a word."""
        if "\0" in sql:  # sqlite3 refuses the script before it runs any of it
            raise ValueError("embedded null character")
        if self.in_transaction:
            self._run("COMMIT")
        for statement in script_statements(sql):
            self._run(statement)

    def _run(self, sql: str) -> None:
        """Run ``sql``, one statement without parameters, to its end."""
        try:
            self._connection.execute(sql).fetchall()
        except ValueError as error:  # libsql reports every database error this way
            raise self._translated(error, sql) from error
        except BaseException as error:  # sqlite3 never decodes the rows of a script
            if type(error).__name__ != "PanicException":
                raise

    def _translated(self, error: ValueError, sql: str) -> sqlite3.Error:
        """sqlite3's exception for libsql's ``error`` running ``sql`` (see
        :func:`translate_error`); only a statement that can fire a trigger may have failed
        on a trigger's RAISE()."""
        triggers = self._connection if _FIRES_TRIGGERS.match(sql) else None
        return translate_error(error, triggers, self._remote, sql)

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def connect(
    path: str,
    *,
    timeout: float,
    sync_url: str | None,
    auth_token: str | None,
    remote: str | None = None,
) -> LibsqlConnection:
    """Open a libSQL connection: a local file, a remote URL, or an embedded replica.

    ``remote``: what to say when a remote database cannot be reached, or a replica synced."""
    libsql = importlib.import_module("libsql")
    options: dict[str, Any] = {"isolation_level": None, "_check_same_thread": False}
    if sync_url:
        options["sync_url"] = sync_url
    if auth_token:
        options["auth_token"] = auth_token
    try:
        return LibsqlConnection(libsql.connect(path, timeout=timeout, **options), remote)
    except ValueError as error:  # libsql reports every database error this way
        raise translate_error(error, remote=remote) from error


class LibsqlRow:
    """A result row that reads like ``sqlite3.Row``: ``row["col"]`` (the first column of
    that name, in any case; IndexError if none), ``row[0]``, ``row[1:]``, ``dict(row)``,
    ``keys()`` with every column; equal only to a row of the same columns and values."""

    __slots__ = ("_columns", "_index", "_values")

    def __init__(
        self, values: Sequence[Any], columns: tuple[str, ...], index: Mapping[str, int]
    ) -> None:
        """The row's values, with the columns and name index every row of its result shares."""
        self._values = tuple(values)
        self._columns = columns
        self._index = index

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            position = self._index.get(key.translate(_ASCII_LOWER))
            if position is None:
                raise IndexError("No item with that key")
            return self._values[position]
        return self._values[key]

    def keys(self) -> list[str]:
        """The column names, in order, repeated names included: what ``dict(row)`` needs."""
        return list(self._columns)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LibsqlRow):
            return NotImplemented
        return self._columns == other._columns and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._columns) ^ hash(self._values)

    def __repr__(self) -> str:
        return f"<LibsqlRow {self._values!r}>"


# sqlite3.Row compares column names in ASCII case only.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def rows(cursor: Any) -> tuple[list[LibsqlRow], tuple[str, ...]]:
    """Fetch a cursor's rows as :class:`LibsqlRow` objects, with the column names; an
    error while they are read (libsql runs a statement as its rows are read) is sqlite3's."""
    columns = tuple(column[0] for column in cursor.description or ())
    index: dict[str, int] = {}
    for position, name in enumerate(columns):
        index.setdefault(name.translate(_ASCII_LOWER), position)  # the first of a name
    try:
        fetched = cursor.fetchall() or []  # libsql gives None for statements without rows
    except ValueError as error:  # libsql reports every database error this way
        raise translate_error(error) from error
    except BaseException as error:
        raise _panic(error) from error
    return [LibsqlRow(values, columns, index) for values in fetched], columns


def rows_affected(sql: str, rowcount: int, rows: list[Any], columns: tuple[str, ...]) -> int:
    """sqlite3's ``rowcount`` for ``sql``: that of INSERT, UPDATE, DELETE and REPLACE, 0 for
    any other statement (libsql repeats the previous statement's count for those), and 0
    too for one that begins with ``WITH``, as sqlite3 reports it. ``... RETURNING`` gives
    one row per changed row, so those are counted."""
    if not _shape(sql).dml:
        return 0
    return len(rows) if columns else max(rowcount, 0)
