"""The database service: one SQLite client per process, or per test under isolation.

Application code calls :func:`get_database_client` at call time. Tests get a fresh
client per test from ``lib.isolation_manager``; a client kept beyond its test raises
:class:`ClientClosedError` naming who owned it and where it was closed, instead of
sqlite3's anonymous "Cannot operate on a closed database".

The settings are read by ``lib.database_config``, whose public names can be imported from
here too; ``lib.client_lock`` decides which thread or task may use a client at a time;
``lib.guarded_connection`` is the sqlite3 connection a client opens, which refuses to be
used once its client closed; the async client, ``lib.async_database``, can be imported
from here too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeGuard

from . import guarded_connection, libsql_engine
from .client_lock import ClientLock
from .database_config import (
    DEFAULT_DATABASE_URL,
    ENGINES,
    REMOTE_SCHEMES,
    DatabaseConfigError,
    DatabaseTarget,
    Engine,
    check_remote_url,
    create_database_directory,
    database_driver,
    database_target,
    is_read_only_uri,
    is_remote_url,
    local_database_file,
    open_error,
    parse_database_url,
    remote_hint,
    shown_url,
    url_target,
)
from .guarded_connection import ClientClosedError, client_of
from .libsql_engine import RemoteDatabaseError
from .statement_alarm import CHECK_EVERY_STEPS, StatementAlarm

if TYPE_CHECKING:
    import sqlite_utils  # imported when first used: it takes longer to import than a test runs

    from .async_database import AsyncDatabaseClient, AsyncTransaction

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CONNECTION_PRAGMAS",
    "DEFAULT_DATABASE_URL",
    "ENGINES",
    "REMOTE_SCHEMES",
    "Args",
    "AsyncDatabaseClient",
    "AsyncTransaction",
    "ClientClosedError",
    "DatabaseAccessBlockedError",
    "DatabaseClient",
    "DatabaseConfigError",
    "DatabaseService",
    "DatabaseShuttingDownError",
    "DatabaseTarget",
    "Engine",
    "RemoteDatabaseError",
    "ResultSet",
    "Statement",
    "Transaction",
    "block_database_access",
    "caller_location",
    "checked_database_target",
    "client_of",
    "close_database_service",
    "create_database_directory",
    "database_driver",
    "database_target",
    "delete_database_files",
    "forbid_remote_databases",
    "get_database_client",
    "get_database_service",
    "is_remote_url",
    "local_database_file",
    "parse_database_url",
    "refuse_thread",
    "reset_database_instance",
    "swap_database_service",
    "url_target",
]

logger = logging.getLogger("database")

BUSY_TIMEOUT_MS = 5_000
CONNECTION_PRAGMAS: Mapping[str, str] = {
    "journal_mode": "WAL",
    "foreign_keys": "ON",
    "busy_timeout": str(BUSY_TIMEOUT_MS),
}
# Pragmas that write to the database file: a read-only connection reads them instead.
_WRITING_PRAGMAS = frozenset({"journal_mode"})
# How often a connection tries again to switch a database another one holds to WAL.
LOCK_RETRY_SECONDS = 0.05

Args: TypeAlias = Sequence[Any] | Mapping[str, Any]
Statement: TypeAlias = str | tuple[str, Args] | Mapping[str, Any]


class DatabaseShuttingDownError(RuntimeError):
    """The service is closing; no new work is accepted until it is done."""


class DatabaseAccessBlockedError(RuntimeError):
    """The process-wide database was asked for where no database is allowed."""


@dataclass(frozen=True, slots=True)
class ResultSet:
    """The outcome of one statement: rows support ``row["col"]``, ``row[0]``, ``dict(row)``.

    ``rows_affected`` is what sqlite3's ``rowcount`` says, on both engines: the rows an
    INSERT, UPDATE, DELETE or REPLACE changed, 0 for any other statement, and 0 too for
    one that begins with ``WITH`` (``WITH ... INSERT``), whatever it changed."""

    rows: list[Any]
    columns: tuple[str, ...]
    rows_affected: int
    last_insert_rowid: int | None


_LIB_DIR = os.path.dirname(os.path.abspath(__file__))
LIBSQL_MISSING = (
    "the libsql engine (a libsql:// DATABASE_URL, TURSO_DATABASE_URL or "
    "DATABASE_DRIVER=libsql) needs the libsql package: pip install libsql"
)


def _libsql_connect(
    path: str, sync_url: str | None, auth_token: str | None, remote: str | None
) -> Any:
    try:
        return libsql_engine.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            sync_url=sync_url,
            auth_token=auth_token,
            remote=remote,
        )
    except ImportError as error:
        raise DatabaseConfigError(LIBSQL_MISSING) from error


def checked_database_target() -> DatabaseTarget:
    """:func:`database_target`, its engine installed too: what a server checks as it starts,
    opening no database. Raises ``DatabaseConfigError`` naming what to set or install."""
    target = database_target()
    if target.engine == "libsql" and importlib.util.find_spec("libsql") is None:
        raise DatabaseConfigError(LIBSQL_MISSING)
    return target


def _apply_pragmas(conn: Any, pragmas: Mapping[str, str], *, read_only: bool) -> None:
    """Set ``pragmas``; a read-only connection reads the ones that would write instead,
    which still fails at once on a file that is not a database."""
    for name, value in pragmas.items():
        if read_only and name.lower() in _WRITING_PRAGMAS:
            conn.execute(f"PRAGMA {name}")
        elif name.lower() in _WRITING_PRAGMAS:
            _execute_waiting_for_the_lock(conn, f"PRAGMA {name}={value}")
        else:
            conn.execute(f"PRAGMA {name}={value}")


def _execute_waiting_for_the_lock(conn: Any, sql: str) -> None:
    """Run ``sql``, again while another connection holds the lock, up to the connection's
    busy timeout. Switching a new file to WAL takes an exclusive lock without waiting for
    it, as SQLite does for no other statement: two processes opening a new database at
    once (two servers, two ``migrate`` runs) would fail with "database is locked"."""
    started = time.monotonic()  # the statement's own busy wait counts towards the timeout
    deadline = None
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as error:
            if not is_contention(error):
                raise
            if deadline is None:
                (busy_timeout_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
                deadline = started + busy_timeout_ms / 1000
            if time.monotonic() >= deadline:
                raise
            time.sleep(LOCK_RETRY_SECONDS)


def is_contention(error: sqlite3.Error) -> bool:
    """A busy or locked database: another connection's doing, not a setting to fix."""
    name = getattr(error, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(error)


def caller_location() -> str:
    """``file:line`` of the nearest caller outside ``lib/`` (cheap: no traceback objects)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.rpartition(os.sep)[0] == _LIB_DIR:
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _normalize(number: int, statement: Statement) -> tuple[str, Args]:
    """``statement`` (the ``number``-th of a batch) as its SQL and arguments.

    Arguments that are a string would be bound one character per placeholder."""
    sql: object = None
    args: object = ()
    if isinstance(statement, str):
        sql = statement
    elif isinstance(statement, Mapping) and set(statement) <= {"sql", "args"}:
        sql, args = statement.get("sql"), statement.get("args", ())
    elif isinstance(statement, Sequence) and len(statement) == 2:
        sql, args = statement[0], statement[1]
    if isinstance(sql, str) and _are_arguments(args):
        return sql, args
    raise TypeError(
        f'batch statement {number} is {statement!r}: write each statement as "SQL", '
        '("SQL", args) or {"sql": "SQL", "args": args}'
    )


def _are_arguments(args: object) -> TypeGuard[Args]:
    return isinstance(args, Mapping) or (
        isinstance(args, Sequence) and not isinstance(args, str | bytes)
    )


class DatabaseClient:
    """One SQLite connection, safe to share between threads (calls are serialized)."""

    def __init__(
        self,
        path: str,
        *,
        owner: str = "the application",
        pragmas: Mapping[str, str] = CONNECTION_PRAGMAS,
        engine: Engine = "sqlite3",
        sync_url: str | None = None,
        auth_token: str | None = None,
        source: str | None = None,
    ) -> None:
        """Open ``path``: a file, ``:memory:``, or an SQLite URI (``file:...?vfs=memdb``).

        ``engine="libsql"`` connects with libsql (``path`` may then be a remote URL, or a
        local embedded replica of ``sync_url``). A read-only URI (``?mode=ro``,
        ``?immutable=1``) keeps the file's journal mode. ``source`` names the setting
        ``path`` came from (``DATABASE_URL``): a local database that cannot be opened or
        set up raises :class:`DatabaseConfigError` naming it, caused by the sqlite3 error.
        """
        self.path = path
        self.owner = owner
        self.engine = engine
        self.opened_at = time.time()
        self.queries_executed = 0
        self._lock = ClientLock()
        self._transaction_thread: int | None = None  # the thread of the innermost open one
        self._closed_message: str | None = None
        self._alarm: StatementAlarm | None = None  # what interrupts its statements, if any
        self._begin_statement = "BEGIN" if is_read_only_uri(path) else "BEGIN IMMEDIATE"
        remote = is_remote_url(path) or sync_url is not None
        if is_remote_url(path):
            check_remote_url(path, source or "the path")
        if sync_url is not None:
            check_remote_url(sync_url, "TURSO_DATABASE_URL" if source else "sync_url")
        if remote and _remote_blocked_reason is not None:
            raise DatabaseAccessBlockedError(f"{_remote_blocked_reason} ({caller_location()})")
        try:
            self._conn: Any = self._connect(
                pragmas,
                sync_url,
                auth_token,
                remote=remote_hint(path, source, sync_url) if remote else None,
            )
        except sqlite3.Error as error:
            if remote or is_contention(error):
                raise
            raise open_error(path, source, error) from error
        self._db: sqlite_utils.Database | None = None

    def _connect(
        self,
        pragmas: Mapping[str, str],
        sync_url: str | None,
        auth_token: str | None,
        *,
        remote: str | None,
    ) -> Any:
        """The connection with ``pragmas`` applied; closed again if they fail. ``remote``:
        what to say if a remote database cannot be reached (None for a local one)."""
        if self.engine == "libsql":
            conn = _libsql_connect(self.path, sync_url, auth_token, remote)
        else:
            conn = guarded_connection.connect(self.path, self._lock, timeout=BUSY_TIMEOUT_MS / 1000)
        if remote is not None:
            return conn
        try:
            _apply_pragmas(conn, pragmas, read_only=is_read_only_uri(self.path))
        except BaseException:
            conn.close()
            raise
        if self.engine == "sqlite3":  # from now on, closing the connection closes the client
            conn.client_ref = weakref.ref(self)
        return conn

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        path = shown_url(self.path) if is_remote_url(self.path) else self.path
        return f"<DatabaseClient {path} owner={self.owner!r} {state}>"

    def stop_statements_on(self, alarm: StatementAlarm) -> None:
        """Interrupt this client's statements once ``alarm`` rings (sqlite3 engine): a
        statement running then fails with ``OperationalError: interrupted``, where a
        runaway query would otherwise run on past any timeout (see ``lib.statement_alarm``)."""
        if self.engine == "sqlite3":
            self._conn.set_progress_handler(alarm.rung, CHECK_EVERY_STEPS)
            self._alarm = alarm

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: every operation then raises ClientClosedError."""
        return self._closed_message is not None

    def _raise_if_closed(self) -> None:
        if self._closed_message is not None:
            raise ClientClosedError(self._closed_message)

    @contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[Any]:
        """The connection, held for this thread; ``timeout``: seconds to wait for another
        thread to let go (TimeoutError after that; None waits as long as it takes)."""
        self._raise_if_closed()  # fail at once, not after whoever holds the lock lets go
        if not self._lock.acquire(timeout):
            raise TimeoutError(f"{self!r} was still busy in another thread after {timeout}s")
        try:
            self._raise_if_closed()
            yield self._conn  # libsql's errors are translated by libsql_engine
        except sqlite3.Error as error:  # e.g. "interrupted": another thread closed us
            if self._closed_message is None:
                if self._alarm is not None and self._alarm.has_rung:
                    error.add_note(
                        "the statement ran past its test's timeout (pytest-timeout) and was "
                        "interrupted: a query that never ends?"
                    )
                raise
            raise ClientClosedError(self._closed_message) from error
        finally:
            self._lock.release()

    def execute(self, sql: str, args: Args = ()) -> ResultSet:
        """Run one statement and return its rows, columns and counts."""
        with self._connection() as conn:
            return self._statement(conn, sql, args)

    def _statement(self, conn: Any, sql: str, args: Args) -> ResultSet:
        """One statement on ``conn``, which this thread holds (see :meth:`_connection`)."""
        if self.engine == "libsql":
            cursor = conn.execute(sql, args)  # checked and translated as sqlite3 would
            rows, columns = libsql_engine.rows(cursor)
            affected = libsql_engine.rows_affected(sql, cursor.rowcount, rows, columns)
        else:
            # A plain cursor: the client itself raises ClientClosedError here.
            cursor = conn.cursor(sqlite3.Cursor)
            cursor.row_factory = sqlite3.Row
            cursor.execute(sql, args)
            rows = cursor.fetchall()
            columns = tuple(column[0] for column in cursor.description or ())
            # After fetchall: DML (RETURNING too) has its count, anything else -1.
            affected = max(cursor.rowcount, 0)
        self.queries_executed += 1
        return ResultSet(
            rows=rows, columns=columns, rows_affected=affected, last_insert_rowid=cursor.lastrowid
        )

    def batch(self, statements: Iterable[Statement]) -> list[ResultSet]:
        """Run statements atomically: all of them or, if one fails, none."""
        normalized = [_normalize(number, each) for number, each in enumerate(statements, 1)]
        with self.transaction() as tx:
            return [tx.execute(sql, args) for sql, args in normalized]

    def transaction(self) -> Transaction:
        """Begin a transaction (a savepoint when one is already open)."""
        return Transaction(self)

    def executescript(self, sql: str) -> None:
        """Run a script of several statements, outside any transaction: sqlite3 commits an
        open one first, which its rollback could then no longer undo, so that is refused."""
        with self._connection() as conn:
            if conn.in_transaction:
                raise RuntimeError(
                    "executescript() inside a transaction would commit it first (sqlite3 "
                    "does), so a rollback could no longer undo its changes: run the "
                    "statements with tx.execute() or db.batch() instead, or the script "
                    "outside the transaction"
                )
            conn.executescript(sql)

    @property
    def db(self) -> sqlite_utils.Database:
        """A ``sqlite_utils.Database`` on this same connection (sqlite3 engine only)."""
        with self._connection() as conn:
            if self.engine != "sqlite3":
                raise NotImplementedError(
                    "client.db (sqlite-utils) needs the sqlite3 engine: libsql connections "
                    "lack the sqlite3 API sqlite-utils uses; use client.execute() instead"
                )
            if self._db is None:
                import sqlite_utils

                self._db = sqlite_utils.Database(conn, execute_plugins=False)
            return self._db

    def close(
        self, timeout: float = 5.0, *, reason: str | None = None, where: str | None = None
    ) -> bool:
        """Close the connection; idempotent. Returns False if it could not within ``timeout``
        (and, called again, while that close is still waiting).

        New calls fail with :class:`ClientClosedError` at once; a statement still running in
        another thread is interrupted, and the connection closes when that thread lets go.
        ``where``: the caller's ``file:line``, when it calls from a worker thread.
        """
        if self.closed:
            return not self._lock.close_pending
        how = f"closed at {where or caller_location()}" + (f" {reason}" if reason else "")
        self._closed_message = (
            f"CLIENT_CLOSED: this database client belonged to {self.owner} and was {how}. "
            "A client lives only as long as its owner: ask for it where it is used "
            "(the `db` fixture or get_db_client() in a test, get_database_client() at call "
            "time in application code) instead of keeping it in a variable."
        )
        if self.engine == "sqlite3":
            self._conn.closed_message = self._closed_message  # guards client.db users too
        if not self._lock.acquire_to_close(0):
            if self.engine == "sqlite3":
                self._conn.interrupt()
            try:
                acquired = self._lock.acquire_to_close(timeout)
            except BaseException:  # a timeout cut the wait short: it closes when released
                self._lock.close_when_free(self._close_now)
                raise
            if not acquired:
                logger.warning("%r still busy after %.1fs; it closes when released", self, timeout)
                self._lock.close_when_free(self._close_now)
                return not self._lock.close_pending
        try:
            self._close_now()
        finally:
            self._lock.release()
        logger.debug("client closed: %s (%s)", self.path, how)
        return True

    def backup(self, destination: str | Path, timeout: float | None = None) -> None:
        """Copy this database, in-memory ones included, into the file ``destination``;
        ``timeout``: give up (TimeoutError) if another thread holds the client that long.

        Inside a transaction of this client the copy is what the client sees, its changes
        not yet committed included: SQLite's backup cannot read a database its own
        connection is writing (and Python's would wait for it forever). On libsql, which
        copies with ``VACUUM INTO``, a backup inside a transaction is refused."""
        with self._connection(timeout) as conn:
            if self.engine == "libsql":
                _vacuum_into(conn, Path(destination))
            elif conn.in_transaction:
                Path(destination).write_bytes(conn.serialize())
            else:
                with closing(sqlite3.connect(destination)) as target:
                    conn.backup(target)

    def restore_from(self, source: sqlite3.Connection) -> None:
        """Replace this database with a copy of ``source``: how a named in-memory database
        gets its contents (``deserialize`` would make a private one instead).

        ``source`` must not be in WAL mode: its copy would be marked WAL, which an
        in-memory database cannot open.
        """
        if self.engine == "libsql":
            raise DatabaseConfigError(
                "copying a database into a client needs the sqlite3 engine: libsql has no "
                "backup API; use the file strategy with DATABASE_DRIVER=libsql"
            )
        if source.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            raise DatabaseConfigError(
                "restore_from() needs a source that is not in WAL mode (an in-memory copy "
                "cannot open a WAL database): copy it into memory first, or use backup()"
            )
        with self._connection() as conn:
            source.backup(conn)

    def _begin(self, savepoint: str) -> str | None:
        """BEGIN IMMEDIATE, or ``SAVEPOINT savepoint`` inside an open transaction; returns
        the savepoint's name, or None for a transaction of its own.

        IMMEDIATE takes the write lock at once, waiting for it up to the busy timeout: a
        transaction that read first and wrote later would otherwise fail at its first
        write ("database is locked") whenever another connection had written since its
        read, which no busy timeout helps with. A read-only connection begins plainly."""
        with self._connection() as conn:
            name = savepoint if conn.in_transaction else None
            conn.execute(f"SAVEPOINT {name}" if name else self._begin_statement)
            return name

    def _end(self, savepoint: str | None, *, rollback: bool) -> None:
        """Commit or roll back the transaction (``savepoint`` None) or the savepoint; a
        failed commit does not leave the transaction open, and a commit or release finding
        no transaction open any more raises (see :func:`_ended_elsewhere`)."""
        if savepoint is None:
            statements = ["ROLLBACK" if rollback else "COMMIT"]
        else:
            statements = [f"ROLLBACK TO {savepoint}"] if rollback else []
            statements.append(f"RELEASE {savepoint}")
        with self._connection() as conn:
            if not conn.in_transaction:
                if not rollback:
                    raise _ended_elsewhere("when it was to be committed")
                return
            try:
                for statement in statements:
                    conn.execute(statement)
            except sqlite3.Error:
                if savepoint is None and conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _execute_in_transaction(self, sql: str, args: Args) -> ResultSet:
        """:meth:`execute` for a transaction that must still be open: once something else
        ended it, the statement would run, and commit, on its own."""
        with self._connection() as conn:
            if not conn.in_transaction:
                raise _ended_elsewhere("before this statement")
            return self._statement(conn, sql, args)

    def _close_now(self) -> None:
        """Close the connection, with the lock held; threads waiting for an async
        transaction to end go on (to ClientClosedError): closing ended it."""
        if self.engine == "sqlite3":
            sqlite3.Connection.close(self._conn)  # its own close() would close this client
        else:
            self._conn.close()
        self._lock.end_all_reservations()

    def health_check(self, timeout: float = 5.0) -> dict[str, Any]:
        """Whether a trivial query succeeds, and how long it took; a client that another
        thread holds for more than ``timeout`` seconds is reported busy, not waited for."""
        started = time.perf_counter()
        try:
            with self._connection(timeout) as conn:
                self._statement(conn, "SELECT 1", ())
        except (ClientClosedError, TimeoutError, sqlite3.Error) as error:
            return {"healthy": False, "error": str(error), "path": self.path}
        latency_ms = (time.perf_counter() - started) * 1000
        return {"healthy": True, "latency_ms": latency_ms, "path": self.path}

    @property
    def rows_changed(self) -> int | None:
        """Rows inserted, updated or deleted through this client since it opened (SQLite's
        ``total_changes``); None once closed, and for libsql, which does not count them."""
        if self.engine != "sqlite3" or self.closed:
            return None
        return int(self._conn.total_changes)

    def get_connection_stats(self) -> dict[str, Any]:
        """What this client is connected to and how much it has done."""
        return {
            "path": self.path,
            "owner": self.owner,
            "engine": self.engine,
            "closed": self.closed,
            "queries_executed": self.queries_executed,
            "age_seconds": time.time() - self.opened_at,
            "in_transaction": not self.closed and self._conn.in_transaction,
        }


def delete_database_files(path: str | Path | None) -> None:
    """Remove a database file with its WAL, shared-memory and journal files."""
    if path is None:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _vacuum_into(conn: Any, destination: Path) -> None:
    """Copy the database of the libsql ``conn`` into ``destination`` as the sqlite3 engine
    does: VACUUM INTO writes a temporary file next to it, which SQLite's backup API then
    copies into the destination, taking its locks and its WAL into account (a file renamed
    over it would leave the old one's -wal beside it, replayed onto the copy)."""
    if conn.in_transaction:
        raise RuntimeError(
            "backup() inside a transaction needs the sqlite3 engine: libsql copies with "
            "VACUUM INTO, which SQLite refuses in a transaction; call backup() after the "
            "transaction commits (the copy then holds what it wrote)"
        )
    with closing(sqlite3.connect(destination)) as target:  # what sqlite3's backup raises
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
        )
        os.close(descriptor)  # VACUUM INTO writes into an empty file
        try:
            conn.execute("VACUUM INTO ?", (temporary,))
            with closing(sqlite3.connect(temporary)) as copy:
                copy.backup(target)
        finally:
            delete_database_files(temporary)


def _ended_elsewhere(when: str) -> RuntimeError:
    """The error for a transaction found ended ``when``, by something other than itself."""
    return RuntimeError(
        f"this transaction had already ended {when}: an error rolled it back (a RAISE(ROLLBACK) "
        "trigger, ON CONFLICT ROLLBACK), or a COMMIT or ROLLBACK ran on the connection itself "
        "(client.db, the sqlite3 connection); what it wrote may be lost or committed only in part"
    )


class Transaction:
    """An open transaction; holds the client for its thread until commit or rollback."""

    def __init__(self, client: DatabaseClient) -> None:
        """Begin at once, holding the client: other threads wait, this one joins."""
        self._client = client
        client._raise_if_closed()  # fail at once, not after whoever holds the lock lets go
        client._lock.acquire()
        try:
            self._savepoint = client._begin(f"tx_{id(self):x}")
        except BaseException:
            client._lock.release()
            raise
        self._thread = threading.get_ident()
        self._outer_thread = client._transaction_thread  # put back when this one ends
        client._transaction_thread = threading.get_ident()
        self._open = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def execute(self, sql: str, args: Args = ()) -> ResultSet:
        """Run one statement inside this transaction."""
        if not self._open:
            raise RuntimeError("this transaction has already been committed or rolled back")
        self._refuse_another_thread()
        return self._client._execute_in_transaction(sql, args)

    def commit(self) -> None:
        """Make the changes permanent (or fold a savepoint into its outer transaction)."""
        self._finish(rollback=False)

    def rollback(self) -> None:
        """Discard every change made in this transaction."""
        self._finish(rollback=True)

    def _refuse_another_thread(self) -> None:
        """The transaction's thread holds the client until it ends: another thread would
        wait for it, and for itself if the transaction's thread waits for that one."""
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "this transaction belongs to the thread that began it, which holds the client "
                "until it ends: use it there, or begin a transaction in this thread (it "
                "waits for that one to end)"
            )

    def _finish(self, *, rollback: bool) -> None:
        if not self._open:
            return
        self._refuse_another_thread()
        self._open = False
        try:
            self._client._end(self._savepoint, rollback=rollback)
        finally:
            self._client._transaction_thread = self._outer_thread
            self._client._lock.release()


class DatabaseService:
    """Owns the process's client: opens it on first use, reopens it after a close."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client_factory: Callable[[], DatabaseClient] | None = None,
    ) -> None:
        """Connect to ``url`` (default: ``DATABASE_URL`` at first use) or via ``client_factory``.

        A ``url`` given here is the database: ``TURSO_DATABASE_URL`` does not make it a
        replica, and errors name ``DatabaseService(url)``. A client from ``client_factory``
        belongs to whoever made it (a test's scope), which closes it: closing the service
        only forgets it."""
        self._url = url
        self._client_factory = client_factory
        self._client: DatabaseClient | None = None
        self._lock = threading.Lock()
        self.is_closing = False

    def _connect(self) -> DatabaseClient:
        if self._client_factory is not None:
            return self._client_factory()
        if self._url is None:
            source, target = "DATABASE_URL", database_target()
            if target.sync_url is None and target.path == os.environ.get("TURSO_DATABASE_URL"):
                source = "TURSO_DATABASE_URL"
        else:
            source = "DatabaseService(url)"
            target = url_target(self._url, variable=source)
        create_database_directory(target.path, source)
        logger.debug("connecting to %s with %s", target.path, target.engine)
        return DatabaseClient(
            target.path,
            owner="the application database service",
            engine=target.engine,
            sync_url=target.sync_url,
            auth_token=target.auth_token,
            source=source,
        )

    def initialize(self) -> DatabaseClient:
        """Open the client unless an open one exists; refuse while closing."""
        if self.is_closing:
            raise DatabaseShuttingDownError(
                "the database service is shutting down: ask again once its close() has "
                "returned (the service then connects afresh)"
            )
        with self._lock:
            if self._client is None or self._client.closed:
                self._client = self._connect()
            return self._client

    def ensure_initialized(self) -> DatabaseClient:
        """The open client, connecting first if needed (an alias of :meth:`initialize`)."""
        return self.initialize()

    def get_client(self) -> DatabaseClient:
        """The open client; call it where the client is used, never keep the result."""
        return self.initialize()

    def close(self, timeout: float = 5.0) -> bool:
        """Close the client; the service opens a new one if asked again afterwards.

        A client from ``client_factory`` is forgotten, not closed, and without waiting for
        a connect in progress: the factory's maker may be the caller, holding the lock
        that connect waits for.
        """
        if self._client_factory is not None:
            self._client = None
            return True
        self.is_closing = True
        try:
            with self._lock:
                client, self._client = self._client, None
            return client.close(timeout) if client is not None else True
        finally:
            self.is_closing = False

    def reset_for_testing(self) -> None:
        """Forget everything: the next call connects afresh (to the current ``DATABASE_URL``
        for a service that was given neither a URL nor a client factory)."""
        self.close(timeout=1.0)

    @property
    def active_connections(self) -> frozenset[DatabaseClient]:
        """The open clients this service owns (none, or its one client)."""
        client = self._client
        return frozenset({client} if client is not None and not client.closed else ())

    def health_check(self, timeout: float = 5.0) -> dict[str, Any]:
        """The client's health check; connects first if needed, as a readiness probe would."""
        return self.get_client().health_check(timeout)

    def get_connection_stats(self) -> dict[str, Any]:
        """Whether the service is connected and closing, with its client's stats; no connect."""
        client = self._client
        return {
            "initialized": client is not None,
            "is_closing": self.is_closing,
            "active_connections": len(self.active_connections),
            "client": client.get_connection_stats() if client is not None else None,
        }


_service: DatabaseService | None = None
_blocked_reason: str | None = None
_remote_blocked_reason: str | None = None
_singleton_lock = threading.Lock()
# Threads that outlived the test that started them: the database they would get is gone.
_refused_threads: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()


def __getattr__(name: str) -> Any:
    """``lib.database.AsyncDatabaseClient``: the async client lives in ``lib.async_database``,
    which imports this module."""
    if name in {"AsyncDatabaseClient", "AsyncTransaction"}:
        from . import async_database

        return getattr(async_database, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_database_service() -> DatabaseService:
    """The process-wide service; raises :class:`DatabaseAccessBlockedError` where blocked,
    and :class:`ClientClosedError` in a thread that outlived the test that started it."""
    global _service
    if _refused_threads and (refused := _refused_threads.get(threading.current_thread())):
        raise ClientClosedError(f"CLIENT_CLOSED: {refused} (asked from {caller_location()})")
    with _singleton_lock:
        if _service is None:
            if _blocked_reason is not None:
                raise DatabaseAccessBlockedError(
                    f"{_blocked_reason} (asked from {caller_location()})"
                )
            _service = DatabaseService()
        return _service


def get_database_client() -> DatabaseClient:
    """The client application code should use; call it where it is needed, never cache it."""
    return get_database_service().get_client()


def close_database_service(timeout: float = 5.0) -> bool:
    """Close the process-wide service's client, if there is a service (none is made), as a
    server stops; whether it closed within ``timeout``. A test's service only forgets its
    client, which stays the test's: its scope closes it."""
    with _singleton_lock:
        service = _service
    return service.close(timeout) if service is not None else True


def reset_database_instance() -> None:
    """Close and forget the process-wide service; the next call builds a new one. In an
    isolated test the service's client is the test's, which stays open: its scope closes it."""
    previous = swap_database_service(None)
    if previous is not None:
        previous.reset_for_testing()


def swap_database_service(service: DatabaseService | None) -> DatabaseService | None:
    """Install ``service`` as the process-wide one and return the one it replaces."""
    global _service
    with _singleton_lock:
        previous, _service = _service, service
    return previous


def block_database_access(reason: str | None) -> str | None:
    """While ``reason`` is set, asking for the process-wide service (unless installed) fails."""
    global _blocked_reason
    with _singleton_lock:
        previous, _blocked_reason = _blocked_reason, reason
    return previous


def refuse_thread(thread: threading.Thread, reason: str) -> None:
    """From now on, ``thread`` asking for the process-wide service gets ``reason`` (as a
    :class:`ClientClosedError`), for as long as it runs."""
    _refused_threads[thread] = reason


def forbid_remote_databases(reason: str | None) -> str | None:
    """While ``reason`` is set, opening a remote (libSQL/Turso) database fails with it."""
    global _remote_blocked_reason
    with _singleton_lock:
        previous, _remote_blocked_reason = _remote_blocked_reason, reason
    return previous
