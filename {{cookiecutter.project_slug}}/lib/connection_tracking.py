"""Record every SQLite connection opened during a test, with the ``file:line`` that opened it.

While a :class:`Recording` is active, ``sqlite3.connect`` is wrapped so that each new
connection is remembered with its caller. When the test ends, the ones still open are
connection leaks, reported where they were opened. The wrapper is removed again when
the last recording stops.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .database import caller_location

_original_connect = sqlite3.connect
_recordings: list[Recording] = []
_local = threading.local()
_lock = threading.Lock()


@dataclass(eq=False, frozen=True)
class TrackedConnection:
    """A connection and where it was opened."""

    connection: sqlite3.Connection
    location: str

    @property
    def is_open(self) -> bool:
        try:
            self.connection.total_changes  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            return False
        return True


def _tracking_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    connection: sqlite3.Connection = _original_connect(*args, **kwargs)
    if _recordings and not getattr(_local, "suspended", False):
        tracked = TrackedConnection(connection, caller_location())
        for recording in list(_recordings):
            recording.opened.append(tracked)
    return connection


@contextmanager
def untracked() -> Iterator[None]:
    """Connections opened by this thread meanwhile are the isolation core's own, not a test's."""
    previous = getattr(_local, "suspended", False)
    _local.suspended = True
    try:
        yield
    finally:
        _local.suspended = previous


class Recording:
    """The connections opened since :func:`record_connections` returned it."""

    def __init__(self) -> None:
        self.opened: list[TrackedConnection] = []

    def still_open(self) -> list[TrackedConnection]:
        return [tracked for tracked in self.opened if tracked.is_open]

    def stop(self) -> list[TrackedConnection]:
        """Stop recording; return the connections that are still open (the leaks)."""
        with _lock:
            if self in _recordings:
                _recordings.remove(self)
            if not _recordings:
                sqlite3.connect = _original_connect
        return self.still_open()


def record_connections() -> Recording:
    """Start recording the connections opened from now on."""
    recording = Recording()
    with _lock:
        _recordings.append(recording)
        sqlite3.connect = _tracking_connect  # type: ignore[assignment]
    return recording
