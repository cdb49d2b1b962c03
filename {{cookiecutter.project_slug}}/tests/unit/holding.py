"""Keeping a client or a database busy from another thread, as a server's request, a
worker or another process would."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from lib.database import ClientClosedError, DatabaseClient


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
