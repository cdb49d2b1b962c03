"""The async client's turns, closes and transaction ends, on real SQLite files (no mocks).

The broader async behaviour is exercised in ``test_database.py``; these are the cases where
a task used to wait forever, or a write landed where it did not belong.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lib.database import AsyncDatabaseClient, AsyncTransaction, ClientClosedError, DatabaseClient

T = TypeVar("T")
SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[DatabaseClient]:
    """A client on a fresh file with one table; always closed afterwards."""
    c = DatabaseClient(str(tmp_path / "async.db"), owner="async-unit-test")
    c.executescript(SCHEMA)
    yield c
    c.close()


def names_on_disk(client: DatabaseClient) -> list[str]:
    """What another connection (another process) sees committed."""
    with closing(sqlite3.connect(client.path)) as other:
        return sorted(row[0] for row in other.execute("SELECT name FROM items"))


def in_own_context(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task with a context of its own, as another request's would be."""
    return asyncio.create_task(coro, context=contextvars.Context())


async def test_closing_the_client_lets_the_tasks_waiting_their_turn_fail_at_once(
    client: DatabaseClient,
) -> None:
    """They get ClientClosedError while the transaction's task is still inside its block;
    and leaving that block hands this loop's lock on instead of keeping it for good."""
    adb = AsyncDatabaseClient(client)
    opened, leave = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('holder')")
            opened.set()
            await leave.wait()

    async def begins_a_transaction() -> None:
        async with adb.transaction() as tx:
            await tx.execute("INSERT INTO items (name) VALUES ('waiter')")

    async with asyncio.timeout(10):
        holding = in_own_context(holder())
        await opened.wait()
        waiters = [in_own_context(adb.execute("SELECT 1")), in_own_context(begins_a_transaction())]
        await asyncio.sleep(0.1)
        assert await adb.close()
    async with asyncio.timeout(2):  # not after the holder lets go: it has not
        results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(result) for result in results] == [ClientClosedError, ClientClosedError]
    assert not holding.done()
    leave.set()
    async with asyncio.timeout(5):
        with pytest.raises(ClientClosedError, match="async-unit-test"):
            await holding
    assert not adb._loop_turns().lock.locked()


async def test_tasks_waiting_for_a_transaction_whose_task_ended_go_on(
    client: DatabaseClient,
) -> None:
    """Its task ended with it open, holding this loop's lock: those already waiting for the
    lock join it, as later calls do, instead of waiting for ever."""
    adb = AsyncDatabaseClient(client)
    opened, end = asyncio.Event(), asyncio.Event()

    async def leaves_it_open() -> None:
        tx = await adb.transaction()
        await tx.execute("INSERT INTO items (name) VALUES ('left open')")
        opened.set()
        await end.wait()

    async with asyncio.timeout(10):
        holder = in_own_context(leaves_it_open())
        await opened.wait()
        waiter = in_own_context(adb.execute("SELECT COUNT(*) FROM items"))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        end.set()
        await holder
    async with asyncio.timeout(2):
        result = await waiter
    assert result.rows[0][0] == 1  # it joined the transaction left open


async def test_leaving_the_block_with_a_savepoint_of_this_task_open_rolls_back(
    client: DatabaseClient,
) -> None:
    """The commit is refused (committing would wait for that savepoint in the task that has
    to end it); the block still ends the transaction, rolled back, before it raises: later
    writes of other tasks are not swallowed by it, other connections are not locked out,
    and the task's own calls work outside it again."""
    adb = AsyncDatabaseClient(client)
    statements_after: list[int] = []

    async def forget_a_savepoint() -> None:
        async with adb.transaction() as outer:
            await outer.execute("INSERT INTO items (name) VALUES ('outer')")
            inner = await adb.transaction()  # forgotten: never committed
            await inner.execute("INSERT INTO items (name) VALUES ('inner')")

    async def handler() -> None:
        with pytest.raises(RuntimeError, match="still open"):
            await forget_a_savepoint()
        result = await adb.execute("INSERT INTO items (name) VALUES ('same task, after')")
        statements_after.append(result.rows_affected)

    async with asyncio.timeout(10):
        await in_own_context(handler())
        assert not client.get_connection_stats()["in_transaction"]
        await in_own_context(adb.execute("INSERT INTO items (name) VALUES ('later request')"))
    assert statements_after == [1]
    assert names_on_disk(client) == ["later request", "same task, after"]


async def test_a_timeout_that_comes_while_committing_says_the_transaction_committed(
    client: DatabaseClient,
) -> None:
    """The COMMIT runs to its end however the task is cancelled meanwhile, and the timeout
    is raised after it: the exception carries a note (PEP 678) that the changes were kept,
    so that a caller retrying on timeouts can tell."""
    adb = AsyncDatabaseClient(client)
    held, release = threading.Event(), threading.Event()

    def hold_the_client() -> None:  # keeps the commit's worker waiting for the connection
        assert client._lock.acquire_to_close(5)
        held.set()
        release.wait(5)
        client._lock.release()

    holder = threading.Thread(target=hold_the_client, daemon=True)

    async def write() -> None:
        async with asyncio.timeout(0.2):
            async with adb.transaction() as tx:
                await tx.execute("INSERT INTO items (name) VALUES ('kept')")
                holder.start()
                await asyncio.to_thread(held.wait, 5)

    async with asyncio.timeout(10):
        writing = asyncio.create_task(write())
        await asyncio.sleep(0.4)  # the timeout fired while the commit waited
        release.set()
        with pytest.raises(TimeoutError) as raised:
            await writing
    await asyncio.to_thread(holder.join, 5)
    assert names_on_disk(client) == ["kept"]
    cancelled = raised.value.__cause__
    assert isinstance(cancelled, asyncio.CancelledError)
    assert any("COMMITTED" in note for note in getattr(cancelled, "__notes__", []))


def test_event_loops_in_many_threads_share_one_async_client(client: DatabaseClient) -> None:
    """Each thread's loop adds its lock, and drops those of closed loops, at the same time
    as the others: no 'dictionary changed size during iteration'."""
    adb = AsyncDatabaseClient(client)
    failures: list[BaseException] = []

    async def take_this_loops_lock() -> None:
        adb._loop_turns()

    deadline = time.monotonic() + 2.0

    def run_loops() -> None:
        while not failures and time.monotonic() < deadline:
            try:
                asyncio.run(take_this_loops_lock())
            except BaseException as error:
                failures.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run_loops, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=50)
    finally:
        sys.setswitchinterval(interval)
    assert failures == []


class _Undo(Exception):
    """Raised inside a transaction to roll it back."""


async def test_a_transaction_entered_in_another_task_is_that_tasks(client: DatabaseClient) -> None:
    """The task that begins it owns it: the task that only made the object writes after
    it, outside it, and keeps its row when that transaction rolls back."""
    adb = AsyncDatabaseClient(client)
    entered = asyncio.Event()

    async def child(transaction: AsyncTransaction) -> None:
        with suppress(_Undo):
            async with transaction as tx:
                await tx.execute("INSERT INTO items (name) VALUES ('child')")
                entered.set()
                await asyncio.sleep(0.2)
                raise _Undo

    async with asyncio.timeout(10):
        task = asyncio.create_task(child(adb.transaction()))
        await entered.wait()
        await adb.execute("INSERT INTO items (name) VALUES ('parent')")
        await task
    assert names_on_disk(client) == ["parent"]


async def test_sibling_savepoints_wait_in_line_instead_of_each_polling(
    client: DatabaseClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gather of savepoints inside one transaction: each lands once, and the turn is
    looked at a number of times that grows with their count, not with its square (each
    polling on its own, 800 of them took 18 s)."""
    adb = AsyncDatabaseClient(client)
    looks = 0
    admits = type(client._lock).admits

    def counted(lock: Any, reservation: Any) -> bool:
        nonlocal looks
        looks += 1
        return admits(lock, reservation)

    monkeypatch.setattr(type(client._lock), "admits", counted)
    siblings = 200

    async def savepoint(i: int) -> None:
        async with adb.transaction() as sp:
            await sp.execute("INSERT INTO items (name) VALUES (?)", (f"n{i:03}",))

    async with adb.transaction():
        await asyncio.gather(*(savepoint(i) for i in range(siblings)))
    assert names_on_disk(client) == [f"n{i:03}" for i in range(siblings)]
    assert looks < siblings * 50  # 13 each here; 200 each when every one polled
