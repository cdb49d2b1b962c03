"""Add to your noxfile.py: a session that runs the isolated integration tests."""

from __future__ import annotations

import nox


@nox.session
def integration(session: nox.Session) -> None:
    """Run the integration tests, each against its own fresh, migrated database."""
    session.install("sqlite-utils>=4", "pytest>=8.3", "pytest-xdist>=3.6")
    # Async tests (the async_db fixture) need pytest-asyncio too: "pytest-asyncio>=1.0".
    # Install what your own code needs here too, for example: session.install("-e", ".")
    # tests/integration: your isolation_test_paths. pytest looks there when the arguments
    # after -- name no tests of their own (nox -s integration -- tests/test_x.py -x).
    session.run("pytest", "-o", "testpaths=tests/integration", *session.posargs)
