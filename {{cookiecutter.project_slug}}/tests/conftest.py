"""Registers the isolation plugin for the whole test suite."""

pytest_plugins = ["tests.setup_integration"]
