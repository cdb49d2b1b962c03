"""The developer's own database and credentials are never used by a test run.

Runs a small part of the integration suite in a child pytest with a developer-style
environment (a DATABASE_URL file, Turso credentials) and checks nothing touched them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHILD_TESTS = [
    "tests/integration/test_isolation_verification.py",
    "tests/integration/test_order_workflow.py",
    "tests/integration/test_emergency_cleanup.py",
]


def test_integration_run_never_touches_the_developers_database(tmp_path: Path) -> None:
    dev_db = tmp_path / "dev.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.update(
        DATABASE_URL=f"file:{dev_db}",
        TURSO_DATABASE_URL="libsql://developer.example.turso.io",
        TURSO_AUTH_TOKEN="developer-token",
    )
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHILD_TESTS],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert " passed" in child.stdout
    assert not dev_db.exists()
    assert not list(tmp_path.iterdir())
