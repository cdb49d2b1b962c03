"""Threads a test started and left running: they would use the next test's database.

A thread that outlives its test and asks for the application's client (through
``get_database_client()``, which follows ``DATABASE_URL``) writes into whichever test
runs next. Only threads the test's own thread started, running the project's own code,
count: the pools of the standard library and of installed packages (``concurrent.futures``,
anyio's workers) start their threads lazily, during some test, and keep them between
tests by design; and the threads a server started by a wider fixture starts (one per
connection) are the server's.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Collection
from types import CodeType, FunctionType, MethodType
from typing import Any

# How long threads a test told to stop, but did not join, get to end with it.
GRACE_SECONDS = 0.1
_POLL_SECONDS = 0.005  # how often the grace looks whether they ended

# Which thread started each thread, while watch_thread_starts() is on.
_starters: weakref.WeakKeyDictionary[threading.Thread, threading.Thread] = (
    weakref.WeakKeyDictionary()
)
# The wrappers this module installed, each with the Thread.start it wraps.
_wrapping: dict[Callable[[threading.Thread], None], Callable[[threading.Thread], None]] = {}


def watch_thread_starts() -> None:
    """From now on remember which thread starts each thread (Python 3.11 has no audit
    event for it): ``Thread.start`` is wrapped, whatever wraps it already (an APM's
    instrumentation), unless this module's wrapper is installed. Each wrapper calls the
    one it wraps: one of ours inside another's wrapper, itself inside one of ours, never
    loops."""
    wrapped = threading.Thread.start
    if wrapped in _wrapping:
        return

    def start(thread: threading.Thread) -> None:
        _starters[thread] = threading.current_thread()
        wrapped(thread)

    _wrapping[start] = wrapped
    threading.Thread.start = start  # type: ignore[method-assign,assignment]


def stop_watching_thread_starts() -> None:
    """Put back what ``Thread.start`` was, unless something wrapped it since (then the
    wrapper stays inside theirs: it only remembers)."""
    installed = threading.Thread.start
    if installed in _wrapping:
        threading.Thread.start = _wrapping.pop(installed)  # type: ignore[method-assign,assignment]


def running_threads() -> frozenset[threading.Thread]:
    """The threads running now (the test's start: any other one it started later)."""
    return frozenset(threading.enumerate())


def code_of(thread: threading.Thread) -> CodeType | None:
    """The code ``thread`` runs: a Timer's function, its class's ``run``, the target it was
    given (kept by ``threading.Thread`` in ``_target`` while it runs), or a callable
    object's ``__call__``. Found by types alone: no code of the thread's runs."""
    function: Any
    if isinstance(thread, threading.Timer):
        function = thread.function
    elif type(thread).run is threading.Thread.run:
        function = thread.__dict__.get("_target")
    else:
        function = type(thread).run
    while type(function) is functools.partial:
        function = function.func
    if type(function) is MethodType:
        function = function.__func__
    if type(function) is not FunctionType:  # a callable object: its class's __call__
        function = inspect.getattr_static(type(function), "__call__", None)
    return function.__code__ if type(function) is FunctionType else None


def left_running(
    before: frozenset[threading.Thread],
    started_by: threading.Thread,
    allowed: Collection[threading.Thread],
    is_project_file: Callable[[str], bool],
    grace: float = GRACE_SECONDS,
) -> list[threading.Thread]:
    """The threads running the project's code that ``started_by`` (the test's thread)
    started since ``before``, not ``allowed`` (a wider fixture's), and still running
    after ``grace`` seconds."""
    started = [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and _starters.get(thread) is started_by
        and thread not in allowed
        and (code := code_of(thread)) is not None
        and is_project_file(code.co_filename)
    ]
    # Polled, not joined: on Python 3.11 a join that a signal interrupts (a timeout)
    # marks a thread still running as stopped.
    deadline = time.monotonic() + grace
    while any(thread.is_alive() for thread in started) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    return [thread for thread in started if thread.is_alive()]


def describe(thread: threading.Thread) -> str:
    """``thread 'name' running function (file:line)``, to find where it was made."""
    code = code_of(thread)
    if code is None:
        return f"thread {thread.name!r}"
    where = f"{code.co_filename}:{code.co_firstlineno}"
    return f"thread {thread.name!r} running {code.co_qualname} ({where})"
