"""Interrupts the test databases' statements that run past their test's timeout.

pytest-timeout's alarm cannot stop a statement: Python runs signal handlers only between
its own instructions, never inside SQLite, so a runaway query (a recursive CTE without
its ``WHERE``) hangs the run. A handler that SQLite calls while a statement runs could let
them run, but SQLite then swallows what they raise (the timeout's failure, Ctrl-C's
``KeyboardInterrupt``). So this alarm is a watch thread that marks the deadline passed,
and SQLite's progress handler is a C-level ``len()`` of that mark: no Python code runs
inside SQLite, and the statement fails with ``OperationalError: interrupted``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["ALARM", "CHECK_EVERY_STEPS", "StatementAlarm"]

# How many SQLite virtual machine steps a statement runs between two looks at the alarm:
# about every 10 ms of a runaway query.
CHECK_EVERY_STEPS = 1_000_000
# How often the watch thread looks at the clock: the alarm rings up to this much late.
_WATCH_SECONDS = 0.1


class StatementAlarm:
    """Rings once its deadline passes; connections given :attr:`rung` stop their statement
    then. One per process serves every test, since tests run one at a time there."""

    def __init__(self) -> None:
        """Not set: never rings."""
        self._deadline = math.inf
        self._rang: list[None] = []
        self._watch: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def rung(self) -> Callable[[], int]:
        """SQLite's progress handler: non-zero (interrupt) once the alarm rang."""
        return self._rang.__len__

    @property
    def has_rung(self) -> bool:
        """Whether the deadline passed since the alarm was last set."""
        return bool(self._rang)

    def set(self, seconds: float) -> None:
        """Ring ``seconds`` from now (and no more for an earlier setting)."""
        with self._lock:
            self._deadline = time.monotonic() + seconds
            self._rang.clear()
            if self._watch is None:
                self._watch = threading.Thread(
                    target=self._keep_watch, name="statement-alarm", daemon=True
                )
                self._watch.start()

    def cancel(self) -> None:
        """Never ring, until set again."""
        with self._lock:
            self._deadline = math.inf
            self._rang.clear()

    def _keep_watch(self) -> None:
        while True:
            time.sleep(_WATCH_SECONDS)
            with self._lock:
                if not self._rang and time.monotonic() >= self._deadline:
                    self._rang.append(None)


ALARM = StatementAlarm()  # the test databases' alarm, set around each test
