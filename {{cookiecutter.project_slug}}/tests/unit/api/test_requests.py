"""The API's checks of a request, in process and without a database: a request it
refuses is refused before any database call, so a unit test can cover it (a unit test
has no database). What a request does to the database is for the integration tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.api import create_app
from lib.database import DatabaseConfigError, DatabaseService, swap_database_service


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The application in this process, as httpx's ASGI transport calls it."""
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/users", b"{not json", {"error": "the request body must be a JSON object"}),
        ("/users", b"[]", {"error": "the request body must be a JSON object"}),
        (
            "/users",
            b'{"email": " ", "name": "Ada"}',
            {"error": "email must be a non-empty string", "field": "email"},
        ),
        (
            "/products",
            b'{"sku": "PEN-1", "name": "Pen", "price_cents": -1, "stock": 1}',
            {
                "error": "price_cents must be an integer from 0 to 1000000000",
                "field": "price_cents",
            },
        ),
        (
            "/orders",
            b'{"user_id": true, "items": []}',
            {
                "error": "user_id must be an integer from 1 to 9223372036854775807",
                "field": "user_id",
            },
        ),
    ],
)
async def test_a_bad_request_is_a_400_naming_what_is_wrong(
    client: httpx.AsyncClient, path: str, body: bytes, error: dict[str, str]
) -> None:
    response = await client.post(path, content=body)
    assert response.status_code == 400
    assert response.json() == error


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DATABASE_URL", "postgres://db/shop", "DATABASE_URL"),
        ("DATABASE_DRIVER", "pg", "DATABASE_DRIVER"),
        ("DATABASE_DRIVER", "libsql", "needs the libsql package"),
    ],
)
async def test_a_server_with_unusable_database_settings_stops_as_it_starts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    """Rather than answer every request with a 500, the error in its log alone."""
    monkeypatch.setitem(sys.modules, "libsql", None)  # as where libsql is not installed
    monkeypatch.setenv(variable, value)
    app = create_app()
    with pytest.raises(DatabaseConfigError, match=named):
        async with app.router.lifespan_context(app):
            pass


async def test_a_server_starts_without_opening_its_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    database = tmp_path / "shop.db"
    monkeypatch.setenv("DATABASE_URL", str(database))
    app = create_app()
    async with app.router.lifespan_context(app):
        pass
    assert not database.exists()


async def test_a_server_that_stops_closes_its_database(tmp_path: Path) -> None:
    """Closed, the database folds its write-ahead log in: no -wal or -shm file is left."""
    database = tmp_path / "shop.db"
    app = create_app()
    async with app.router.lifespan_context(app):
        service = DatabaseService(f"file:{database}")
        assert swap_database_service(service) is None  # as a request would have made it
        service.get_client().execute("CREATE TABLE t (x)")
        assert (tmp_path / "shop.db-wal").exists()
    assert service.get_connection_stats()["initialized"] is False
    assert swap_database_service(None) is service
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shop.db"]
