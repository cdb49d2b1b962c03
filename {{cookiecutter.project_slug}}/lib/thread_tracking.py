"""Threads a test started and left running: they would use the next test's database.

A thread that outlives its test and asks for the application's client (through
``get_database_client()``, which follows ``DATABASE_URL``) writes into whichever test
runs next. Only threads running the project's own code count: the pools of the standard
library and of installed packages (``concurrent.futures``, anyio's workers) start their
threads lazily, during some test, and keep them between tests by design.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Collection
from types import CodeType
from typing import Any

# How long threads a test told to stop, but did not join, get to end with it.
GRACE_SECONDS = 0.1


def running_threads() -> frozenset[threading.Thread]:
    """The threads running now (the test's start: any other one it started later)."""
    return frozenset(threading.enumerate())


def code_of(thread: threading.Thread) -> CodeType | None:
    """The code ``thread`` runs: its class's ``run``, or the target it was given (kept by
    ``threading.Thread`` in ``_target`` while it runs)."""
    run = type(thread).run
    function: Any = getattr(thread, "_target", None) if run is threading.Thread.run else run
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)  # a bound method's function
    code = getattr(function, "__code__", None)
    return code if isinstance(code, CodeType) else None


def left_running(
    before: frozenset[threading.Thread],
    allowed: Collection[threading.Thread],
    is_project_file: Callable[[str], bool],
) -> list[threading.Thread]:
    """The threads running the project's code, started since ``before`` and not
    ``allowed`` (a wider fixture's), that are still running after a short grace."""
    started = [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and thread not in allowed
        and (code := code_of(thread)) is not None
        and is_project_file(code.co_filename)
    ]
    deadline = time.monotonic() + GRACE_SECONDS
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in started if thread.is_alive()]


def describe(thread: threading.Thread) -> str:
    """``thread 'name' running function (file:line)``, to find where it was made."""
    code = code_of(thread)
    if code is None:
        return f"thread {thread.name!r}"
    where = f"{code.co_filename}:{code.co_firstlineno}"
    return f"thread {thread.name!r} running {code.co_qualname} ({where})"
