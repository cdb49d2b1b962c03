"""The database client's operations as coroutines, for asyncio code and tests.

Each call runs the sync :class:`~lib.database.DatabaseClient`'s operation in a worker
thread; ``lib.client_lock`` decides when a task's turn has come, so that tasks, threads
and the transactions they open take turns on one connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from types import TracebackType
from typing import Any, Self, TypeVar

from .client_lock import (
    LOOP_RECHECK_SECONDS,
    KeptOut,
    Reservation,
    act_for,
    acting_for,
    run_for,
)
from .database import Args, DatabaseClient, ResultSet, Statement, caller_location

__all__ = ["AsyncDatabaseClient", "AsyncTransaction"]

logger = logging.getLogger("database")

T = TypeVar("T")
# While tasks wait their turn, how often one watcher per event loop looks whether the
# transaction holding the turn can still hand it on (see AsyncDatabaseClient._watch).
TURN_RECHECK_SECONDS = 0.05


class _Turns:
    """One event loop's turns on the client: its tasks queue on ``lock``. ``holder`` is the
    transaction holding it, once begun (a call holds it only while its statement runs);
    ``waiting`` counts the tasks queued, which ``watcher`` looks after. Savepoints queue
    in ``lines``, one per transaction they begin inside; ``ended`` wakes them when a
    transaction of this loop ends."""

    def __init__(self) -> None:
        """No one holds or waits for it."""
        self.lock = asyncio.Lock()
        self.holder: AsyncTransaction | None = None
        self.waiting = 0
        self.watcher: asyncio.Task[None] | None = None
        self.lines: weakref.WeakValueDictionary[Reservation | None, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.ended = asyncio.Event()


class AsyncDatabaseClient:
    """The client's operations as coroutines; each runs in a worker thread.

    As with the sync client's threads, the task that opened a transaction joins it, with
    whatever inherits its context (the tasks it starts, what it runs through
    ``asyncio.to_thread``): ``execute``, ``batch`` and a nested ``transaction()`` (a
    savepoint) run inside it, and so do direct calls to the sync client. Every other task
    and every other thread waits until it ends.
    """

    def __init__(self, client: DatabaseClient) -> None:
        """Wrap ``client``; calls from different tasks take turns on it."""
        self.client = client
        # Tasks take turns on one asyncio lock per event loop (a server thread runs its own).
        self._turns: dict[asyncio.AbstractEventLoop, _Turns] = {}
        self._turns_guard = threading.Lock()  # loops in several threads change the dict

    @property
    def closed(self) -> bool:
        """Whether the wrapped client is closed (every call then raises ClientClosedError)."""
        return self.client.closed

    def _loop_turns(self) -> _Turns:
        """This event loop's turns; those of closed loops are dropped (a lock that had a
        waiter refers to its loop, so a weak mapping would keep them all). Under a thread
        lock: event loops in other threads prune and add at the same time."""
        running = asyncio.get_running_loop()
        with self._turns_guard:
            for loop in [loop for loop in self._turns if loop.is_closed()]:
                del self._turns[loop]
            turns = self._turns.get(running)
            if turns is None:
                turns = self._turns[running] = _Turns()
            return turns

    async def _take_turn(self) -> _Turns:
        """This loop's turns, their lock acquired in turn. While it waits, a watcher makes
        sure that a transaction that can no longer end normally does not keep it for good."""
        turns = self._loop_turns()
        turns.waiting += 1
        try:
            may_wait = turns.lock.locked() or turns.waiting > 1
            if may_wait and (turns.watcher is None or turns.watcher.done()):
                turns.watcher = asyncio.get_running_loop().create_task(self._watch(turns))
            await turns.lock.acquire()
        finally:
            turns.waiting -= 1
            if not turns.waiting and turns.watcher is not None:
                turns.watcher.cancel()  # nobody waits: no task of its own left pending
                turns.watcher = None
        return turns

    async def _watch(self, turns: _Turns) -> None:
        """While tasks of this loop wait their turn, take the turn back from a transaction
        that will not hand it on in time: the client was closed (which ended the
        transaction; its task may stay inside its block for long), or its task ended
        leaving it open. The waiting tasks then go on, to ClientClosedError or into that
        transaction, as a call arriving now would, instead of waiting forever."""
        while turns.waiting:
            await asyncio.sleep(TURN_RECHECK_SECONDS)
            holder = turns.holder
            if holder is not None and (self.client.closed or holder._reservation.ended()):
                holder._let_go()

    def _line(self, outer: Reservation | None) -> asyncio.Lock:
        """The line in which this loop's savepoints inside ``outer`` wait to begin, one at
        a time: each polling for its turn on its own, a ``gather`` of n of them woke the
        loop n times per turn, n squared in all."""
        lines = self._loop_turns().lines
        line = lines.get(outer)
        if line is None:
            line = lines[outer] = asyncio.Lock()
        return line

    def _joins_open_transaction(self) -> bool:
        """Whether the caller works for an open async transaction of the client (it is its
        task or inherits its context), or that transaction's task ended, leaving it open:
        then waiting for it would be waiting forever."""
        lock = self.client._lock
        return lock.reserved_for(acting_for()) or lock.abandoned()

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
        if self.client.closed:  # no waiting for anyone: the call fails (or reports) at once
            return await asyncio.to_thread(function, *args)
        if self._joins_open_transaction():  # waiting for this loop's lock would wait for itself
            return await _call(self.client, acting_for(), function, *args)
        turns = await self._take_turn()
        try:
            return await _call(self.client, acting_for(), function, *args)
        finally:
            turns.lock.release()

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

    async def health_check(self, timeout: float = 5.0) -> dict[str, Any]:
        """Whether a trivial query succeeds, and how long it took; a client that another
        thread or task holds for more than ``timeout`` seconds is reported busy."""
        try:
            async with asyncio.timeout(timeout):
                result: dict[str, Any] = await self._run(self.client.health_check, timeout)
        except TimeoutError:
            busy = f"{self.client!r} was still busy in another task or thread after {timeout}s"
            return {"healthy": False, "error": busy, "path": self.client.path}
        return result

    async def get_connection_stats(self) -> dict[str, Any]:
        """The wrapped client's stats; no I/O, so no worker thread and no waiting for a
        transaction another task holds."""
        return self.client.get_connection_stats()

    async def close(self, timeout: float = 5.0) -> bool:
        """Close the wrapped client without blocking the event loop; see DatabaseClient.close."""
        where = caller_location()  # here, not in the worker thread, where no caller is seen
        closed: bool = await asyncio.to_thread(self.client.close, timeout, where=where)
        return closed

    def transaction(self) -> AsyncTransaction:
        """``async with adb.transaction() as tx``: begins on entry; commits, or rolls back on
        an exception, on exit. Or ``tx = await adb.transaction()``, as the sync client's:
        begins at once; end it with ``await tx.commit()`` or ``await tx.rollback()``."""
        return AsyncTransaction(self)


# The async client's worker threads, apart from asyncio's default ones, which application
# code may fill with threads waiting for a transaction that needs a worker to end.
_WORKERS = ThreadPoolExecutor(thread_name_prefix="async_db")


async def _wait_for_turn(
    client: DatabaseClient, reservation: Reservation | None, ended: asyncio.Event | None = None
) -> None:
    """Return once work for ``reservation`` may use ``client`` (or it is closed, which the
    call then reports), waiting on the event loop: cancellable, and taking no worker
    thread while it waits. It looks again every few milliseconds, and as soon as ``ended``
    is set (by a transaction of this loop ending)."""
    while True:
        if ended is not None:
            ended.clear()
        if client.closed or client._lock.admits(reservation):
            return
        if ended is None:
            await asyncio.sleep(LOOP_RECHECK_SECONDS)
            continue
        with suppress(TimeoutError):
            async with asyncio.timeout(LOOP_RECHECK_SECONDS):
                await ended.wait()


async def _call(
    client: DatabaseClient,
    reservation: Reservation | None,
    function: Callable[..., T],
    *args: Any,
    wait_turn: bool = True,
) -> T:
    """``function(*args)`` in a worker thread for ``reservation``, in a copy of this context,
    once it is its turn (``wait_turn=False``: at once); a worker kept out after all
    (another transaction began meanwhile) has run nothing, and the call waits and tries
    again."""
    loop = asyncio.get_running_loop()
    while True:
        if wait_turn:
            await _wait_for_turn(client, reservation)
        context = contextvars.copy_context()
        with suppress(KeptOut):
            return await loop.run_in_executor(
                _WORKERS, context.run, run_for, reservation, function, *args
            )


async def _to_the_end(work: Awaitable[Any]) -> None:
    """Run ``work`` to its end even if this task is cancelled again meanwhile (the caller
    re-raises the first cancellation afterwards); a failure is logged, not raised."""
    task = asyncio.ensure_future(work)
    while not task.done():
        with suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("finishing a cancelled transaction failed: %r", task.exception())


class AsyncTransaction:
    """``async with adb.transaction() as tx`` or ``tx = await adb.transaction()``: holds the
    client for this task until it ends (other tasks and threads wait); inside an async
    transaction this task works for, a savepoint, which its sibling tasks wait for."""

    def __init__(self, owner: AsyncDatabaseClient) -> None:
        """Prepare; nothing happens until it is awaited or the ``async with`` is entered."""
        self._owner = owner
        self._open = False
        self._held_turns: _Turns | None = None  # this loop's turn, while it is outermost
        self._savepoint: str | None = None
        self._reservation = Reservation(None)  # a stand-in, never reserved, until entry
        self._outer: Reservation | None = None  # what the context worked for before

    def __await__(self) -> Generator[Any, None, Self]:
        """``tx = await adb.transaction()``: begin now, as ``async with`` would on entry."""
        return self.__aenter__().__await__()

    async def __aenter__(self) -> Self:
        if self._open:  # `async with await adb.transaction()`: already begun
            return self
        owner, client = self._owner, self._owner.client
        client._raise_if_closed()
        owner._refuse_inside_a_sync_transaction()
        if owner._joins_open_transaction():
            async with owner._line(acting_for()):
                await self._begin_in_turn(owner._loop_turns().ended)
        else:
            self._held_turns = await owner._take_turn()
            await self._begin_in_turn()
        return self

    async def _begin_in_turn(self, ended: asyncio.Event | None = None) -> None:
        """Begin once it is this transaction's turn (a savepoint's: once those begun before
        it inside the same transaction have ended, which ``ended`` signals)."""
        client = self._owner.client
        try:
            client._raise_if_closed()  # closed while it waited its turn
            self._outer = client._lock.innermost_open(acting_for())
            self._reservation = Reservation(asyncio.current_task(), self._outer)
            await _wait_for_turn(client, self._outer, ended)  # cancellable: nothing began
        except BaseException:
            self._let_go()
            raise
        # Begun for the outer transaction (if any), whose savepoint it becomes.
        began = asyncio.ensure_future(_call(client, self._outer, self._begin))
        try:
            self._savepoint = await asyncio.shield(began)
        except BaseException:  # cancelled, the thread may still begin: see _undo_begin
            await _to_the_end(self._undo_begin(began))
            raise
        act_for(self._reservation)  # this task and what inherits its context join it
        self._open = True
        if self._held_turns is not None:  # from now on its watcher may take the turn back
            self._held_turns.holder = self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Commit, or roll back on an exception. Leaving the block always ends the
        transaction: a commit refused before it began (a transaction begun inside it in this
        task is still open) rolls back, then raises."""
        if exc_type is not None:
            await self.rollback()
            return
        try:
            await self.commit()
        except BaseException:
            if self._open and not self._owner.client.closed:
                await self.rollback()
            raise

    async def execute(self, sql: str, args: Args = ()) -> ResultSet:
        """Run one statement inside this transaction."""
        if not self._open:
            raise RuntimeError(
                "this transaction is not open: use it inside `async with adb.transaction() as tx`"
                " or after `tx = await adb.transaction()`, before its commit or rollback"
            )
        self._owner._refuse_inside_a_sync_transaction()
        client = self._owner.client
        return await _call(client, self._reservation, client._execute_in_transaction, sql, args)

    async def commit(self) -> None:
        """Make the changes permanent (or fold a savepoint into its outer transaction)."""
        await self._finish(rollback=False)

    async def rollback(self) -> None:
        """Discard every change made in this transaction."""
        await self._finish(rollback=True)

    def _begin(self) -> str | None:
        """BEGIN, or a savepoint inside an open transaction; returns the savepoint's name.
        Then the client is reserved for this transaction until its end."""
        client = self._owner.client
        with client._connection():  # held from BEGIN to the reservation: no one slips in
            savepoint = client._begin(f"atx_{id(self):x}")
            client._lock.reserve(self._reservation)
        return savepoint

    async def _finish(self, *, rollback: bool) -> None:
        """Commit or roll back in a worker thread. A commit waits (cancellable) for the
        savepoints of tasks started inside to end, and rolls back if cancelled meanwhile;
        a rollback undoes them at once. Once started, the end runs to its end even if the
        task is cancelled (else a COMMIT or ROLLBACK not yet run would leave it open)."""
        if not self._open:
            return
        client = self._owner.client
        if client.closed:  # closing ended it; let go, or this loop's waiters wait forever
            self._stop_acting_for_it()
            self._let_go()
            client._raise_if_closed()
        cancelled_while_waiting = False
        if not rollback and not self._reservation.rolled_back:
            self._refuse_open_savepoints_of_this_task()
            try:
                await _wait_for_turn(client, self._reservation)
            except asyncio.CancelledError:
                cancelled_while_waiting = True
        self._open = False
        committing = not (rollback or cancelled_while_waiting)
        if not committing:
            end = _call(client, self._reservation, self._roll_back_in_worker, wait_turn=False)
        else:
            end = _call(client, self._reservation, self._commit_in_worker)
        ending = asyncio.ensure_future(end)
        try:
            await asyncio.shield(ending)
        except asyncio.CancelledError as cancelled:
            await _to_the_end(ending)
            cancelled.add_note(self._how_it_ended(ending, committing=committing))
            raise
        finally:
            self._stop_acting_for_it()
            self._let_go()
            self._owner._loop_turns().ended.set()
        if cancelled_while_waiting:
            rolled_back = asyncio.CancelledError()
            rolled_back.add_note(self._how_it_ended(ending, committing=False))
            raise rolled_back

    def _how_it_ended(self, ending: asyncio.Future[None], *, committing: bool) -> str:
        """A note for a cancellation (a timeout) that came while the transaction ended: it
        took effect only afterwards, so the caller cannot tell from the exception alone
        whether the changes were kept (a caller that retries would write them twice)."""
        what = "savepoint" if self._savepoint else "transaction"
        failure = ending.exception() if not ending.cancelled() else asyncio.CancelledError()
        if failure is not None:
            return f"the {what} failed to end ({failure!r}) before this cancellation"
        if committing:
            kept = "released into its outer transaction" if self._savepoint else "COMMITTED"
            return (
                f"the {what} was {kept} before this cancellation took effect: its changes "
                "are kept; do not simply retry it"
            )
        return f"the {what} was rolled back before this cancellation took effect"

    def _stop_acting_for_it(self) -> None:
        """This context works for the outer transaction again, if it worked for this one
        or for one begun inside it (a savepoint of this task left open, which ending this
        one undoes)."""
        reservation = acting_for()
        while reservation is not None and reservation is not self._reservation:
            reservation = reservation.parent
        if reservation is not None:
            act_for(self._outer)

    def _refuse_open_savepoints_of_this_task(self) -> None:
        """Committing would wait for them, in the very task that has to end them."""
        task, lock = asyncio.current_task(), self._owner.client._lock
        if any(nested.task is task for nested in lock.inside(self._reservation)):
            raise RuntimeError(
                "a transaction begun inside this one, in this same task, is still open: "
                "commit or roll it back first"
            )

    def _commit_in_worker(self) -> None:
        """COMMIT (or RELEASE a savepoint) once it is this transaction's turn; raises
        RolledBackError if a rollback around it has undone it."""
        client, reservation = self._owner.client, self._reservation
        client._raise_if_closed()
        client._lock.innermost_open(reservation)  # raises if a rollback around it undid it
        try:
            client._end(self._savepoint, rollback=False)
        except KeptOut:  # nothing ran: _call waits and tries again
            raise
        except BaseException:
            client._lock.end_reservation(reservation, committed=False)
            raise
        client._lock.end_reservation(reservation, committed=True)

    def _roll_back_in_worker(self) -> None:
        """ROLLBACK at once, ending the reservations of the savepoints nested inside, which
        it undoes; nothing to do when a rollback around it or a close already did."""
        client, reservation = self._owner.client, self._reservation
        client._raise_if_closed()
        if not client._lock.take_for_rollback(reservation):
            return
        try:
            client._end(self._savepoint, rollback=True)
        finally:
            client._lock.end_reservation(reservation, committed=False)
            client._lock.release()

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
        """Hand the client to this loop's other tasks, if this transaction held it (once:
        the loop's watcher may have taken it back already)."""
        turns, self._held_turns = self._held_turns, None
        if turns is not None:
            if turns.holder is self:
                turns.holder = None
            turns.lock.release()
