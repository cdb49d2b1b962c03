"""Registers the isolation plugin and its metrics reporter for every pytest run here.

At the project's root, not in ``tests/``, so that a run over other directories alone
(``pytest --doctest-modules app``) loads it too: it knows the plugin's settings and keeps
the application's code away from ``data/app.db`` there as well.
"""

pytest_plugins = ["tests.setup_integration", "tests.isolation_reporter"]
