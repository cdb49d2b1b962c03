"""Keeping a client or a database busy from another thread, as a server's request, a
worker or another process would."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from lib.database import ClientClosedError, DatabaseClient
from lib.scope_databases import ALIVE_FILE


@contextlib.contextmanager
def held_in_another_thread(client: DatabaseClient) -> Iterator[None]:
    """``client`` inside a transaction of another thread until the block ends (the
    transaction then ends too, or goes with the client if the block closed it)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.suppress(ClientClosedError), client.transaction():
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(timeout=10)
    try:
        yield
    finally:
        release.set()
        holder.join(timeout=30)


@contextlib.contextmanager
def new_database_held_for(seconds: float, path: Path) -> Iterator[None]:
    """A new database file at ``path`` that another connection holds in a write transaction,
    still in its rollback journal (as a new file is), for ``seconds`` from the block's start."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, other.execute, ["COMMIT"])
    release.start()
    try:
        yield
    finally:
        release.join()
        other.close()


@contextlib.contextmanager
def run_directory_held_by_another_process(path: Path) -> Iterator[None]:
    """``path`` held as a live run holds its directory (a lock on its alive file), by a
    process of its own, until the block ends."""
    path.mkdir(parents=True, exist_ok=True)
    hold = (
        "import fcntl, sys\n"
        f"handle = open({str(path / ALIVE_FILE)!r}, 'wb')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.communicate()
