"""The HTTP API against a real server, each test on its own fresh database.

Requests go over HTTP to the session's server; the test checks the outcome in its own
database through the ``db`` fixture. Both see the same database: the one of this test.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.api import MIGRATE, RETRY_AFTER_SECONDS, create_app
from lib.database import BUSY_TIMEOUT_MS, DatabaseClient, get_database_client
from lib.migrate import MIGRATIONS_TABLE, migration_files

# How long the server's client waits for a lock that another connection holds, in the
# tests that make it wait: the real busy timeout would make each of them take 5 s.
SHORT_BUSY_TIMEOUT_MS = 50


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _count(db: DatabaseClient, table: str) -> int:
    value = db.execute(f"SELECT COUNT(*) FROM {table}").rows[0][0]
    assert isinstance(value, int)
    return value


def _stock(db: DatabaseClient, product_id: int) -> int:
    value = db.execute("SELECT stock FROM products WHERE id = ?", (product_id,)).rows[0][0]
    assert isinstance(value, int)
    return value


@pytest.fixture
def shop(api: httpx.Client) -> dict[str, int]:
    """A user and two products, created through the API."""
    user = _created(api.post("/users", json={"email": "ada@example.com", "name": "Ada"}))
    pen = _created(
        api.post("/products", json={"sku": "PEN-1", "name": "Pen", "price_cents": 150, "stock": 10})
    )
    pad = _created(
        api.post(
            "/products", json={"sku": "PAD-1", "name": "Notepad", "price_cents": 400, "stock": 2}
        )
    )
    return {"user": user["id"], "pen": pen["id"], "pad": pad["id"]}


def test_health(api: httpx.Client) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_is_unavailable_while_a_migration_is_not_applied(
    api: httpx.Client, db: DatabaseClient
) -> None:
    """A readiness probe keeps traffic away from a database whose schema is behind."""
    last = migration_files()[-1].stem
    db.execute(f"DELETE FROM {MIGRATIONS_TABLE} WHERE name = ?", [last])

    response = api.get("/health")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "error": f"1 migration(s) not applied to {db.path} ({last}): run {MIGRATE}",
        "pending": [last],
    }


async def test_the_apps_lifespan_run_in_a_test_leaves_the_test_its_client(
    db: DatabaseClient,
) -> None:
    """The server closes its database as it stops: in a test, the test's client stays
    open and remains the one the application gets."""
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            assert (await client.get("/health")).status_code == 200
    assert get_database_client() is db
    assert db.execute("SELECT count(*) FROM products").rows[0][0] == 0


def test_a_product_created_over_http_is_in_this_tests_database(
    api: httpx.Client, db: DatabaseClient
) -> None:
    assert api.get("/products").json() == []  # fresh, whichever test ran before

    product = _created(
        api.post("/products", json={"sku": "MUG-1", "name": "Mug", "price_cents": 900, "stock": 3})
    )

    assert product == {
        "id": product["id"],
        "sku": "MUG-1",
        "name": "Mug",
        "price_cents": 900,
        "stock": 3,
    }
    rows = db.execute("SELECT sku, stock FROM products").rows
    assert [tuple(row) for row in rows] == [("MUG-1", 3)]


def test_a_product_inserted_by_the_test_is_served_over_http(
    api: httpx.Client, db: DatabaseClient
) -> None:
    """The reference flow: set up data in the test's database, then call the API."""
    assert _count(db, "products") == 0  # the other tests' products never show up here
    product_id = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('BOOK-1', 'Book', 2999, 100)"
    ).last_insert_rowid
    user_id = db.execute(
        "INSERT INTO users (email, name) VALUES ('bob@example.com', 'Bob')"
    ).last_insert_rowid
    assert product_id is not None
    assert user_id is not None

    response = api.get(f"/products/{product_id}")
    assert response.status_code == 200
    assert response.json()["name"] == "Book"
    assert response.json()["price_cents"] == 2999

    order = _created(
        api.post(
            "/orders",
            json={"user_id": user_id, "items": [{"product_id": product_id, "quantity": 5}]},
        )
    )

    assert order["total_cents"] == 5 * 2999
    assert _stock(db, product_id) == 95


def test_list_products(api: httpx.Client, shop: dict[str, int]) -> None:
    products = api.get("/products").json()
    assert [(p["sku"], p["stock"]) for p in products] == [("PEN-1", 10), ("PAD-1", 2)]


def test_purchase_takes_stock_and_stores_the_order(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    order = _created(
        api.post(
            "/orders",
            json={
                "user_id": shop["user"],
                "items": [
                    {"product_id": shop["pen"], "quantity": 3},
                    {"product_id": shop["pad"], "quantity": 1},
                ],
            },
        )
    )

    assert order["user_id"] == shop["user"]
    assert order["status"] == "pending"
    assert order["total_cents"] == 3 * 150 + 400
    assert order["items"] == [
        {"product_id": shop["pen"], "quantity": 3, "unit_price_cents": 150},
        {"product_id": shop["pad"], "quantity": 1, "unit_price_cents": 400},
    ]
    assert api.get(f"/orders/{order['id']}").json() == order
    assert _stock(db, shop["pen"]) == 7
    assert _stock(db, shop["pad"]) == 1
    items = db.execute("SELECT product_id, quantity FROM order_items ORDER BY id").rows
    assert [tuple(row) for row in items] == [(shop["pen"], 3), (shop["pad"], 1)]
    logs = [row["message"] for row in db.execute("SELECT message FROM logs").rows]
    assert logs == [f"order {order['id']} placed for user {shop['user']}: 2 item(s), 850 cents"]


def test_insufficient_stock_is_a_conflict_and_changes_nothing(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    """The pen line is applied before the pad line fails: both are undone."""
    response = api.post(
        "/orders",
        json={
            "user_id": shop["user"],
            "items": [
                {"product_id": shop["pen"], "quantity": 3},
                {"product_id": shop["pad"], "quantity": 5},
            ],
        },
    )

    assert response.status_code == 409
    assert response.json() == {
        "error": "insufficient stock for PAD-1: 5 wanted, 2 in stock",
        "product_id": shop["pad"],
        "requested": 5,
        "available": 2,
    }
    assert _stock(db, shop["pen"]) == 10
    assert _stock(db, shop["pad"]) == 2
    for table in ("orders", "order_items", "logs"):
        assert _count(db, table) == 0, table


def test_a_product_on_two_lines_is_checked_against_its_whole_demand(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    """Two lines of 2 against a stock of 3: the error names the order's 4 against the 3 in
    stock, not the 1 left after the first line (which is rolled back too)."""
    zz = _created(
        api.post("/products", json={"sku": "ZZ-1", "name": "Zz", "price_cents": 100, "stock": 3})
    )
    response = api.post(
        "/orders",
        json={
            "user_id": shop["user"],
            "items": [
                {"product_id": zz["id"], "quantity": 2},
                {"product_id": shop["pen"], "quantity": 1},
                {"product_id": zz["id"], "quantity": 2},
            ],
        },
    )

    assert response.status_code == 409
    assert response.json() == {
        "error": "insufficient stock for ZZ-1: 4 wanted, 3 in stock",
        "product_id": zz["id"],
        "requested": 4,
        "available": 3,
    }
    assert _stock(db, zz["id"]) == 3
    assert _stock(db, shop["pen"]) == 10
    for table in ("orders", "order_items", "logs"):
        assert _count(db, table) == 0, table


def test_a_product_on_two_lines_within_stock_is_sold_line_by_line(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    order = _created(
        api.post(
            "/orders",
            json={
                "user_id": shop["user"],
                "items": [
                    {"product_id": shop["pen"], "quantity": 3},
                    {"product_id": shop["pad"], "quantity": 2},
                    {"product_id": shop["pen"], "quantity": 7},
                ],
            },
        )
    )

    assert order["total_cents"] == 10 * 150 + 2 * 400
    assert order["items"] == [
        {"product_id": shop["pen"], "quantity": 3, "unit_price_cents": 150},
        {"product_id": shop["pad"], "quantity": 2, "unit_price_cents": 400},
        {"product_id": shop["pen"], "quantity": 7, "unit_price_cents": 150},
    ]
    assert _stock(db, shop["pen"]) == 0
    assert _stock(db, shop["pad"]) == 0


@contextmanager
def _write_lock_held_elsewhere(db: DatabaseClient) -> Iterator[None]:
    """Another connection holds the write lock of this test's database, as another process
    would, while the server's client (``db`` itself) waits only briefly for it."""
    holder = sqlite3.connect(db.path, isolation_level=None, uri=True)  # memory strategy: a URI
    try:
        holder.execute("BEGIN IMMEDIATE")
        db.execute(f"PRAGMA busy_timeout = {SHORT_BUSY_TIMEOUT_MS}")
        try:
            yield
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            holder.execute("ROLLBACK")
    finally:
        holder.close()


# The lock is held by another SQLite library of this process: libsql does not see it.
@pytest.mark.sqlite3_only
def test_a_busy_database_is_a_503_with_retry_after(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    """A write lock held past the busy timeout: a JSON 503 the client can retry, not a 500."""
    order = {"user_id": shop["user"], "items": [{"product_id": shop["pen"], "quantity": 1}]}
    with _write_lock_held_elsewhere(db):
        response = api.post("/orders", json=order)

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert response.json() == {"error": "the database is busy: try again shortly"}
    assert _count(db, "orders") == 0
    assert _stock(db, shop["pen"]) == 10
    # Once the lock is let go, the same request goes through.
    assert _created(api.post("/orders", json=order))["total_cents"] == 150
    assert _stock(db, shop["pen"]) == 9


def test_other_database_errors_are_not_reported_busy(
    api_url: str, db: DatabaseClient, shop: dict[str, int]
) -> None:
    """Only contention is a 503: any other sqlite3.OperationalError stays a 500."""
    db.execute("DROP TABLE logs")  # the purchase's last statement now fails
    order = {"user_id": shop["user"], "items": [{"product_id": shop["pen"], "quantity": 1}]}

    # A client of its own: `api` fails the test on a 500.
    with httpx.Client(base_url=api_url) as client:
        response = client.post("/orders", json=order)

    assert response.status_code == 500
    assert "retry-after" not in response.headers
    assert _count(db, "orders") == 0
    assert _stock(db, shop["pen"]) == 10


def test_a_server_error_fails_the_test_with_the_servers_traceback(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    """`api` turns a 500 into this test's failure, saying what the server hit."""
    db.execute("DROP TABLE logs")
    order = {"user_id": shop["user"], "items": [{"product_id": shop["pen"], "quantity": 1}]}
    with pytest.raises(AssertionError, match=r"(?s)POST .*/orders.*no such table: logs"):
        api.post("/orders", json=order)


def test_concurrent_purchases_sell_exactly_the_stock(
    api: httpx.Client, db: DatabaseClient, shop: dict[str, int]
) -> None:
    """Twelve buyers race for the last two notepads: two orders, stock zero, never negative."""
    buyers = 12
    barrier = threading.Barrier(buyers)
    order = {"user_id": shop["user"], "items": [{"product_id": shop["pad"], "quantity": 1}]}

    def buy(_: int) -> int:
        barrier.wait(timeout=10)
        return api.post("/orders", json=order).status_code

    with ThreadPoolExecutor(max_workers=buyers) as pool:
        statuses = sorted(pool.map(buy, range(buyers)))

    assert statuses == [201] * 2 + [409] * (buyers - 2)
    assert _stock(db, shop["pad"]) == 0
    assert _count(db, "orders") == 2
    assert db.execute("SELECT SUM(quantity) FROM order_items").rows[0][0] == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/products", {"sku": "X", "name": "X", "price_cents": -1, "stock": 1}, 400, "price_cents"),
        ("/products", {"sku": "", "name": "X", "price_cents": 1, "stock": 1}, 400, "sku"),
        ("/users", {"email": "a@example.com"}, 400, "name"),
        ("/orders", {"user_id": 1, "items": []}, 400, "items"),
        ("/orders", {"user_id": 1, "items": [{"product_id": 1, "quantity": 0}]}, 400, "quantity"),
        ("/orders", {"user_id": 99, "items": [{"product_id": 1, "quantity": 1}]}, 404, "user 99"),
        ("/products", {"sku": "X", "name": "X", "price_cents": 2**64, "stock": 1}, 400, "price"),
        ("/orders", {"user_id": 2**64, "items": [{"product_id": 1, "quantity": 1}]}, 400, "user"),
        ("/orders", {"user_id": 1, "items": [{"product_id": 1, "quantity": 2**64}]}, 400, "quan"),
        (
            "/orders",
            {"user_id": 1, "items": [{"product_id": 1, "quantity": 1}] * 101},
            400,
            "1 to 100 objects",
        ),
    ],
    ids=[
        "negative-price",
        "empty-sku",
        "missing-name",
        "no-items",
        "zero-quantity",
        "unknown-user",
        "huge-price",
        "huge-user-id",
        "huge-quantity",
        "too-many-items",
    ],
)
def test_invalid_requests_are_refused(
    api: httpx.Client, db: DatabaseClient, path: str, body: dict[str, Any], status: int, error: str
) -> None:
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    assert error in response.json()["error"]
    for table in ("users", "products", "orders"):
        assert _count(db, table) == 0, table


def test_unknown_ids_are_not_found(api: httpx.Client, shop: dict[str, int]) -> None:
    assert api.get("/products/999").status_code == 404
    beyond_sqlite = api.get(f"/orders/{2**64}")  # no integer SQLite stores
    assert beyond_sqlite.status_code == 404
    assert "error" in beyond_sqlite.json()
    assert api.get("/orders/1").json() == {"error": "order 1 does not exist", "order_id": 1}
    order = {"user_id": shop["user"], "items": [{"product_id": 999, "quantity": 1}]}
    assert api.post("/orders", json=order).status_code == 404


def test_duplicates_are_conflicts(api: httpx.Client, shop: dict[str, int]) -> None:
    response = api.post("/users", json={"email": "ada@example.com", "name": "Ada again"})
    assert response.status_code == 409
    assert "already exists" in response.json()["error"]
    product = {"sku": "PEN-1", "name": "Pen", "price_cents": 1, "stock": 1}
    assert api.post("/products", json=product).status_code == 409


def test_malformed_json_is_a_bad_request(api: httpx.Client) -> None:
    response = api.post(
        "/users", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "the request body must be a JSON object"}
    deep = api.post("/users", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert deep.status_code == 400
