"""The client's operations as coroutines, for asyncio code and tests.

Each call runs the sync client's in a worker thread, so the event loop never waits on
SQLite; tasks take turns on the client as the sync client's threads do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:  # for annotations only: lib.database imports this module
    from .database import Args, DatabaseClient, ResultSet, Statement

logger = logging.getLogger("database")


class AsyncDatabaseClient:
    """The client's operations as coroutines; each runs in a worker thread.

    As with the sync client's threads, the task that opened a transaction joins it: its
    ``execute``, ``batch`` and nested ``transaction()`` (a savepoint) run inside it. Every
    other task, tasks started inside the block included, waits until it ends.
    """

    def __init__(self, client: DatabaseClient) -> None:
        """Wrap ``client``; calls from different tasks take turns on it."""
        self.client = client
        self._lock = asyncio.Lock()
        self._transaction_task: asyncio.Task[Any] | None = None

    @property
    def closed(self) -> bool:
        """Whether the wrapped client is closed (every call then raises ClientClosedError)."""
        return self.client.closed

    def _in_own_transaction(self) -> bool:
        """Whether the calling task holds the client for a transaction it opened."""
        task = self._transaction_task
        return task is not None and task is asyncio.current_task()

    def _refuse_inside_a_sync_transaction(self) -> None:
        """A worker thread would wait for the event loop's own open ``db.transaction()``,
        which cannot end while the loop waits: a hang until pytest-timeout, made an error."""
        if self.client._transaction_thread == threading.get_ident():
            raise RuntimeError(
                "async_db cannot be used inside this thread's open db.transaction(): its "
                "worker thread would wait for that transaction forever. Inside it, use "
                "tx.execute() or db.execute(); or use `async with async_db.transaction()`"
            )

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        self._refuse_inside_a_sync_transaction()
        if self._in_own_transaction():  # waiting for the lock would wait for ourselves
            return await asyncio.to_thread(function, *args)
        async with self._lock:
            return await asyncio.to_thread(function, *args)

    async def execute(self, sql: str, args: Args = ()) -> ResultSet:
        """Run one statement (inside this task's open transaction, if any)."""
        result: ResultSet = await self._run(self.client.execute, sql, args)
        return result

    async def batch(self, statements: Iterable[Statement]) -> list[ResultSet]:
        """Run statements atomically, as :meth:`DatabaseClient.batch` does."""
        results: list[ResultSet] = await self._run(self.client.batch, list(statements))
        return results

    async def executescript(self, sql: str) -> None:
        """Run a script of several statements (refused inside an open transaction)."""
        await self._run(self.client.executescript, sql)

    async def health_check(self) -> dict[str, Any]:
        """Whether a trivial query succeeds, and how long it took."""
        result: dict[str, Any] = await self._run(self.client.health_check)
        return result

    async def get_connection_stats(self) -> dict[str, Any]:
        """The wrapped client's stats; no I/O, so no worker thread and no waiting for a
        transaction another task holds."""
        return self.client.get_connection_stats()

    async def close(self, timeout: float = 5.0) -> bool:
        """Close the wrapped client without blocking the event loop; see DatabaseClient.close."""
        closed: bool = await asyncio.to_thread(self.client.close, timeout)
        return closed

    def transaction(self) -> AsyncTransaction:
        """``async with adb.transaction() as tx``: begins on entry; commits, or rolls back on
        an exception, on exit. Or ``tx = await adb.transaction()``, as the sync client's:
        begins at once; end it with ``await tx.commit()`` or ``await tx.rollback()``."""
        return AsyncTransaction(self)


async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even if this task is cancelled again meanwhile (the caller
    re-raises the first cancellation afterwards); a failure is logged, not raised."""
    task = asyncio.ensure_future(work)
    while not task.done():
        with suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("undoing a cancelled transaction's start failed: %r", task.exception())


class AsyncTransaction:
    """``async with adb.transaction() as tx`` or ``tx = await adb.transaction()``: holds the
    client for this task until it ends (other tasks wait); inside this task's own
    transaction, a savepoint."""

    def __init__(self, owner: AsyncDatabaseClient) -> None:
        """Prepare; nothing happens until it is awaited or the ``async with`` is entered."""
        self._owner = owner
        self._open = False
        self._holds_lock = False
        self._savepoint: str | None = None

    def __await__(self) -> Generator[Any, None, Self]:
        """``tx = await adb.transaction()``: begin now, as ``async with`` would on entry."""
        return self.__aenter__().__await__()

    async def __aenter__(self) -> Self:
        if self._open:  # `async with await adb.transaction()`: already begun
            return self
        owner = self._owner
        owner._refuse_inside_a_sync_transaction()
        if not owner._in_own_transaction():
            await owner._lock.acquire()
            self._holds_lock = True
        began = asyncio.ensure_future(asyncio.to_thread(self._begin))
        try:
            self._savepoint = await asyncio.shield(began)
        except BaseException:  # cancelled, the thread may still begin: see _undo_begin
            await _to_the_end(self._undo_begin(began))
            raise
        if self._holds_lock:
            owner._transaction_task = asyncio.current_task()
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
        """Run one statement inside this transaction."""
        if not self._open:
            raise RuntimeError(
                "this transaction is not open: use it inside `async with adb.transaction() as tx`"
                " or after `tx = await adb.transaction()`, before its commit or rollback"
            )
        result: ResultSet = await asyncio.to_thread(self._owner.client.execute, sql, args)
        return result

    async def commit(self) -> None:
        """Make the changes permanent (or fold a savepoint into its outer transaction)."""
        savepoint = self._savepoint
        await self._finish(f"RELEASE {savepoint}" if savepoint else "COMMIT")

    async def rollback(self) -> None:
        """Discard every change made in this transaction."""
        savepoint = self._savepoint
        if savepoint:
            await self._finish(f"ROLLBACK TO {savepoint}", f"RELEASE {savepoint}")
        else:
            await self._finish("ROLLBACK")

    def _begin(self) -> str | None:
        """BEGIN, or a savepoint inside an open transaction; returns the savepoint's name."""
        return self._owner.client._begin(f"atx_{id(self):x}")

    async def _finish(self, *statements: str) -> None:
        if not self._open:
            return
        self._open = False
        try:
            await asyncio.to_thread(self._end, statements)
        finally:
            self._let_go()

    def _end(self, statements: Sequence[str]) -> None:
        self._owner.client._end(statements, roll_back_on_error=not self._savepoint)

    async def _undo_begin(self, began: asyncio.Future[str | None]) -> None:
        """The task entering the transaction was cancelled (a timeout, a failed TaskGroup
        sibling) or BEGIN failed: wait for the thread, roll back whatever it began, then
        let go of the client, all before the task goes on: nothing it or another task does
        next may land inside that transaction or savepoint."""
        try:
            self._savepoint = await began
        except Exception:  # BEGIN failed: nothing began
            self._let_go()
            return
        self._open = True
        await self.rollback()

    def _let_go(self) -> None:
        """Hand the client to the other tasks, if this (outermost) transaction held it."""
        if self._holds_lock:
            self._holds_lock = False
            self._owner._transaction_task = None
            self._owner._lock.release()
