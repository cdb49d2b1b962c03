"""Who may use a database client's connection at a given moment.

A client is shared by threads (a test and the server it calls, the workers of
``asyncio.to_thread``), and SQLite has one transaction per connection: a statement from
any thread lands in whatever transaction is open. :class:`ClientLock` keeps other callers
out while a transaction is open, whichever kind it is:

- a sync transaction holds the lock, as a re-entrant lock, from BEGIN to its end;
- an async transaction runs each statement in a worker thread, so between statements no
  thread holds the lock; instead it is *reserved* for the transaction's task. What works
  for that task gets in: the task itself, what it runs in threads through
  ``asyncio.to_thread`` or Starlette's ``run_in_threadpool`` and the tasks it starts (all
  of which copy its context, marked by :func:`act_for`), and calls made with
  :func:`run_for`. Every other thread waits until the reservation ends, or the task does
  (a task that ended with its transaction still open holds no one out).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
# How often a thread kept out looks again whether the reserving task has ended.
RECHECK_SECONDS = 0.1

_working_for = threading.local()  # .task: the task a worker thread is running a call for
_acting_for: ContextVar[asyncio.Task[Any] | None] = ContextVar("acting_for", default=None)


def act_for(task: asyncio.Task[Any] | None) -> None:
    """Mark the current context as working for ``task``'s transaction: called in that task,
    it covers the task and what inherits its context (threads of ``asyncio.to_thread``,
    tasks it starts)."""
    _acting_for.set(task)


def acting_for() -> asyncio.Task[Any] | None:
    """The task whose transaction the current context works for (see :func:`act_for`)."""
    return _acting_for.get()


def run_for(task: asyncio.Task[Any] | None, function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` in this (worker) thread on behalf of ``task``, so that a lock
    reserved for ``task`` lets it in: pass it to ``asyncio.to_thread``."""
    _working_for.task = task
    try:
        return function(*args)
    finally:
        _working_for.task = None


class ClientLock:
    """A client's re-entrant lock, which an async transaction can reserve for its task.

    A close that could not wait for the lock is handed over with :meth:`close_when_free`
    and runs as soon as the lock is let go.
    """

    def __init__(self) -> None:
        """Free, reserved for no one."""
        self._rlock = threading.RLock()
        self._turn = threading.Condition(self._rlock)
        self._task: asyncio.Task[Any] | None = None  # the reservation's task, if any
        self._loop_thread: int | None = None  # the thread of that task's event loop
        self._pending_close: Callable[[], None] | None = None

    @staticmethod
    def _admits(task: asyncio.Task[Any]) -> bool:
        """Whether this thread may go on while ``task`` holds the reservation: it works for
        ``task`` (see the module's docstring), or ``task`` has ended."""
        return (
            _acting_for.get() is task or getattr(_working_for, "task", None) is task or task.done()
        )

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock for this thread, waiting at most ``timeout`` seconds (None: as long
        as it takes) for other threads and for another task's async transaction.

        Raises RuntimeError on that task's own event loop, which would wait for itself."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._rlock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        if self._task is None or self._admits(self._task):
            return True
        try:
            return self._wait_for_the_reservation(deadline)
        except BaseException:
            self.release()
            raise

    def _wait_for_the_reservation(self, deadline: float | None) -> bool:
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "this database client is inside an async transaction of another task on this "
                "event loop, which cannot end while the loop waits here: await async_db calls "
                "(they wait their turn) instead of calling the client directly, or end the "
                "transaction first"
            )
        while self._task is not None and not self._admits(self._task):
            remaining = RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                self.release()
                return False
            self._turn.wait(min(remaining, RECHECK_SECONDS))
        return True

    def acquire_to_close(self, timeout: float) -> bool:
        """Take the lock whatever the reservation (closing ends any transaction); ``timeout``
        0 does not wait."""
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

    def reserve_for(self, task: asyncio.Task[Any] | None, loop_thread: int) -> None:
        """Keep every thread but ``task``'s out until :meth:`end_reservation`; call with the
        lock held, right after the transaction began."""
        with self._rlock:
            self._task, self._loop_thread = task, loop_thread

    def end_reservation(self) -> None:
        """Let the waiting threads in again."""
        with self._turn:
            self._task = self._loop_thread = None
            self._turn.notify_all()

    def __enter__(self) -> ClientLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
