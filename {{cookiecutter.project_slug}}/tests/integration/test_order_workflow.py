"""The order-processing workflow over the example schema, end to end.

The functions below stand in for application code: they ask for the database with
`get_database_client()` at call time, so under test they use the test's own database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import pytest

from lib.database import DatabaseClient, get_database_client


class InsufficientStockError(Exception):
    """An order asked for more of a product than is in stock."""


def log(level: str, message: str) -> None:
    get_database_client().execute(
        "INSERT INTO logs (level, message) VALUES (?, ?)", (level, message)
    )


def create_user(email: str, name: str) -> int:
    rowid = (
        get_database_client()
        .execute("INSERT INTO users (email, name) VALUES (?, ?)", (email, name))
        .last_insert_rowid
    )
    assert rowid is not None
    log("info", f"user {email} created")
    return rowid


def add_product(sku: str, name: str, price_cents: int, stock: int) -> int:
    rowid = (
        get_database_client()
        .execute(
            "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, ?, ?, ?)",
            (sku, name, price_cents, stock),
        )
        .last_insert_rowid
    )
    assert rowid is not None
    return rowid


def place_order(user_id: int, quantities: Mapping[int, int]) -> int:
    """Create an order with its items and take the stock, all in one transaction."""
    db = get_database_client()
    try:
        with db.transaction() as tx:
            order_id = tx.execute(
                "INSERT INTO orders (user_id, status) VALUES (?, 'pending')", (user_id,)
            ).last_insert_rowid
            total = 0
            for product_id, quantity in quantities.items():
                product = tx.execute(
                    "SELECT sku, price_cents, stock FROM products WHERE id = ?", (product_id,)
                ).rows[0]
                if product["stock"] < quantity:
                    raise InsufficientStockError(
                        f"{product['sku']}: {quantity} wanted, {product['stock']} in stock"
                    )
                tx.execute(
                    "UPDATE products SET stock = stock - ? WHERE id = ?", (quantity, product_id)
                )
                tx.execute(
                    "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
                    "VALUES (?, ?, ?, ?)",
                    (order_id, product_id, quantity, product["price_cents"]),
                )
                total += quantity * product["price_cents"]
            tx.execute("UPDATE orders SET total_cents = ? WHERE id = ?", (total, order_id))
            log("info", f"order {order_id} placed for user {user_id}")
    except InsufficientStockError as error:
        log("warning", f"order rejected for user {user_id}: {error}")
        raise
    assert order_id is not None
    return order_id


def set_status(order_id: int, status: str) -> None:
    get_database_client().execute("UPDATE orders SET status = ? WHERE id = ?", (status, order_id))
    log("info", f"order {order_id} {status}")


def _stock(db: DatabaseClient, product_id: int) -> int:
    value = db.execute("SELECT stock FROM products WHERE id = ?", (product_id,)).rows[0][0]
    assert isinstance(value, int)
    return value


@pytest.fixture
def catalogue(db: DatabaseClient) -> dict[str, int]:
    """A user and two products in this test's database."""
    return {
        "user": create_user("alice@example.com", "Alice"),
        "pen": add_product("PEN-1", "Pen", 150, 10),
        "pad": add_product("PAD-1", "Notepad", 400, 2),
    }


def test_complete_order_processing(db: DatabaseClient, catalogue: dict[str, int]) -> None:
    order_id = place_order(catalogue["user"], {catalogue["pen"]: 3, catalogue["pad"]: 1})

    order = db.execute("SELECT user_id, status, total_cents FROM orders WHERE id = ?", (order_id,))
    assert dict(order.rows[0]) == {
        "user_id": catalogue["user"],
        "status": "pending",
        "total_cents": 3 * 150 + 400,
    }
    items = db.execute(
        "SELECT product_id, quantity, unit_price_cents FROM order_items "
        "WHERE order_id = ? ORDER BY product_id",
        (order_id,),
    ).rows
    assert [tuple(row) for row in items] == [
        (catalogue["pen"], 3, 150),
        (catalogue["pad"], 1, 400),
    ]
    assert _stock(db, catalogue["pen"]) == 7
    assert _stock(db, catalogue["pad"]) == 1

    set_status(order_id, "paid")
    set_status(order_id, "shipped")
    assert db.execute("SELECT status FROM orders").rows[0]["status"] == "shipped"

    messages = [r["message"] for r in db.execute("SELECT message FROM logs ORDER BY id").rows]
    assert messages == [
        "user alice@example.com created",
        f"order {order_id} placed for user {catalogue['user']}",
        f"order {order_id} paid",
        f"order {order_id} shipped",
    ]


def test_insufficient_stock_rolls_back_the_whole_order(
    db: DatabaseClient, catalogue: dict[str, int]
) -> None:
    """The pen line is applied before the pad line fails: both must be undone."""
    with pytest.raises(InsufficientStockError, match="PAD-1: 5 wanted, 2 in stock"):
        place_order(catalogue["user"], {catalogue["pen"]: 3, catalogue["pad"]: 5})

    assert db.execute("SELECT COUNT(*) FROM orders").rows[0][0] == 0
    assert db.execute("SELECT COUNT(*) FROM order_items").rows[0][0] == 0
    assert _stock(db, catalogue["pen"]) == 10
    assert _stock(db, catalogue["pad"]) == 2
    warnings = db.execute("SELECT message FROM logs WHERE level = 'warning'").rows
    assert len(warnings) == 1
    assert "PAD-1" in warnings[0]["message"]


def test_each_test_starts_with_a_fresh_catalogue(
    db: DatabaseClient, catalogue: dict[str, int]
) -> None:
    """Orders placed by the other tests never show up here."""
    assert db.execute("SELECT COUNT(*) FROM orders").rows[0][0] == 0
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 1
    assert _stock(db, catalogue["pen"]) == 10


def test_two_orders_draw_down_the_same_stock(db: DatabaseClient, catalogue: dict[str, int]) -> None:
    place_order(catalogue["user"], {catalogue["pad"]: 1})
    place_order(catalogue["user"], {catalogue["pad"]: 1})
    assert _stock(db, catalogue["pad"]) == 0
    with pytest.raises(InsufficientStockError):
        place_order(catalogue["user"], {catalogue["pad"]: 1})
    assert db.execute("SELECT COUNT(*) FROM orders").rows[0][0] == 2


def test_cancelling_an_order_keeps_its_items(db: DatabaseClient, catalogue: dict[str, int]) -> None:
    order_id = place_order(catalogue["user"], {catalogue["pen"]: 1})
    set_status(order_id, "cancelled")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        set_status(order_id, "lost")
    assert db.execute("SELECT status FROM orders").rows[0][0] == "cancelled"
    assert db.execute("SELECT COUNT(*) FROM order_items").rows[0][0] == 1
