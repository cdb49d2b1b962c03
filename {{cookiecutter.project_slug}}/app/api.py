"""The HTTP API: a Starlette application over :mod:`app.store`.

Run it with ``uvicorn app.api:app`` (after ``python -m lib.migrate``). The handlers read
the request body, then run the store's synchronous database work in Starlette's
threadpool, so a slow query never blocks the event loop. Nothing here touches the
database at import time or at startup: every request asks for it when it runs. Startup
only reads the database settings, so a ``DATABASE_URL`` that cannot be used stops the
server there, named, rather than failing every request.

Routes::

    GET  /health          {"status": "ok"} once the database answers and has every
                          migration applied; else 503 saying why
    POST /users           {"email", "name"}                        -> 201 the user
    GET  /products        every product with its stock
    POST /products        {"sku", "name", "price_cents", "stock"}  -> 201 the product
    GET  /products/{id}   one product
    POST /orders          {"user_id", "items": [{"product_id", "quantity"}]}
                          -> 201 the order; 409 when stock is insufficient (nothing changes)
    GET  /orders/{id}     one order with its items

Errors are JSON: ``{"error": "<message>", ...details}`` with status 400, 404 or 409, and
503 with a ``Retry-After`` header when another connection held the database's lock for
longer than the busy timeout (any other database error is a 500).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import store
from lib.database import (
    ClientClosedError,
    checked_database_target,
    close_database_service,
    get_database_client,
    is_contention,
)
from lib.database_config import is_remote_url, shown_url
from lib.migrate import MigrationError, pending_migrations

__all__ = ["app", "create_app"]


# SQLite's integers have 64 bits: an id beyond them names nothing. The other bounds keep
# an order's total (quantity times price, summed over its items) within them too.
MAX_ID = 2**63 - 1
MAX_PRICE_CENTS = MAX_STOCK = 10**9
MAX_QUANTITY = 10**6
MAX_ITEMS = 100
# What json.loads raises for a body that is not JSON, or nested too deep to read.
NOT_JSON = (ValueError, RecursionError)
# Seconds a client is told to wait (Retry-After) after a 503 for a busy database: the
# request had already waited the busy timeout for another connection's lock.
RETRY_AFTER_SECONDS = 1
# What applies the pending migrations, as /health tells it.
MIGRATE = "python -m lib.migrate"


class BadRequest(store.StoreError):
    status = 400


async def _body(request: Request) -> Mapping[str, Any]:
    try:
        body = json.loads(await request.body())
    except NOT_JSON:
        raise BadRequest("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _text(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string", field=field)
    return value.strip()


def _integer(body: Mapping[str, Any], field: str, *, minimum: int, maximum: int) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadRequest(f"{field} must be an integer from {minimum} to {maximum}", field=field)
    return value


def _path_id(request: Request) -> int:
    value: int = request.path_params["id"]
    if value > MAX_ID:
        raise store.NotFound(f"nothing has the id {value}")
    return value


def _unreadiness() -> dict[str, Any] | None:
    """Why the service cannot serve requests yet, or None: the database must answer and
    have every migration applied (on one that lacks some, requests would fail with 500s)."""
    client = get_database_client()
    result = client.health_check()
    if not result["healthy"]:
        return {"error": result["error"]}
    try:
        pending = pending_migrations(client)
    except (MigrationError, sqlite3.Error, ClientClosedError, TimeoutError) as error:
        return {"error": f"cannot tell whether the schema is up to date: {error}"}
    if pending:
        where = shown_url(client.path) if is_remote_url(client.path) else client.path
        behind = f"{len(pending)} migration(s) not applied to {where}"
        return {"error": f"{behind} ({', '.join(pending)}): run {MIGRATE}", "pending": pending}
    return None


async def health(request: Request) -> Response:
    problem = await run_in_threadpool(_unreadiness)
    if problem is not None:
        return JSONResponse({"status": "unavailable", **problem}, status_code=503)
    return JSONResponse({"status": "ok"})


async def create_user(request: Request) -> Response:
    body = await _body(request)
    email, name = _text(body, "email"), _text(body, "name")
    user = await run_in_threadpool(store.create_user, email, name)
    return JSONResponse(user, status_code=201)


async def list_products(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(store.list_products))


async def create_product(request: Request) -> Response:
    body = await _body(request)
    product = await run_in_threadpool(
        store.create_product,
        _text(body, "sku"),
        _text(body, "name"),
        _integer(body, "price_cents", minimum=0, maximum=MAX_PRICE_CENTS),
        _integer(body, "stock", minimum=0, maximum=MAX_STOCK),
    )
    return JSONResponse(product, status_code=201)


async def get_product(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(store.get_product, _path_id(request)))


async def place_order(request: Request) -> Response:
    body = await _body(request)
    user_id = _integer(body, "user_id", minimum=1, maximum=MAX_ID)
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise BadRequest(
            f"items must be a list of 1 to {MAX_ITEMS} objects with product_id and quantity",
            field="items",
        )
    lines = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest("each item must be an object {product_id, quantity}", field="items")
        lines.append(
            store.OrderLine(
                product_id=_integer(item, "product_id", minimum=1, maximum=MAX_ID),
                quantity=_integer(item, "quantity", minimum=1, maximum=MAX_QUANTITY),
            )
        )
    order = await run_in_threadpool(store.place_order, user_id, lines)
    return JSONResponse(order, status_code=201)


async def get_order(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(store.get_order, _path_id(request)))


async def store_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, store.StoreError)
    return JSONResponse({"error": error.message, **error.details}, status_code=error.status)


async def database_busy(request: Request, error: Exception) -> Response:
    """503 for a database whose lock another connection held past the busy timeout (the
    request changed nothing); any other database error is re-raised, to be a 500."""
    assert isinstance(error, sqlite3.OperationalError)
    if not is_contention(error):
        raise error
    return JSONResponse(
        {"error": "the database is busy: try again shortly"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Read the database settings as the server starts: one that cannot be used (an engine
    not installed included) raises ``DatabaseConfigError`` naming what to set or install.
    No database is opened. As it stops, close the database, which a request may have
    opened: SQLite then folds its write-ahead log in and removes the -wal and -shm files."""
    checked_database_target()
    try:
        yield
    finally:
        await run_in_threadpool(close_database_service)


def create_app(*, debug: bool = False) -> Starlette:
    """A new application; it opens no database until a request needs one."""
    return Starlette(
        debug=debug,
        lifespan=lifespan,
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/users", create_user, methods=["POST"]),
            Route("/products", list_products, methods=["GET"]),
            Route("/products", create_product, methods=["POST"]),
            Route("/products/{id:int}", get_product, methods=["GET"]),
            Route("/orders", place_order, methods=["POST"]),
            Route("/orders/{id:int}", get_order, methods=["GET"]),
        ],
        exception_handlers={
            store.StoreError: store_error,
            sqlite3.OperationalError: database_busy,
        },
    )


app = create_app()
