"""Add to your tests/conftest.py: registers the isolation plugin and its metrics reporter."""

pytest_plugins = ["tests.setup_integration", "tests.isolation_reporter"]
