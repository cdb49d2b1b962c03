"""Concurrent work inside one test: threads and asyncio on the test's database."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from lib.database import AsyncDatabaseClient, DatabaseClient, get_database_client
from tests.setup_integration import get_db_client


def test_threads_share_one_client(db: DatabaseClient) -> None:
    """8 threads x 25 inserts through one client: every write lands."""
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(25):
            db.execute(
                "INSERT INTO logs (level, message) VALUES (?, ?)", ("info", f"thread {n} msg {i}")
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(worker, n) for n in range(8)]:
            future.result(timeout=30)
    assert db.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 200


def test_threads_calling_application_code_use_the_test_database(db: DatabaseClient) -> None:
    """Worker threads that ask the singleton at call time write into this test's database."""

    def app_write(i: int) -> None:
        get_database_client().execute(
            "INSERT INTO logs (level, message) VALUES ('info', ?)", (f"app {i}",)
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(app_write, range(20)))
    assert db.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 20


def test_transactions_in_threads_stay_separate(db: DatabaseClient) -> None:
    """A failing transaction in one thread does not take the others' commits with it."""

    def place(n: int) -> bool:
        try:
            with db.transaction() as tx:
                tx.execute(
                    "INSERT INTO users (email, name) VALUES (?, ?)", (f"u{n}@example.com", f"U{n}")
                )
                if n % 2:
                    raise ValueError("odd users are rejected")
        except ValueError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(place, range(10)))
    assert outcomes == [n % 2 == 0 for n in range(10)]
    emails = {r["email"] for r in db.execute("SELECT email FROM users").rows}
    assert emails == {f"u{n}@example.com" for n in range(0, 10, 2)}


async def test_asyncio_gather_of_inserts(async_db: AsyncDatabaseClient) -> None:
    await asyncio.gather(
        *(
            async_db.execute("INSERT INTO logs (level, message) VALUES (?, ?)", ("info", f"m{i}"))
            for i in range(10)
        )
    )
    result = await async_db.execute("SELECT COUNT(*) AS count FROM logs")
    assert result.rows[0]["count"] == 10


async def test_interleaved_coroutines_each_get_their_answer(async_db: AsyncDatabaseClient) -> None:
    async def delayed(source: str, delay: float) -> str:
        await asyncio.sleep(delay)
        result = await async_db.execute("SELECT ? AS source", (source,))
        value = result.rows[0]["source"]
        assert isinstance(value, str)
        return value

    results = await asyncio.gather(
        delayed("test1", 0.03), delayed("test2", 0.01), delayed("test3", 0.0)
    )
    assert list(results) == ["test1", "test2", "test3"]


async def test_rapid_requests_for_the_client_get_the_same_database(
    async_db: AsyncDatabaseClient,
) -> None:
    """Many coroutines asking for the client at once all land in this test's database."""

    async def one(i: int) -> int:
        client = get_db_client()
        result = await asyncio.to_thread(client.execute, "SELECT ? AS test_id", (i,))
        value = result.rows[0]["test_id"]
        assert isinstance(value, int)
        return value

    assert await asyncio.gather(*(one(i) for i in range(20))) == list(range(20))
    clients = {id(get_db_client()) for _ in range(5)}
    assert len(clients) == 1


async def test_async_transaction_rollback(async_db: AsyncDatabaseClient) -> None:
    try:
        async with async_db.transaction() as tx:
            await tx.execute("INSERT INTO users (email, name) VALUES ('x@example.com', 'X')")
            raise LookupError("abort")
    except LookupError:
        pass
    result = await async_db.execute("SELECT COUNT(*) FROM users")
    assert result.rows[0][0] == 0
