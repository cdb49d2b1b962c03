"""Recording and refusing sqlite3 connections, however the code at hand opens them."""

from __future__ import annotations

import gc
import sqlite3
import threading
import warnings
from pathlib import Path
from sqlite3 import connect  # bound before any recording starts, as in a module of yours

import pytest

from lib.connection_tracking import PRUNE_EVERY, record_connections, refuse_files
from lib.database import DatabaseAccessBlockedError


class _Connection(sqlite3.Connection):
    """A connection factory of the code under test."""


def test_every_way_of_opening_a_sqlite3_connection_is_recorded(tmp_path: Path) -> None:
    recording = record_connections()
    try:
        opened = [
            connect(tmp_path / "imported.db"),  # LEAK
            sqlite3.dbapi2.connect(tmp_path / "dbapi2.db"),
            sqlite3.Connection(tmp_path / "constructed.db"),  # LEAK
            sqlite3.connect(tmp_path / "factory.db", factory=_Connection),  # LEAK
        ]
        opened[1].close()
    finally:
        still_open = recording.stop()
    assert [tracked.connection for tracked in still_open] == [opened[0], *opened[2:]]
    assert [tracked.location for tracked in still_open] == [
        f"{__file__}:{line}" for line in _lines_ending_with("# LEAK")
    ]
    assert [tracked.database for tracked in still_open] == [
        str((tmp_path / name).resolve()) for name in ("imported.db", "constructed.db", "factory.db")
    ]
    for connection in opened:
        connection.close()


def test_the_files_written_besides_its_own_leave_out_the_nearer_scratch_files(
    tmp_path: Path,
) -> None:
    """A scratch directory (pytest's temporary one) or the project root, whichever is
    nearer, says whether a file written under it is a scratch file: a checkout under
    /tmp writes its real database there, a --basetemp inside the project or a project
    that is the temporary directory itself writes scratch files."""
    project, scratch = tmp_path / "checkout", tmp_path / "checkout" / "scratch"
    scratch.mkdir(parents=True)
    names = ["own.db", "app.db", "scratch/t.db", "../beside.db"]
    recording = record_connections()
    try:
        for name in names:
            sqlite3.connect(project / name).close()
    finally:
        recording.stop()
    written = {Path(path).relative_to(tmp_path).as_posix() for path in recording.written}
    assert written == {f"checkout/{name}".replace("checkout/../", "") for name in names}

    def others(scratch_dirs: list[Path], root: Path) -> set[str]:
        found = recording.other_files([project / "own.db"], map(str, scratch_dirs), str(root))
        return {Path(path).relative_to(tmp_path).as_posix() for path in found}

    assert others([tmp_path], project) == {"checkout/app.db", "checkout/scratch/t.db"}
    assert others([tmp_path, scratch], project) == {"checkout/app.db"}
    assert others([project], project) == {"beside.db"}
    assert others([], project) == {"beside.db", "checkout/app.db", "checkout/scratch/t.db"}


def test_connections_the_code_let_go_of_are_closed_and_no_leak(tmp_path: Path) -> None:
    """As the garbage collector would close them: a loop of ``connect().execute()`` must
    not run out of files because the recording holds every connection."""
    recording = record_connections()
    try:
        for _ in range(3 * PRUNE_EVERY):
            sqlite3.connect(tmp_path / "app.db").execute("SELECT 1").fetchone()
        assert len(recording.opened) <= PRUNE_EVERY
        kept = sqlite3.connect(tmp_path / "app.db")
    finally:
        still_open = recording.stop()
    assert [tracked.connection for tracked in still_open] == [kept]
    kept.close()


def test_a_connection_another_thread_let_go_of_is_no_leak(tmp_path: Path) -> None:
    """Only that thread may close it: it is left to the garbage collector, unreported."""
    recording = record_connections()
    try:
        worker = threading.Thread(
            target=lambda: sqlite3.connect(tmp_path / "app.db").execute("SELECT 1").fetchone()
        )
        worker.start()
        worker.join()
    finally:
        still_open = recording.stop()
    assert still_open == []
    with warnings.catch_warnings():  # the thread left it unclosed: Python 3.13 would say so
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_a_refused_file_is_refused_however_sqlite3_is_called(tmp_path: Path) -> None:
    own = tmp_path / "app.db"
    refuse_files([str(own)], "it is the developer's")
    try:
        for opener in (connect, sqlite3.dbapi2.connect, sqlite3.Connection):
            with pytest.raises(DatabaseAccessBlockedError, match="it is the developer's"):
                opener(own)
    finally:
        refuse_files([], "")
    assert not own.exists()
    connect(own).close()  # lifted


def _lines_ending_with(marker: str) -> list[int]:
    lines = Path(__file__).read_text().splitlines()
    return [number for number, line in enumerate(lines, 1) if line.endswith(marker)]
