"""Knowing which thread started which, alongside other wrappers of ``Thread.start``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lib import thread_tracking


@pytest.fixture
def instrumented() -> Iterator[list[str]]:
    """``Thread.start`` wrapped as an APM's instrumentation does; put back afterwards."""
    original, started = threading.Thread.start, []

    def instrumented_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        original(thread)

    threading.Thread.start = instrumented_start  # type: ignore[method-assign,assignment]
    yield started
    threading.Thread.start = original  # type: ignore[method-assign]


def _start_and_join(name: str) -> threading.Thread:
    thread = threading.Thread(target=lambda: None, name=name)
    thread.start()
    thread.join()
    return thread


def test_a_wrapper_installed_before_keeps_working_and_is_put_back(
    instrumented: list[str],
) -> None:
    before = threading.Thread.start
    thread_tracking.watch_thread_starts()
    thread_tracking.watch_thread_starts()  # at every test: wrapped once
    try:
        thread = _start_and_join("watched")
        assert thread_tracking._starters[thread] is threading.current_thread()
    finally:
        thread_tracking.stop_watching_thread_starts()
    assert threading.Thread.start is before
    _start_and_join("after")
    assert instrumented == ["watched", "after"]


@pytest.fixture
def wrapped_after_watching() -> Iterator[list[str]]:
    """Watching, then ``Thread.start`` wrapped around this module's wrapper, as an APM
    initialised during a test does; the names of the threads it starts. Put back after."""
    original, started = threading.Thread.start, []
    thread_tracking.watch_thread_starts()
    watching = threading.Thread.start

    def later_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        watching(thread)

    threading.Thread.start = later_start  # type: ignore[method-assign,assignment]
    yield started
    threading.Thread.start = original  # type: ignore[method-assign]
    thread_tracking._wrapping.clear()


def test_a_wrapper_installed_since_is_left_in_place(wrapped_after_watching: list[str]) -> None:
    """Its instrumentation stays for the rest of the process, with this wrapper inside."""
    later_start = threading.Thread.start
    thread_tracking.stop_watching_thread_starts()
    assert threading.Thread.start is later_start
    thread = _start_and_join("kept")
    assert wrapped_after_watching == ["kept"]
    assert thread_tracking._starters[thread] is threading.current_thread()


def test_watching_again_over_a_wrapper_around_its_own_does_not_loop(
    wrapped_after_watching: list[str],
) -> None:
    """Watching again (the next session in the process) over an APM that wrapped this
    module's wrapper: each wrapper calls the one it wraps, and a thread still starts once."""
    instrumented_start = threading.Thread.start
    thread_tracking.watch_thread_starts()
    thread = _start_and_join("twice wrapped")
    assert wrapped_after_watching == ["twice wrapped"]
    assert thread_tracking._starters[thread] is threading.current_thread()
    thread_tracking.stop_watching_thread_starts()
    assert threading.Thread.start is instrumented_start
