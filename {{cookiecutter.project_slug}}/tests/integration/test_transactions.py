"""Transactions and batches on the test's own database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import pytest

from lib.database import AsyncDatabaseClient, AsyncTransaction, DatabaseClient
from tests.integration.schema import table_names


def _add_user(db: DatabaseClient, email: str = "alice@example.com", name: str = "Alice") -> int:
    rowid = db.execute(
        "INSERT INTO users (email, name) VALUES (?, ?)", (email, name)
    ).last_insert_rowid
    assert rowid is not None
    return int(rowid)


def _count(db: DatabaseClient, table: str) -> int:
    value = db.execute(f"SELECT COUNT(*) FROM {table}").rows[0][0]
    assert isinstance(value, int)
    return value


def test_transaction_commit_spans_tables(db: DatabaseClient) -> None:
    tx = db.transaction()
    try:
        user_id = tx.execute(
            "INSERT INTO users (email, name) VALUES (?, ?)", ("alice@example.com", "Alice Smith")
        ).last_insert_rowid
        tx.execute(
            "INSERT INTO orders (user_id, status, total_cents) VALUES (?, ?, ?)",
            (user_id, "pending", 9999),
        )
        tx.commit()
    except BaseException:
        tx.rollback()
        raise
    orders = db.execute(
        "SELECT o.total_cents, o.status, u.name FROM orders o JOIN users u ON o.user_id = u.id"
    ).rows
    assert len(orders) == 1
    assert orders[0]["name"] == "Alice Smith"
    assert orders[0]["total_cents"] == 9999
    assert orders[0]["status"] == "pending"


def test_transaction_rollback_undoes_everything(db: DatabaseClient) -> None:
    tx = db.transaction()
    tx.execute("INSERT INTO users (email, name) VALUES ('a@example.com', 'A')")
    tx.execute("CREATE TABLE scratch (x INTEGER)")
    tx.rollback()
    assert _count(db, "users") == 0
    assert "scratch" not in table_names(db)


def _insert_duplicate_users(db: DatabaseClient) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO users (email, name) VALUES ('dup@example.com', 'One')")
        tx.execute("INSERT INTO users (email, name) VALUES ('dup@example.com', 'Two')")


def test_context_manager_rolls_back_on_error(db: DatabaseClient) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        _insert_duplicate_users(db)
    assert _count(db, "users") == 0


def test_batch_is_atomic(db: DatabaseClient) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        db.batch(
            [
                (
                    "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, ?, ?, ?)",
                    ("SKU-1", "One", 100, 1),
                ),
                {
                    "sql": "INSERT INTO products (sku, name, price_cents, stock) "
                    "VALUES (?, ?, ?, ?)",
                    "args": ["SKU-2", "Two", 200, 2],
                },
                (
                    "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, ?, ?, ?)",
                    ("SKU-3", "Negative", -1, 1),
                ),  # CHECK (price_cents >= 0) fails
            ]
        )
    assert _count(db, "products") == 0


def test_batch_commits_when_every_statement_succeeds(db: DatabaseClient) -> None:
    results = db.batch(
        [
            "INSERT INTO logs (level, message) VALUES ('info', 'one')",
            ("INSERT INTO logs (level, message) VALUES (?, ?)", ("info", "two")),
            "SELECT message FROM logs ORDER BY id",
        ]
    )
    assert [r["message"] for r in results[-1].rows] == ["one", "two"]
    assert _count(db, "logs") == 2


def _order_with_unknown_product(db: DatabaseClient, user_id: int) -> None:
    with db.transaction() as tx:
        order_id = tx.execute(
            "INSERT INTO orders (user_id, status, total_cents) VALUES (?, 'pending', 0)",
            (user_id,),
        ).last_insert_rowid
        tx.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
            "VALUES (?, ?, ?, ?)",
            (order_id, 424242, 1, 100),  # no such product
        )


def test_foreign_key_violation_rolls_back_the_transaction(db: DatabaseClient) -> None:
    user_id = _add_user(db)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        _order_with_unknown_product(db, user_id)
    assert _count(db, "orders") == 0
    assert _count(db, "order_items") == 0
    assert _count(db, "users") == 1


def test_check_constraint_on_order_status(db: DatabaseClient) -> None:
    user_id = _add_user(db)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO orders (user_id, status, total_cents) VALUES (?, 'lost', 0)", (user_id,)
        )


def test_deleting_an_order_cascades_to_its_items(db: DatabaseClient) -> None:
    user_id = _add_user(db)
    with db.transaction() as tx:
        product_id = tx.execute(
            "INSERT INTO products (sku, name, price_cents, stock) VALUES ('S', 'P', 100, 5)"
        ).last_insert_rowid
        order_id = tx.execute(
            "INSERT INTO orders (user_id, status, total_cents) VALUES (?, 'pending', 200)",
            (user_id,),
        ).last_insert_rowid
        tx.execute(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
            "VALUES (?, ?, 2, 100)",
            (order_id, product_id),
        )
    assert _count(db, "order_items") == 1
    db.execute("DELETE FROM orders WHERE id = ?", (order_id,))
    assert _count(db, "order_items") == 0


def test_application_code_joins_an_open_transaction(db: DatabaseClient) -> None:
    """A helper that calls db.execute while the caller's transaction is open is rolled back too."""
    tx = db.transaction()
    tx.execute("INSERT INTO users (email, name) VALUES ('t@example.com', 'T')")
    db.execute("INSERT INTO logs (level, message) VALUES ('info', 'user created')")
    tx.rollback()
    assert _count(db, "users") == 0
    assert _count(db, "logs") == 0


def test_returning_statements_report_the_rows_they_changed(db: DatabaseClient) -> None:
    """``rows_affected`` counts changed rows with RETURNING too, on every engine."""
    inserted = db.execute(
        "INSERT INTO logs (level, message) VALUES ('info', 'a'), ('info', 'b') RETURNING id"
    )
    assert (inserted.rows_affected, len(inserted.rows)) == (2, 2)
    assert db.execute("UPDATE logs SET level = 'warning' RETURNING id").rows_affected == 2
    assert db.execute("SELECT id FROM logs").rows_affected == 0
    assert db.execute("DELETE FROM logs WHERE message = 'a' RETURNING *").rows_affected == 1


async def _log_inside_a_transaction(async_db: AsyncDatabaseClient) -> None:
    async with async_db.transaction() as tx:
        await tx.execute("INSERT INTO users (email, name) VALUES ('t@example.com', 'T')")
        await async_db.execute("INSERT INTO logs (level, message) VALUES ('info', 'created')")
        async with async_db.transaction() as nested:
            await nested.execute("INSERT INTO logs (level, message) VALUES ('info', 'nested')")
        raise LookupError("roll back")


async def test_async_application_code_joins_an_open_transaction(
    async_db: AsyncDatabaseClient, db: DatabaseClient
) -> None:
    """``async_db.execute`` from the transaction's own task joins it instead of waiting."""
    with pytest.raises(LookupError):
        await asyncio.wait_for(_log_inside_a_transaction(async_db), timeout=10)
    assert _count(db, "users") == 0
    assert _count(db, "logs") == 0


@pytest.fixture
async def surrounding(async_db: AsyncDatabaseClient) -> AsyncIterator[AsyncTransaction]:
    """A transaction around the test, rolled back after it."""
    transaction = await async_db.transaction()
    yield transaction
    await transaction.rollback()


async def test_a_transaction_an_async_fixture_opened_surrounds_the_test(
    surrounding: AsyncTransaction, async_db: AsyncDatabaseClient, db: DatabaseClient
) -> None:
    """The test inherits the fixture's context: its calls join that transaction."""
    await surrounding.execute("INSERT INTO logs (level, message) VALUES ('info', 'fixture')")
    async with asyncio.timeout(10):
        await async_db.execute("INSERT INTO logs (level, message) VALUES ('info', 'test')")
        await asyncio.to_thread(_add_user, db)
    assert _count(db, "logs") == 2
    assert _count(db, "users") == 1
