"""Who may use a database client's connection at a given moment.

A client is shared by threads (a test and the server it calls, the workers of
``asyncio.to_thread``), and SQLite has one transaction per connection: a statement from
any thread lands in whatever transaction is open. :class:`ClientLock` keeps other callers
out while a transaction is open, whichever kind it is:

- a sync transaction holds the lock, as a re-entrant lock, from BEGIN to its end;
- an async transaction runs each statement in a worker thread, so between statements no
  thread holds the lock; instead its task makes a :class:`Reservation`. What works for
  it gets in: the task itself and whatever inherits its context (threads of
  ``asyncio.to_thread`` or Starlette's ``run_in_threadpool``, tasks it starts), marked by
  :func:`act_for`, and calls made with :func:`run_for`. Every other thread waits until
  the reservation ends, or its task does (a task that ended with its transaction still
  open holds no one out).

An async savepoint reserves the client on top of its transaction's reservation, so that
its sibling tasks' statements wait for it to end instead of landing inside it. A context
whose reservation has ended works for the nearest enclosing one still open.

Async callers wait for a reservation on their event loop (:meth:`ClientLock.admits`), not
in a worker thread: a worker started with :func:`run_for` that finds itself kept out
raises :class:`KeptOut` at once, before any statement, and the caller tries again. Worker
threads are never all taken by waiters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
# How often something kept out looks again whether it may go on (the reserving task may
# have ended, which signals nothing): a thread waits on a condition between looks, an
# async call sleeps on its event loop, where it takes no worker thread.
THREAD_RECHECK_SECONDS = 0.1
LOOP_RECHECK_SECONDS = 0.005


class KeptOut(RuntimeError):
    """A worker of :func:`run_for` found the client reserved for another transaction."""


class RolledBackError(RuntimeError):
    """Work for a transaction that a rollback around it has undone: it may not go on."""


@dataclass(eq=False)
class Reservation:
    """An async transaction's (or savepoint's) hold on a client, made by ``task``, nested
    in ``parent`` (a savepoint's transaction)."""

    task: asyncio.Task[Any] | None
    parent: Reservation | None = None
    loop_thread: int = field(default_factory=threading.get_ident)
    rolled_back: bool = False  # by itself, a rollback around it or a close

    def ended(self) -> bool:
        """Whether its task is over: then nobody can end the transaction for it."""
        return self.task is None or self.task.done()


_NOT_IN_RUN_FOR = object()
_working_for = threading.local()  # .reservation: what a run_for worker runs its call for
_acting_for: ContextVar[Reservation | None] = ContextVar("acting_for", default=None)


def act_for(reservation: Reservation | None) -> None:
    """Mark the current context as working for ``reservation``: called in its task, it
    covers the task and what inherits its context (threads of ``asyncio.to_thread``, tasks
    it starts)."""
    _acting_for.set(reservation)


def acting_for() -> Reservation | None:
    """The reservation the current context works for (see :func:`act_for`)."""
    return _acting_for.get()


def run_for(reservation: Reservation | None, function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` in this worker thread on behalf of ``reservation``,
    whatever the context; raises :class:`KeptOut` instead of waiting for another one."""
    _working_for.reservation = reservation
    try:
        return function(*args)
    finally:
        _working_for.reservation = _NOT_IN_RUN_FOR


def _caller_reservation() -> Reservation | None:
    """What the calling thread works for: its :func:`run_for` call's, or its context's."""
    reservation: object = getattr(_working_for, "reservation", _NOT_IN_RUN_FOR)
    if isinstance(reservation, Reservation | None):
        return reservation
    return _acting_for.get()


def _in_run_for() -> bool:
    return getattr(_working_for, "reservation", _NOT_IN_RUN_FOR) is not _NOT_IN_RUN_FOR


class ClientLock:
    """A client's re-entrant lock, which async transactions can reserve for their tasks.

    The open reservations are a tuple, replaced (never changed) under the lock, so that
    the event loop can read them without taking it. A close that could not wait for the
    lock is handed over with :meth:`close_when_free` and runs as soon as it is let go.
    """

    def __init__(self) -> None:
        """Free, reserved for no one."""
        self._rlock = threading.RLock()
        self._turn = threading.Condition(self._rlock)
        # A transaction's reservation, then those of its savepoints, innermost last.
        self._reservations: tuple[Reservation, ...] = ()
        self._pending_close: Callable[[], None] | None = None

    def innermost_open(self, reservation: Reservation | None) -> Reservation | None:
        """``reservation``, or its nearest enclosing one, that is still open (None: none).

        Raises :class:`RolledBackError` if one that ended on the way was rolled back:
        work started inside it (a task, a thread) must not go on writing outside it."""
        reservations = self._reservations
        while reservation is not None and reservation not in reservations:
            if reservation.rolled_back:
                raise RolledBackError(
                    "the transaction this work was started in has been rolled back: what "
                    "it writes now would be committed on its own, outside that transaction"
                )
            reservation = reservation.parent
        return reservation

    def admits(self, reservation: Reservation | None) -> bool:
        """Whether work for ``reservation`` may use the client now: nothing is reserved,
        the innermost reservation is (in effect) its own, or its task has ended. Raises
        :class:`RolledBackError` for work of a transaction that was rolled back."""
        reservations = self._reservations
        mine = self.innermost_open(reservation)  # raises if rolled back
        if not reservations:
            return True
        return reservations[-1].ended() or mine is reservations[-1]

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock for this thread, waiting at most ``timeout`` seconds (None: as long
        as it takes) for other threads and for async transactions it does not work for.

        Raises RuntimeError on a reserving task's event loop, which would wait for itself."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout is None:
            self._rlock.acquire()
        elif not self._rlock.acquire(timeout=timeout):
            return False
        # The per-statement path: nothing reserved, the caller in no transaction's work.
        if (
            not self._reservations
            and getattr(_working_for, "reservation", _NOT_IN_RUN_FOR) is _NOT_IN_RUN_FOR
            and _acting_for.get() is None
        ):
            return True
        try:
            return self._wait_for_the_reservations(deadline)
        except BaseException:
            self.release()
            raise

    def _wait_for_the_reservations(self, deadline: float | None) -> bool:
        while not self.admits(_caller_reservation()):
            reservation = self._reservations[-1]  # stable: changed only under this lock
            if _in_run_for():
                raise KeptOut("the client is reserved for another transaction")
            if threading.get_ident() == reservation.loop_thread:
                raise RuntimeError(
                    "this database client is inside an async transaction of another task on "
                    "this event loop, which cannot end while the loop waits here: await "
                    "async_db calls (they wait their turn) instead of calling the client "
                    "directly, or end the transaction first"
                )
            remaining = THREAD_RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                self.release()
                return False
            self._turn.wait(min(remaining, THREAD_RECHECK_SECONDS))
        return True

    def acquire_to_close(self, timeout: float) -> bool:
        """Take the lock whatever the reservations (closing ends any transaction);
        ``timeout`` 0 does not wait."""
        if timeout <= 0:
            return self._rlock.acquire(blocking=False)
        return self._rlock.acquire(timeout=timeout)

    def release(self) -> None:
        """Let go once; run a close handed over by :meth:`close_when_free`, if any."""
        self._rlock.release()
        if self._pending_close is not None and self._rlock.acquire(blocking=False):
            try:
                close, self._pending_close = self._pending_close, None
                if close is not None:
                    close()
            finally:
                self._rlock.release()

    def close_when_free(self, close: Callable[[], None]) -> None:
        """Run ``close`` (with the lock held) as soon as no thread holds the lock."""
        self._pending_close = close
        if self._rlock.acquire(blocking=False):  # let go meanwhile: nobody else will run it
            self.release()

    @property
    def close_pending(self) -> bool:
        """Whether a close handed over by :meth:`close_when_free` has yet to run."""
        return self._pending_close is not None

    def reserve(self, reservation: Reservation) -> None:
        """Keep out what does not work for ``reservation`` until it ends; call with the
        lock held, right after its BEGIN or SAVEPOINT."""
        with self._rlock:
            self._reservations = (*self._reservations, reservation)

    def end_reservation(self, reservation: Reservation, *, committed: bool) -> None:
        """End ``reservation`` after its COMMIT or RELEASE (``committed``) or its rollback;
        the threads waiting for it go on."""
        with self._turn:
            reservation.rolled_back = not committed
            self._reservations = tuple(r for r in self._reservations if r is not reservation)
            self._turn.notify_all()

    def end_all_reservations(self) -> None:
        """End every reservation, as rolled back: the connection was closed."""
        with self._turn:
            for reservation in self._reservations:
                reservation.rolled_back = True
            self._reservations = ()
            self._turn.notify_all()

    def reserved_for(self, reservation: Reservation | None) -> bool:
        """Whether ``reservation``, or one enclosing it, is among the open ones."""
        return self.innermost_open(reservation) is not None

    def inside(self, reservation: Reservation) -> tuple[Reservation, ...]:
        """The open reservations nested inside ``reservation`` (its savepoints')."""
        reservations = self._reservations
        if reservation not in reservations:
            return ()
        return reservations[reservations.index(reservation) + 1 :]

    def take_for_rollback(self, reservation: Reservation) -> bool:
        """Take the lock to roll ``reservation`` back, ending (as rolled back) the ones
        nested inside it, whose savepoints that ROLLBACK undoes: they do not keep it out.
        False, without the lock, when ``reservation`` is no longer open."""
        self._rlock.acquire()
        if reservation not in self._reservations:
            self.release()
            return False
        with self._turn:
            nested = self.inside(reservation)
            for each in nested:
                each.rolled_back = True
            self._reservations = self._reservations[: len(self._reservations) - len(nested)]
            self._turn.notify_all()
        return True

    def abandoned(self) -> bool:
        """Whether the outermost reservation's task ended with its transaction still open."""
        reservations = self._reservations
        return bool(reservations) and reservations[0].ended()

    def __enter__(self) -> ClientLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
