"""Registers the isolation plugin and its metrics reporter for the whole test suite."""

pytest_plugins = ["tests.setup_integration", "tests.isolation_reporter"]
