"""Keeping a client busy from another thread, as a server's request or a worker would."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

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
