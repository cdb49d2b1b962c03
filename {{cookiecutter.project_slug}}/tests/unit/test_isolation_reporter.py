"""What the isolation report measures where the platform lacks what Linux offers."""

from __future__ import annotations

import os

import pytest

from tests import isolation_reporter


def _no_proc(name: str) -> int:
    raise OSError(f"no sysconf {name}")


def test_memory_is_read_without_proc_and_not_at_all_on_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS has no /proc: the peak RSS stands in. Windows has neither it nor the
    ``resource`` module: the report loads all the same and measures no memory."""
    assert isolation_reporter.current_rss() > 0
    monkeypatch.setattr(os, "sysconf", _no_proc)  # as if /proc/self/statm were missing
    assert isolation_reporter.current_rss() > 0
    monkeypatch.setattr(isolation_reporter, "resource", None)
    assert isolation_reporter.current_rss() == 0
