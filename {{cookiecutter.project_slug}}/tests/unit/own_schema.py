"""The schema the isolation library's tests build their databases from: their own, so
that they pass whatever schema the project's ``migrations/`` holds."""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TABLES = frozenset({"users", "products", "orders", "order_items", "logs"})
