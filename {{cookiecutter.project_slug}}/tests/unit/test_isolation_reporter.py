"""What the isolation report measures where the platform lacks what Linux offers."""

from __future__ import annotations

import os

import pytest

from tests import isolation_reporter


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_memory_is_read_again_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The statm file stays open between reads: each read must still see the RSS of now,
    also once code closed its descriptor (or another file took its number), and not the
    peak RSS that stands in without /proc (none here)."""
    monkeypatch.setattr(isolation_reporter, "resource", None)
    before = isolation_reporter.current_rss()
    grown = bytearray(64 * 2**20)  # zero-filled: its pages are touched, so resident
    assert isolation_reporter.current_rss() - before >= 48 * 2**20
    taken = isolation_reporter._statm_fds[os.getpid()]
    assert taken is not None
    with open(os.devnull, "rb") as other:
        os.dup2(other.fileno(), taken)  # another file takes the descriptor's number
    assert isolation_reporter.current_rss() - before >= 48 * 2**20
    os.close(taken)  # /dev/null's now
    closed = isolation_reporter._statm_fds[os.getpid()]
    assert closed is not None
    os.close(closed)  # code closes the descriptor
    assert isolation_reporter.current_rss() - before >= 48 * 2**20
    del grown


def test_memory_is_read_without_proc_and_not_at_all_on_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS has no /proc: the peak RSS stands in. Windows has neither it nor the
    ``resource`` module: the report loads all the same and measures no memory."""
    assert isolation_reporter.current_rss() > 0
    monkeypatch.setattr(isolation_reporter, "_statm_fds", {})
    monkeypatch.setattr(isolation_reporter, "STATM", "/no/proc/self/statm")
    assert isolation_reporter.current_rss() > 0
    monkeypatch.setattr(isolation_reporter, "resource", None)
    assert isolation_reporter.current_rss() == 0
