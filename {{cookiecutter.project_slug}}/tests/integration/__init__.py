"""Integration tests: each test runs in its own fresh, migrated database."""
