"""The database service: one SQLite client per process, or per test under isolation.

Application code calls :func:`get_database_client` at call time. Tests get a fresh
client per test from ``lib.isolation_manager``; a client kept beyond its test raises
:class:`ClientClosedError` naming who owned it and where it was closed, instead of
sqlite3's anonymous "Cannot operate on a closed database".
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias
from urllib.parse import unquote, urlsplit

from . import libsql_engine

if TYPE_CHECKING:  # imported when first used: it takes longer to import than a test runs
    import sqlite_utils

logger = logging.getLogger("database")

DEFAULT_DATABASE_URL = "file:./data/app.db"
BUSY_TIMEOUT_MS = 5_000
CONNECTION_PRAGMAS: Mapping[str, str] = {
    "journal_mode": "WAL",
    "foreign_keys": "ON",
    "busy_timeout": str(BUSY_TIMEOUT_MS),
}

Engine = Literal["sqlite3", "libsql"]
ENGINES: tuple[Engine, ...] = ("sqlite3", "libsql")
REMOTE_SCHEMES = frozenset({"libsql", "http", "https", "ws", "wss"})

Args: TypeAlias = Sequence[Any] | Mapping[str, Any]
Statement: TypeAlias = str | tuple[str, Args] | Mapping[str, Any]


class ClientClosedError(RuntimeError):
    """A client was used after it was closed; the message names its owner."""


class DatabaseShuttingDownError(RuntimeError):
    """The service is closing; no new work is accepted until it is done."""


class DatabaseConfigError(ValueError):
    """A database setting such as ``DATABASE_URL`` has a value we cannot use."""


class DatabaseAccessBlockedError(RuntimeError):
    """The process-wide database was asked for where no database is allowed."""


@dataclass(frozen=True, slots=True)
class ResultSet:
    """The outcome of one statement: rows support ``row["col"]``, ``row[0]``, ``dict(row)``."""

    rows: list[Any]
    columns: tuple[str, ...]
    rows_affected: int
    last_insert_rowid: int | None


def is_remote_url(value: str) -> bool:
    """Whether ``value`` names a remote libSQL/Turso database rather than a local file."""
    scheme, separator, _ = value.partition("://")
    return bool(separator) and scheme.lower() in REMOTE_SCHEMES


def local_database_file(path: str) -> Path | None:
    """The file that the SQLite ``path`` names, or None for ``:memory:``, an SQLite URI
    (``file:...?...``) and a remote URL: what may need its directory created first."""
    if path == ":memory:" or path.startswith("file:") or is_remote_url(path):
        return None
    return Path(path)


def parse_database_url(url: str, variable: str = "DATABASE_URL") -> str:
    """Return the SQLite path (or ``:memory:``) that ``url`` names; explain a bad value.

    A remote libSQL URL (``libsql://``, ``https://``, ...) is returned as it is, and so is
    a ``file:`` URL with a query (``?mode=ro``, ``?vfs=memdb``): SQLite opens it as a URI.
    """
    value = url.strip()
    if not value:
        raise DatabaseConfigError(
            f"{variable} is empty: set it to a SQLite path such as file:./data/app.db or :memory:"
        )
    if value == ":memory:":
        return value
    scheme_match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if value.startswith("file:"):
        parts = urlsplit(value)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path:
            raise DatabaseConfigError(
                f"{variable}={value!r} is not a local SQLite file URL: "
                "use file:./relative/path.db or file:///absolute/path.db"
            )
        return value if parts.query else path
    if scheme_match:
        scheme = scheme_match.group(1).lower()
        if scheme in REMOTE_SCHEMES:
            return value
        shown = f"{scheme}://{urlsplit(value).hostname or ''}"
        raise DatabaseConfigError(
            f"{variable}={shown}... uses the unsupported scheme {scheme!r}: use a SQLite path "
            "such as file:./data/app.db, a plain path, or :memory:"
        )
    return value


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where to connect and with which engine, as the environment says."""

    path: str
    engine: Engine = "sqlite3"
    sync_url: str | None = None
    auth_token: str | None = None

    @property
    def remote(self) -> bool:
        return is_remote_url(self.path) or self.sync_url is not None


def database_driver(environ: Mapping[str, str] = os.environ) -> Engine:
    """The engine ``DATABASE_DRIVER`` asks for local files (``sqlite3`` when unset)."""
    driver = environ.get("DATABASE_DRIVER") or "sqlite3"
    for engine in ENGINES:
        if driver == engine:
            return engine
    raise DatabaseConfigError(f"DATABASE_DRIVER={driver!r} is not one of {', '.join(ENGINES)}")


def database_target(environ: Mapping[str, str] = os.environ) -> DatabaseTarget:
    """Read ``DATABASE_URL``, ``DATABASE_DRIVER``, ``TURSO_DATABASE_URL``, ``TURSO_AUTH_TOKEN``.

    A ``libsql://`` URL or ``TURSO_DATABASE_URL`` selects the libsql engine; with both a
    local ``DATABASE_URL`` and ``TURSO_DATABASE_URL``, the local file is an embedded
    replica synced from Turso. ``DATABASE_DRIVER=libsql`` uses libsql for local files too.
    """
    driver = database_driver(environ)
    token = environ.get("TURSO_AUTH_TOKEN") or None
    turso = environ.get("TURSO_DATABASE_URL")
    url = environ.get("DATABASE_URL")
    if turso:
        if not is_remote_url(turso):
            raise DatabaseConfigError(
                "TURSO_DATABASE_URL must be a libsql:// or https:// URL of a Turso database"
            )
        local = parse_database_url(url) if url else None
        if local is None or is_remote_url(local):
            return DatabaseTarget(turso, "libsql", auth_token=token)
        return DatabaseTarget(local, "libsql", sync_url=turso, auth_token=token)
    path = parse_database_url(url or DEFAULT_DATABASE_URL)
    if is_remote_url(path):
        return DatabaseTarget(path, "libsql", auth_token=token)
    return DatabaseTarget(path, driver)


_LIB_DIR = os.path.dirname(os.path.abspath(__file__))


def _libsql_connect(path: str, sync_url: str | None, auth_token: str | None) -> Any:
    try:
        return libsql_engine.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, sync_url=sync_url, auth_token=auth_token
        )
    except ImportError as error:
        raise DatabaseConfigError(
            "the libsql engine (a libsql:// DATABASE_URL, TURSO_DATABASE_URL or "
            "DATABASE_DRIVER=libsql) needs the libsql package: pip install libsql"
        ) from error


def caller_location() -> str:
    """``file:line`` of the nearest caller outside ``lib/`` (cheap: no traceback objects)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.rpartition(os.sep)[0] == _LIB_DIR:
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class _GuardedConnection(sqlite3.Connection):
    """A sqlite3 connection that raises :class:`ClientClosedError` once its client closed it.

    ``DatabaseClient.db`` (sqlite-utils) talks to this connection directly, so the guard
    lives here rather than in the client.
    """

    closed_message: str | None = None

    def _guard(self) -> None:
        if self.closed_message is not None:
            raise ClientClosedError(self.closed_message)

    @property
    def in_transaction(self) -> bool:
        self._guard()
        return bool(sqlite3.Connection.in_transaction.__get__(self))

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self._guard()
        return super().cursor(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        self._guard()
        return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        self._guard()
        return super().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        self._guard()
        return super().executescript(*args, **kwargs)

    def commit(self) -> None:
        self._guard()
        super().commit()

    def rollback(self) -> None:
        self._guard()
        super().rollback()


def _normalize(statement: Statement) -> tuple[str, Args]:
    if isinstance(statement, str):
        return statement, ()
    if isinstance(statement, Mapping):
        return statement["sql"], statement.get("args", ())
    sql, args = statement
    return sql, args


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
    ) -> None:
        """Open ``path``: a file, ``:memory:``, or an SQLite URI (``file:...?vfs=memdb``).

        ``engine="libsql"`` connects with libsql (``path`` may then be a remote URL, or a
        local embedded replica of ``sync_url``).
        """
        self.path = path
        self.owner = owner
        self.engine = engine
        self.opened_at = time.time()
        self.queries_executed = 0
        self._lock = threading.RLock()
        self._close_pending = False
        self._closed_message: str | None = None
        remote = is_remote_url(path) or sync_url is not None
        if remote and _remote_blocked_reason is not None:
            raise DatabaseAccessBlockedError(f"{_remote_blocked_reason} ({caller_location()})")
        self._conn: Any
        if engine == "libsql":
            self._conn = _libsql_connect(path, sync_url, auth_token)
        else:
            self._conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
                factory=_GuardedConnection,
                uri=path.startswith("file:"),
            )
        if not remote:
            for name, value in pragmas.items():
                self._conn.execute(f"PRAGMA {name}={value}")
        self._db: sqlite_utils.Database | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<DatabaseClient {self.path} owner={self.owner!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed_message is not None

    def _raise_if_closed(self) -> None:
        if self._closed_message is not None:
            raise ClientClosedError(self._closed_message)

    @contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[Any]:
        """The connection, held for this thread; ``timeout``: seconds to wait for another
        thread to let go (TimeoutError after that; None waits as long as it takes)."""
        self._raise_if_closed()  # fail at once, not after whoever holds the lock lets go
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"{self!r} was still busy in another thread after {timeout}s")
        try:
            self._raise_if_closed()
            if self.engine == "sqlite3":
                yield self._conn
                return
            try:
                yield self._conn
            except ValueError as error:  # libsql reports every database error this way
                raise libsql_engine.translate_error(error) from error
        finally:
            self._lock.release()

    def execute(self, sql: str, args: Args = ()) -> ResultSet:
        """Run one statement and return its rows, columns and counts."""
        with self._connection() as conn:
            if self.engine == "libsql":
                cursor = conn.execute(sql, libsql_engine.positional(args))
                rows, columns = libsql_engine.rows(cursor)
            else:
                cursor = conn.cursor()
                cursor.row_factory = sqlite3.Row
                cursor.execute(sql, args)
                rows = cursor.fetchall()
                columns = tuple(column[0] for column in cursor.description or ())
            self.queries_executed += 1
            return ResultSet(
                rows=rows,
                columns=columns,
                rows_affected=max(cursor.rowcount, 0) if not columns else 0,
                last_insert_rowid=cursor.lastrowid,
            )

    def batch(self, statements: Iterable[Statement]) -> list[ResultSet]:
        """Run statements atomically: all of them or, if one fails, none."""
        normalized = [_normalize(statement) for statement in statements]
        with self.transaction() as tx:
            return [tx.execute(sql, args) for sql, args in normalized]

    def transaction(self) -> Transaction:
        """Begin a transaction (a savepoint when one is already open)."""
        return Transaction(self)

    def executescript(self, sql: str) -> None:
        """Run a script of several statements (commits any open transaction first)."""
        with self._connection() as conn:
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

    def close(self, timeout: float = 5.0, *, reason: str | None = None) -> bool:
        """Close the connection; idempotent. Returns False if it could not within ``timeout``
        (and, called again, while that close is still waiting).

        New calls fail with :class:`ClientClosedError` at once; a statement still running in
        another thread is interrupted, and the connection closes when that thread lets go.
        """
        if self.closed:
            return not self._close_pending
        how = f"closed at {caller_location()}" + (f" {reason}" if reason else "")
        self._closed_message = (
            f"CLIENT_CLOSED: this database client belonged to {self.owner} and was {how}. "
            "A client lives only as long as its owner: ask for it where it is used "
            "(the `db` fixture or get_db_client() in a test, get_database_client() at call "
            "time in application code) instead of keeping it in a variable."
        )
        if self.engine == "sqlite3":
            self._conn.closed_message = self._closed_message  # guards client.db users too
        if not self._lock.acquire(blocking=False):
            if self.engine == "sqlite3":
                self._conn.interrupt()
            if not self._lock.acquire(timeout=timeout):
                logger.warning("%r still busy after %.1fs; it closes when released", self, timeout)
                self._close_pending = True
                return False
        try:
            self._conn.close()
        finally:
            self._lock.release()
        logger.debug("client closed: %s (%s)", self.path, how)
        return True

    def backup(self, destination: str | Path, timeout: float | None = None) -> None:
        """Copy this database, in-memory ones included, into the file ``destination``;
        ``timeout``: give up (TimeoutError) if another thread holds the client that long."""
        with self._connection(timeout) as conn:
            if self.engine == "libsql":
                conn.execute("VACUUM INTO ?", (str(destination),))
                return
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

    def _release(self) -> None:
        """Let go of the lock held across a transaction; finish a close that had to wait."""
        self._lock.release()
        if self._close_pending and self._lock.acquire(blocking=False):
            try:
                self._conn.close()
                self._close_pending = False
            finally:
                self._lock.release()

    def health_check(self) -> dict[str, Any]:
        """Whether a trivial query succeeds, and how long it took."""
        started = time.perf_counter()
        try:
            self.execute("SELECT 1")
        except (ClientClosedError, sqlite3.Error) as error:
            return {"healthy": False, "error": str(error), "path": self.path}
        latency_ms = (time.perf_counter() - started) * 1000
        return {"healthy": True, "latency_ms": latency_ms, "path": self.path}

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


class Transaction:
    """An open transaction; holds the client for its thread until commit or rollback."""

    def __init__(self, client: DatabaseClient) -> None:
        self._client = client
        client._lock.acquire()
        try:
            with client._connection() as conn:
                self._savepoint = f"tx_{id(self):x}" if conn.in_transaction else None
                conn.execute(f"SAVEPOINT {self._savepoint}" if self._savepoint else "BEGIN")
        except BaseException:
            client._release()
            raise
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
        if not self._open:
            raise RuntimeError("this transaction has already been committed or rolled back")
        return self._client.execute(sql, args)

    def commit(self) -> None:
        """Make the changes permanent (or fold a savepoint into its outer transaction)."""
        self._finish(f"RELEASE {self._savepoint}" if self._savepoint else "COMMIT")

    def rollback(self) -> None:
        """Discard every change made in this transaction."""
        if self._savepoint:
            self._finish(f"ROLLBACK TO {self._savepoint}", f"RELEASE {self._savepoint}")
        else:
            self._finish("ROLLBACK")

    def _finish(self, *statements: str) -> None:
        if not self._open:
            return
        self._open = False
        try:
            with self._client._connection() as conn:
                _end_transaction(conn, statements, roll_back_on_error=not self._savepoint)
        finally:
            self._client._release()


def _end_transaction(conn: Any, statements: Sequence[str], *, roll_back_on_error: bool) -> None:
    """Commit, release or roll back; a failed commit does not leave the transaction open."""
    if not conn.in_transaction:
        return
    try:
        for statement in statements:
            conn.execute(statement)
    except sqlite3.Error:
        if roll_back_on_error and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class AsyncDatabaseClient:
    """The client's operations as coroutines; each runs in a worker thread."""

    def __init__(self, client: DatabaseClient) -> None:
        self.client = client
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self.client.closed

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(function, *args)

    async def execute(self, sql: str, args: Args = ()) -> ResultSet:
        result: ResultSet = await self._run(self.client.execute, sql, args)
        return result

    async def batch(self, statements: Iterable[Statement]) -> list[ResultSet]:
        results: list[ResultSet] = await self._run(self.client.batch, list(statements))
        return results

    async def executescript(self, sql: str) -> None:
        await self._run(self.client.executescript, sql)

    async def health_check(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(self.client.health_check)
        return result

    async def close(self, timeout: float = 5.0) -> bool:
        closed: bool = await asyncio.to_thread(self.client.close, timeout)
        return closed

    def transaction(self) -> AsyncTransaction:
        return AsyncTransaction(self)


class AsyncTransaction:
    """``async with adb.transaction() as tx``: other coroutines on the client wait meanwhile."""

    def __init__(self, owner: AsyncDatabaseClient) -> None:
        self._owner = owner
        self._open = False

    async def __aenter__(self) -> Self:
        await self._owner._lock.acquire()
        try:
            await asyncio.to_thread(self._owner.client.execute, "BEGIN")
        except BaseException:
            self._owner._lock.release()
            raise
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()

    async def execute(self, sql: str, args: Args = ()) -> ResultSet:
        if not self._open:
            raise RuntimeError("this transaction is not open")
        result: ResultSet = await asyncio.to_thread(self._owner.client.execute, sql, args)
        return result

    async def commit(self) -> None:
        await self._finish("COMMIT")

    async def rollback(self) -> None:
        await self._finish("ROLLBACK")

    async def _finish(self, statement: str) -> None:
        if not self._open:
            return
        self._open = False
        try:
            await asyncio.to_thread(self._end, statement)
        finally:
            self._owner._lock.release()

    def _end(self, statement: str) -> None:
        with self._owner.client._connection() as conn:
            _end_transaction(conn, (statement,), roll_back_on_error=True)


class DatabaseService:
    """Owns the process's client: opens it on first use, reopens it after a close."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client_factory: Callable[[], DatabaseClient] | None = None,
    ) -> None:
        """Connect to ``url`` (default: ``DATABASE_URL`` at first use) or via ``client_factory``."""
        self._url = url
        self._client_factory = client_factory
        self._client: DatabaseClient | None = None
        self._lock = threading.Lock()
        self.is_closing = False

    def _connect(self) -> DatabaseClient:
        if self._client_factory is not None:
            return self._client_factory()
        environ: Mapping[str, str] = os.environ
        if self._url is not None:
            environ = {**os.environ, "DATABASE_URL": self._url}
        target = database_target(environ)
        file = local_database_file(target.path)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        logger.debug("connecting to %s with %s", target.path, target.engine)
        return DatabaseClient(
            target.path,
            owner="the application database service",
            engine=target.engine,
            sync_url=target.sync_url,
            auth_token=target.auth_token,
        )

    def initialize(self) -> DatabaseClient:
        """Open the client unless an open one exists; refuse while closing."""
        if self.is_closing:
            raise DatabaseShuttingDownError("the database service is shutting down")
        with self._lock:
            if self._client is None or self._client.closed:
                self._client = self._connect()
            return self._client

    def ensure_initialized(self) -> DatabaseClient:
        return self.initialize()

    def get_client(self) -> DatabaseClient:
        return self.initialize()

    def close(self, timeout: float = 5.0) -> bool:
        """Close the client; the service opens a new one if asked again afterwards."""
        self.is_closing = True
        try:
            with self._lock:
                client, self._client = self._client, None
            return client.close(timeout) if client is not None else True
        finally:
            self.is_closing = False

    def reset_for_testing(self) -> None:
        """Forget everything: the next call connects afresh to the current ``DATABASE_URL``."""
        self.close(timeout=1.0)

    @property
    def active_connections(self) -> frozenset[DatabaseClient]:
        client = self._client
        return frozenset({client} if client is not None and not client.closed else ())

    def health_check(self) -> dict[str, Any]:
        return self.get_client().health_check()

    def get_connection_stats(self) -> dict[str, Any]:
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


def get_database_service() -> DatabaseService:
    """The process-wide service; raises :class:`DatabaseAccessBlockedError` where blocked."""
    global _service
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


def reset_database_instance() -> None:
    """Close and forget the process-wide service; the next call builds a new one."""
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


def forbid_remote_databases(reason: str | None) -> str | None:
    """While ``reason`` is set, opening a remote (libSQL/Turso) database fails with it."""
    global _remote_blocked_reason
    with _singleton_lock:
        previous, _remote_blocked_reason = _remote_blocked_reason, reason
    return previous
