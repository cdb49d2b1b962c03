"""The sqlite3 connection and cursors a :class:`~lib.database.DatabaseClient` connects with.

``client.db`` (sqlite-utils) and cursors kept in generators (``db["t"].rows``) use the
connection without going through the client, so the guard lives here: once the client
closed, every use raises :class:`ClientClosedError` naming who owned it, never sqlite3's
anonymous "Cannot operate on a closed database"; and every statement takes the client's
lock, as the client's own calls do.
"""

from __future__ import annotations

import functools
import sqlite3
import weakref
from collections.abc import Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from .client_lock import ClientLock

if TYPE_CHECKING:
    from .database import DatabaseClient

__all__ = ["ClientClosedError", "client_of", "connect"]

T = TypeVar("T")


class ClientClosedError(RuntimeError):
    """A client was used after it was closed; the message names its owner."""


class _GuardedCursor(sqlite3.Cursor):
    """A cursor that raises :class:`ClientClosedError` once its client closed: sqlite-utils
    keeps cursors in generators (``db["t"].rows``) that are read after the client is gone."""

    connection: _GuardedConnection

    def _read(self, read: Callable[..., Any], *args: Any) -> Any:
        """``read(self, *args)``, or ClientClosedError once the client closed, also when a
        close (maybe another thread's) makes the read itself fail."""
        message = self.connection.closed_message
        if message is None:
            try:
                return read(self, *args)
            except sqlite3.Error as error:
                message = self.connection.closed_message
                if message is None:
                    raise
                raise ClientClosedError(message) from error
        raise ClientClosedError(message)

    def execute(self, *args: Any, **kwargs: Any) -> Self:
        with self.connection.lock:
            self.connection._guard()  # closed while this thread waited for the lock
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Self:
        with self.connection.lock:
            self.connection._guard()  # closed while this thread waited for the lock
            return super().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        with self.connection.lock:
            self.connection._guard()  # closed while this thread waited for the lock
            return super().executescript(*args, **kwargs)

    def fetchone(self) -> Any:
        """The next row, or None."""
        return self._read(sqlite3.Cursor.fetchone)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` rows (the cursor's ``arraysize`` by default)."""
        rows: list[Any] = self._read(
            sqlite3.Cursor.fetchmany, self.arraysize if size is None else size
        )
        return rows

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        rows: list[Any] = self._read(sqlite3.Cursor.fetchall)
        return rows

    def __next__(self) -> Any:
        return self._read(sqlite3.Cursor.__next__)


@functools.cache
def _guarded_cursor_class(factory: type[sqlite3.Cursor]) -> type[sqlite3.Cursor]:
    """A cursor class of the caller's, with the guard under its own methods."""
    if issubclass(factory, _GuardedCursor):
        return factory
    return type(factory.__name__, (factory, _GuardedCursor), {})


class _GuardedConnection(sqlite3.Connection):
    """A sqlite3 connection that raises :class:`ClientClosedError` once its client closed it.

    ``DatabaseClient.db`` (sqlite-utils) talks to this connection directly, so the guard
    lives here rather than in the client. Its cursors are :class:`_GuardedCursor`; the
    ``execute*`` shortcuts go through :meth:`cursor`, which Python 3.11's C versions skip.
    Their statements take the client's lock, so that one sqlite-utils handle used from
    several threads waits for another thread's or task's transaction as the client's
    calls do.
    """

    closed_message: str | None = None
    lock: ClientLock = ClientLock()  # the client's own, set when it connects
    client_ref: weakref.ref[DatabaseClient] | None = None  # likewise

    def _guard(self) -> None:
        if self.closed_message is not None:
            raise ClientClosedError(self.closed_message)

    @property
    def in_transaction(self) -> bool:
        self._guard()
        return bool(sqlite3.Connection.in_transaction.__get__(self))

    def cursor(self, factory: Any = None) -> Any:
        self._guard()
        if factory is None or factory is sqlite3.Cursor:
            return super().cursor(_GuardedCursor)
        if isinstance(factory, type) and issubclass(factory, sqlite3.Cursor):
            return super().cursor(_guarded_cursor_class(factory))
        return super().cursor(factory)  # a function returning a cursor: its own business

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self.cursor()
        return cursor.execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self.cursor()
        return cursor.executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self.cursor()
        return cursor.executescript(*args, **kwargs)

    def __enter__(self) -> Self:  # `with conn:`, as sqlite-utils writes
        self._guard()
        return super().__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        """Commit or roll back as sqlite3 does, holding the client like a statement; a
        block that failed because the client closed keeps its own ClientClosedError."""
        if exc is not None and self.closed_message is not None:
            return False
        self._locked(sqlite3.Connection.__exit__, exc_type, exc, tb)
        return False

    def _locked(self, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``action(self, *args, **kwargs)`` holding the client, as a statement does:
        another thread's transaction ends first, not committed or rolled back here."""
        with self.lock:
            self._guard()  # closed while this thread waited for the lock
            return action(self, *args, **kwargs)

    def create_function(self, *args: Any, **kwargs: Any) -> None:  # db.register_function
        self._guard()
        super().create_function(*args, **kwargs)

    def blobopen(self, *args: Any, **kwargs: Any) -> sqlite3.Blob:
        self._guard()
        return super().blobopen(*args, **kwargs)

    def commit(self) -> None:
        self._locked(sqlite3.Connection.commit)

    def rollback(self) -> None:
        self._locked(sqlite3.Connection.rollback)

    def backup(self, *args: Any, **kwargs: Any) -> None:
        self._locked(sqlite3.Connection.backup, *args, **kwargs)

    def serialize(self, *args: Any, **kwargs: Any) -> bytes:
        return self._locked(sqlite3.Connection.serialize, *args, **kwargs)

    def deserialize(self, *args: Any, **kwargs: Any) -> None:
        self._locked(sqlite3.Connection.deserialize, *args, **kwargs)

    def iterdump(self, *args: Any, **kwargs: Any) -> Generator[str, Any, Any]:
        self._guard()  # its queries go through cursor(), guarded as they run
        return super().iterdump(*args, **kwargs)

    @property
    def total_changes(self) -> int:
        self._guard()
        return int(sqlite3.Connection.total_changes.__get__(self))

    def close(self) -> None:
        """Refused while its client is open (sqlite-utils' ``db.close()`` and ``with
        client.db:`` end here): the connection is the client's, which its owner closes."""
        client = None if self.client_ref is None else self.client_ref()
        if client is not None and self.closed_message is None:
            raise RuntimeError(
                f"client.db shares the connection of {client!r}, which only the client's "
                "owner closes (client.close()): take `view = client.db` rather than "
                "`with client.db as view:`, which closes it on leaving the block"
            )
        super().close()


def client_of(connection: Any) -> DatabaseClient | None:
    """The open client whose connection ``connection`` is, if any."""
    reference = getattr(connection, "client_ref", None)
    client: DatabaseClient | None = reference() if reference is not None else None
    return client if client is not None and not client.closed else None


def connect(path: str, lock: ClientLock, *, timeout: float) -> _GuardedConnection:
    """A guarded connection to ``path`` (an SQLite URI if it starts with ``file:``) whose
    statements take ``lock``: autocommit, usable from any thread, ``timeout`` seconds of
    busy wait."""
    conn = sqlite3.connect(
        path,
        timeout=timeout,
        isolation_level=None,
        check_same_thread=False,
        factory=_GuardedConnection,
        uri=path.startswith("file:"),
    )
    conn.lock = lock
    return conn
