"""The developer's own database and credentials are never used by a test run.

Runs isolated tests that reach the database every way application code does in a child
pytest with a developer-style environment (a DATABASE_URL file, Turso credentials) and
checks nothing touched them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Tables of their own: they run on whatever schema the project's migrations hold.
CHILD_TESTS = """
import os
import sqlite3

import pytest

from lib.database import DatabaseAccessBlockedError, get_database_client, reset_database_instance

pytestmark = pytest.mark.isolated


def test_writes_through_every_way_in(db):
    db.execute("CREATE TABLE notes (body TEXT)")
    get_database_client().execute("INSERT INTO notes VALUES ('application')")
    own = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    own.execute("INSERT INTO notes VALUES ('own connection')")
    own.commit()
    own.close()
    reset_database_instance()
    assert get_database_client().execute("SELECT count(*) FROM notes").rows[0][0] == 2


def test_no_database_after_an_emergency_cleanup(isolation_manager):
    isolation_manager.emergency_cleanup()
    with pytest.raises(DatabaseAccessBlockedError, match="has no database"):
        get_database_client()
"""


def test_integration_run_never_touches_the_developers_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dev_db = home / "dev.db"
    (tmp_path / "test_child.py").write_text(CHILD_TESTS)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.update(
        DATABASE_URL=f"file:{dev_db}",
        TURSO_DATABASE_URL="libsql://developer.example.turso.io",
        TURSO_AUTH_TOKEN="developer-token",
    )
    # The project's configuration and the plugins its root conftest.py registers.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--rootdir", str(PROJECT_ROOT), "-c", str(PROJECT_ROOT / "pyproject.toml")]
    command += ["-p", "tests.setup_integration", "-p", "tests.isolation_reporter"]
    command.append(str(tmp_path / "test_child.py"))
    child = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert "2 passed" in child.stdout
    assert not list(home.iterdir())
