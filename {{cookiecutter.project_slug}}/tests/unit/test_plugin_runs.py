"""The plugin in whole pytest runs of small suites: markers other plugins add, fixtures
that outlive a test, and the databases ``--isolation-keep-failed`` saves."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

PLUGIN_THAT_MARKS = """
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "marked_late" in item.name:
            item.add_marker(pytest.mark.isolated)
"""

TESTS_MARKED_LATE = """
from tests.setup_integration import get_db_client


def test_marked_late():
    assert get_db_client().execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
"""

SESSION_CONNECTION = """
import sqlite3

import pytest

pytestmark = pytest.mark.isolated


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    conn = sqlite3.connect(tmp_path_factory.mktemp("reference") / "reference.db")
    yield conn
    conn.close()


def test_first(reference, db):
    assert reference.execute("SELECT 1").fetchone() == (1,)


def test_second(reference, db):
    assert reference.execute("SELECT 2").fetchone() == (2,)
"""

FAILED_TESTS = """
import os
import sqlite3

import pytest

pytestmark = pytest.mark.isolated
OWN_CONNECTIONS = []


def add_user(db, name):
    db.execute("INSERT INTO users (email, name) VALUES (?, ?)", [f"{name}@example.com", name])


@pytest.fixture
def breaks_at_teardown(db):
    yield
    raise RuntimeError("teardown broke")


def test_teardown_fails(breaks_at_teardown, db):
    add_user(db, "teardown")


@pytest.mark.parametrize("name", ["a/b", "a b"])
def test_collide(db, name):
    add_user(db, name)
    assert False


def test_own_connection():
    conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    OWN_CONNECTIONS.append(conn)  # still open when the test ends: a file's commit is in the WAL
    conn.execute("INSERT INTO users (email, name) VALUES ('own@example.com', 'own')")
    conn.commit()
    assert False
"""


def run_suite(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a test module with the plugin, confined to ``tmp_path`` (where a
    plugin of the test's own can be written: ``args`` come first, so a ``-p`` there is
    registered before the isolation plugin)."""
    (tmp_path / "test_suite.py").write_text(source)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        f"isolation_migrations_dir = {PROJECT_ROOT / 'migrations'}\n"
        f"isolation_data_dir = {tmp_path / 'data'}\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)])
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += [*args, "-p", "tests.setup_integration", "-p", "tests.isolation_reporter"]
    command += ["-c", str(tmp_path / "pytest.ini")]
    command.append(str(tmp_path / "test_suite.py"))
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_marker_another_plugin_adds_at_collection_counts(tmp_path: Path) -> None:
    """Which tests are isolated is decided after every other plugin has marked its tests,
    even one registered before the isolation plugin (whose hook would otherwise run last)."""
    (tmp_path / "marking_plugin.py").write_text(PLUGIN_THAT_MARKS)
    child = run_suite(tmp_path, TESTS_MARKED_LATE, "-p", "marking_plugin")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "1 passed" in child.stdout


def test_a_session_fixtures_connection_is_not_the_first_tests_leak(tmp_path: Path) -> None:
    """Opened while the first test is set up, it stays open for the second, and strict mode
    (which fails on any leak) has nothing to report."""
    child = run_suite(tmp_path, SESSION_CONNECTION, "--isolation-strict")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "2 passed" in child.stdout


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_every_failed_test_keeps_its_own_database_with_its_data(
    tmp_path: Path, strategy: str
) -> None:
    child = run_suite(
        tmp_path, FAILED_TESTS, "--isolation-keep-failed", "--isolation-strategy", strategy
    )
    assert child.returncode == 1, child.stdout + child.stderr
    kept = re.findall(r"Kept database of a failed test: (\S+)", child.stdout)
    assert len(kept) == 4, child.stdout
    assert len(set(kept)) == 4, kept  # test_collide[a/b] and [a b] do not overwrite each other
    names = set()
    for path in kept:
        with closing(sqlite3.connect(path)) as conn:
            names |= {name for (name,) in conn.execute("SELECT name FROM users")}
    # a teardown failure is a failure; a commit still in the WAL is kept too
    assert names == {"teardown", "a/b", "a b", "own"}
