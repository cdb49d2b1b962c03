"""The application's operations on the example schema, independent of HTTP.

Each function asks for the database with ``get_database_client()`` when it runs, never
at import time, so under test it uses the current test's own database. A purchase
(:func:`place_order`) writes the order, its items, the stock and a log line in one
transaction: all of it happens, or none of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lib.database import get_database_client

__all__ = [
    "Conflict",
    "InsufficientStock",
    "NotFound",
    "OrderLine",
    "StoreError",
    "create_product",
    "create_user",
    "get_order",
    "get_product",
    "list_products",
    "place_order",
]

PRODUCT_COLUMNS = "id, sku, name, price_cents, stock"


class StoreError(Exception):
    """A request the store refuses; ``status`` is the matching HTTP status."""

    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class InsufficientStock(Conflict):
    """An order asked for more of a product than is in stock; nothing was changed."""


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: int
    quantity: int


def _row(row: sqlite3.Row) -> dict[str, Any]:
    return dict(row)


def create_user(email: str, name: str) -> dict[str, Any]:
    try:
        result = get_database_client().execute(
            "INSERT INTO users (email, name) VALUES (?, ?) RETURNING id, email, name",
            (email, name),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"a user with the email {email!r} already exists", email=email) from None
    return _row(result.rows[0])


def list_products() -> list[dict[str, Any]]:
    rows = get_database_client().execute(f"SELECT {PRODUCT_COLUMNS} FROM products ORDER BY id")
    return [_row(row) for row in rows.rows]


def get_product(product_id: int) -> dict[str, Any]:
    rows = (
        get_database_client()
        .execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ?", (product_id,))
        .rows
    )
    if not rows:
        raise NotFound(f"product {product_id} does not exist", product_id=product_id)
    return _row(rows[0])


def create_product(sku: str, name: str, price_cents: int, stock: int) -> dict[str, Any]:
    try:
        result = get_database_client().execute(
            "INSERT INTO products (sku, name, price_cents, stock) VALUES (?, ?, ?, ?) "
            f"RETURNING {PRODUCT_COLUMNS}",
            (sku, name, price_cents, stock),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"a product with the sku {sku!r} already exists", sku=sku) from None
    return _row(result.rows[0])


def place_order(user_id: int, lines: Sequence[OrderLine]) -> dict[str, Any]:
    """Create an order with its items and take the stock, all in one transaction.

    Raises :class:`NotFound` for an unknown user or product and
    :class:`InsufficientStock` when the order asks for more of a product than is in
    stock, its lines for that product added up; either way the transaction is rolled back
    and nothing has changed.
    """
    # The order's whole demand for each product, in the order the products first appear.
    demand: dict[int, int] = {}
    for line in lines:
        demand[line.product_id] = demand.get(line.product_id, 0) + line.quantity
    with get_database_client().transaction() as tx:
        if not tx.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).rows:
            raise NotFound(f"user {user_id} does not exist", user_id=user_id)
        order_id = tx.execute(
            "INSERT INTO orders (user_id, status) VALUES (?, 'pending')", (user_id,)
        ).last_insert_rowid
        prices: dict[int, int] = {}
        for product_id, wanted in demand.items():
            rows = tx.execute(
                "SELECT sku, price_cents, stock FROM products WHERE id = ?", (product_id,)
            ).rows
            if not rows:
                raise NotFound(f"product {product_id} does not exist", product_id=product_id)
            product = rows[0]
            # Take the stock only if there is enough of it: never below zero, even if
            # another connection wrote in between.
            taken = tx.execute(
                "UPDATE products SET stock = stock - ? WHERE id = ? AND stock >= ?",
                (wanted, product_id, wanted),
            ).rows_affected
            if not taken:
                raise InsufficientStock(
                    f"insufficient stock for {product['sku']}: {wanted} wanted, "
                    f"{product['stock']} in stock",
                    product_id=product_id,
                    requested=wanted,
                    available=product["stock"],
                )
            prices[product_id] = product["price_cents"]
        total = 0
        for line in lines:
            price = prices[line.product_id]
            tx.execute(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) "
                "VALUES (?, ?, ?, ?)",
                (order_id, line.product_id, line.quantity, price),
            )
            total += line.quantity * price
        tx.execute("UPDATE orders SET total_cents = ? WHERE id = ?", (total, order_id))
        tx.execute(
            "INSERT INTO logs (level, message) VALUES ('info', ?)",
            (f"order {order_id} placed for user {user_id}: {len(lines)} item(s), {total} cents",),
        )
    assert order_id is not None
    return get_order(order_id)


def get_order(order_id: int) -> dict[str, Any]:
    db = get_database_client()
    rows = db.execute(
        "SELECT id, user_id, status, total_cents, created_at FROM orders WHERE id = ?",
        (order_id,),
    ).rows
    if not rows:
        raise NotFound(f"order {order_id} does not exist", order_id=order_id)
    items = db.execute(
        "SELECT product_id, quantity, unit_price_cents FROM order_items "
        "WHERE order_id = ? ORDER BY id",
        (order_id,),
    ).rows
    return {**_row(rows[0]), "items": [_row(item) for item in items]}
