"""The plugin in whole pytest runs of small suites: markers other plugins add, fixtures
that outlive a test, and the databases ``--isolation-keep-failed`` saves."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from lib.scope_databases import RUNS_DIR_NAME
from tests.unit.holding import run_directory_held_by_another_process
from tests.unit.own_schema import MIGRATIONS_DIR

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

SESSION_CLIENT = """
import pytest

from lib.database import AsyncDatabaseClient, get_database_client

pytestmark = pytest.mark.isolated


@pytest.fixture(scope="module")
def kept_client():
    return get_database_client()


@pytest.fixture(scope="session")
def kept_async_client():
    yield AsyncDatabaseClient(get_database_client())


@pytest.fixture(scope="session")
def settings():
    return {"unhashable": ["values", "are", "fine"]}


def test_first(kept_client):
    pass


def test_second(kept_client):
    pass


def test_async(kept_async_client):
    pass


def test_settings(settings):
    assert settings["unhashable"]
"""

OUTLIVING_SCOPE_FIXTURE = """
import pytest

from tests.setup_integration import get_test_isolation_manager

pytestmark = pytest.mark.isolated


@pytest.fixture(scope="module")
def shared_client():
    manager = get_test_isolation_manager()
    scope = manager.create_scope("shared by the module", auto_cleanup=False)
    yield manager.get_scoped_database_client(scope)
    manager.destroy_scope(scope)


def test_first(shared_client):
    shared_client.execute("INSERT INTO users (email, name) VALUES ('a@b.c', 'A')")


def test_second(shared_client):
    assert shared_client.execute("SELECT COUNT(*) FROM users").rows[0][0] == 1
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


def child_environment(tmp_path: Path) -> dict[str, str]:
    """This environment without pytest's variables, importing from ``tmp_path`` and the
    project."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)])
    return env


def run_suite(
    tmp_path: Path, source: str, *args: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a test module with the plugin, confined to ``tmp_path`` (where a
    plugin of the test's own can be written: ``args`` come first, so a ``-p`` there is
    registered before the isolation plugin), with ``environ`` added to the environment."""
    command, env = suite_command(tmp_path, source, *args, environ=environ)
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def suite_command(
    tmp_path: Path, source: str, *args: str, environ: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and environment :func:`run_suite` runs, for a test that watches the run
    as it goes."""
    (tmp_path / "test_suite.py").write_text(source)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        f"isolation_migrations_dir = {MIGRATIONS_DIR}\n"
        f"isolation_data_dir = {tmp_path / 'data'}\n"
    )
    env = {**child_environment(tmp_path), **(environ or {})}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"]
    command += [*args, "-p", "tests.setup_integration", "-p", "tests.isolation_reporter"]
    command += ["-c", str(tmp_path / "pytest.ini")]
    command.append(str(tmp_path / "test_suite.py"))
    return command, env


def test_a_marker_another_plugin_adds_at_collection_counts(tmp_path: Path) -> None:
    """Which tests are isolated is decided after every other plugin has marked its tests,
    even one registered before the isolation plugin (whose hook would otherwise run last)."""
    (tmp_path / "marking_plugin.py").write_text(PLUGIN_THAT_MARKS)
    child = run_suite(tmp_path, TESTS_MARKED_LATE, "-p", "marking_plugin")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "1 passed" in child.stdout


UNMARKED_TESTS = """
def test_one(db):
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0


def test_two(db):
    assert db.execute("SELECT COUNT(*) FROM products").rows[0][0] == 0
"""


@pytest.mark.parametrize(
    ("selection", "summary"), [("isolated", "2 passed"), ("not isolated", "2 deselected")]
)
def test_tests_isolated_by_their_path_are_selected_by_the_marker(
    tmp_path: Path, selection: str, summary: str
) -> None:
    """The marker is there before pytest selects: ``-m isolated`` runs them all."""
    child = run_suite(tmp_path, UNMARKED_TESTS, "-o", "isolation_test_paths=.", "-m", selection)
    assert summary in child.stdout, child.stdout + child.stderr


def test_a_session_fixtures_connection_is_not_the_first_tests_leak(tmp_path: Path) -> None:
    """Opened while the first test is set up, it stays open for the second, and strict mode
    (which fails on any leak) has nothing to report."""
    child = run_suite(tmp_path, SESSION_CONNECTION, "--isolation-strict")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "2 passed" in child.stdout


WIDER_FIXTURE_WITH_A_DATABASE_OF_ITS_OWN = """
import sqlite3
import threading

import pytest

pytestmark = pytest.mark.isolated


def touch(path):
    sqlite3.connect(path).close()


@pytest.fixture(scope="module")
def cache():
    touch("cache.db")
    server = threading.Thread(target=touch, args=["server.db"])  # a server of the fixture's
    server.start()
    server.join()
    yield
    touch("cache.db")


def test_one(cache, db):
    pass


def test_two(cache, db):
    pass
"""


def test_a_wider_fixture_may_open_a_database_of_its_own_in_its_setup_and_teardown(
    tmp_path: Path,
) -> None:
    """Not the test's database, nor a scratch file, yet not refused: the fixture's, set up
    in the first test and torn down in the last, and its server thread's."""
    child = run_suite(tmp_path, WIDER_FIXTURE_WITH_A_DATABASE_OF_ITS_OWN)
    assert child.returncode == 0, child.stdout + child.stderr
    assert "2 passed" in child.stdout
    assert "refused" not in child.stdout


def test_a_wider_fixture_keeping_a_tests_client_is_an_error_in_every_test_using_it(
    tmp_path: Path,
) -> None:
    """Not only in the second test that gets the closed client: the outcome must not depend
    on the order of the tests or on how xdist shares them out."""
    child = run_suite(tmp_path, SESSION_CLIENT, "-rN")  # errors counted in their sections
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 passed, 3 errors" in child.stdout
    assert child.stdout.count("IsolationError: the module-scoped fixture 'kept_client'") == 2
    message = "IsolationError: the session-scoped fixture 'kept_async_client' returned the "
    assert message in child.stdout
    assert "test_suite.py::test_first), which closes when that test ends" in child.stdout
    assert "CLIENT_CLOSED:" not in child.stdout


def test_a_wider_fixture_may_keep_the_client_of_a_scope_allowed_to_outlive_its_test(
    tmp_path: Path,
) -> None:
    child = run_suite(tmp_path, OUTLIVING_SCOPE_FIXTURE, "--isolation-strict")
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
    assert f"{kept[-1]}\nThe next run that isolates tests (any run with xdist workers)" in (
        child.stdout
    )
    names = set()
    for path in kept:
        with closing(sqlite3.connect(path)) as conn:
            names |= {name for (name,) in conn.execute("SELECT name FROM users")}
    # a teardown failure is a failure; a commit still in the WAL is kept too
    assert names == {"teardown", "a/b", "a b", "own"}


def test_a_run_keeps_the_databases_a_run_still_going_kept(tmp_path: Path) -> None:
    """A run starting deletes what earlier runs kept, but not what a live run kept since
    it began (its alive file's time), which it has just printed the path of."""
    runs = tmp_path / "data" / ".isolation"
    live = runs / "1-0000"  # pid 1: a run in a container, as pytest often is there
    with run_directory_held_by_another_process(live):
        now = time.time()
        os.utime(live / ".alive", (now - 100, now - 100))
        (runs / "kept").mkdir()
        earlier, since = runs / "kept" / "earlier.db", runs / "kept" / "since.db"
        for path, age in ((earlier, 200), (since, 50)):
            path.touch()
            os.utime(path, (now - age, now - age))
        child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", "isolation_use_dev_shm=false")
        assert child.returncode == 0, child.stdout + child.stderr
        assert not earlier.exists()
        assert since.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the template cache is locked with flock")
def test_waiting_for_another_run_building_the_template_is_said(tmp_path: Path) -> None:
    """Another run holds the template cache's lock (building, or stopped with Ctrl-Z)."""
    lock = tmp_path / "data" / ".isolation" / "templates" / ".lock"
    lock.parent.mkdir(parents=True)
    notice = "isolation: still preparing the template database after 2s"
    hold = (  # until its stdin closes, or 30 s at most should the notice never come
        "import fcntl, select, sys\n"
        f"handle = open({str(lock)!r}, 'a')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "select.select([sys.stdin], [], [], 30)\n"
    )
    command, env = suite_command(tmp_path, ONE_ISOLATED_TEST, "-o", "isolation_use_dev_shm=false")
    with subprocess.Popen(
        [sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "held"
            with subprocess.Popen(
                command,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ) as child:
                assert child.stdout is not None
                seen = []
                for line in child.stdout:  # the child waits for the lock: read up to the notice
                    seen.append(line)
                    if notice in line:
                        break
                holder.stdin.close()  # let go
                output = "".join(seen) + child.communicate(timeout=120)[0]
        finally:
            holder.kill()
    assert child.returncode == 0, output
    assert notice in output
    assert f"holds {lock}" in output


BROKEN_MIGRATION = "CREATE TABLE refunds (id INTEGER PRIMARY KEY);\nINSERT INTO nowhere VALUES (1);"


def broken_migrations(tmp_path: Path) -> Path:
    """A migrations directory whose one migration fails at its second statement."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_refunds.sql").write_text(BROKEN_MIGRATION)
    return migrations


FAILED_START = """
import os
import sys

import pytest

from lib import database

code = pytest.main(sys.argv[1:], plugins=[])
print("exit", int(code))
print("DATABASE_URL", os.environ.get("DATABASE_URL"))
print("TURSO_AUTH_TOKEN", os.environ.get("TURSO_AUTH_TOKEN"))
client = database.get_database_client()  # blocked during a session, free after it
print("rows", client.execute("SELECT 1").rows[0][0])
database.reset_database_instance()
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two workers"])
def test_a_broken_migration_stops_the_run_with_one_clear_error_and_restores_the_environment(
    tmp_path: Path, workers: list[str]
) -> None:
    """Not an INTERNALERROR traceback, and not a process left pointing at ``:memory:``, with
    Turso credentials gone and the database blocked: found once the isolated tests are
    collected, or under xdist at the session's start (whose end pytest then skips)."""
    migrations = broken_migrations(tmp_path)
    (tmp_path / "test_suite.py").write_text(ONE_ISOLATED_TEST)
    developer_db = tmp_path / "dev.db"
    env = child_environment(tmp_path)
    env |= {"DATABASE_URL": f"file:{developer_db}", "TURSO_AUTH_TOKEN": "secret"}
    command = [sys.executable, "-c", FAILED_START, "-p", "no:cacheprovider"]
    command += ["-p", "no:randomly", "-p", "tests.setup_integration"]
    command += ["-o", f"isolation_migrations_dir={migrations}"]
    command += ["-o", f"isolation_data_dir={tmp_path / 'data'}", *workers]
    command.append(str(tmp_path / "test_suite.py"))
    child = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = child.stdout + child.stderr
    assert child.returncode == 0, output
    assert "INTERNALERROR" not in output
    assert "ERROR: cannot build the template database" in output
    assert "0001_refunds.sql" in output
    setting = "the isolation_migrations_dir setting, set with -o, on the command line or in"
    assert f"Fix that migration in {migrations} ({setting} PYTEST_ADDOPTS)." in output
    assert "exit 4" in output  # pytest's usage error
    assert f"DATABASE_URL file:{developer_db}" in output
    assert "TURSO_AUTH_TOKEN secret" in output
    assert "rows 1" in output


@pytest.mark.parametrize(
    ("strategy", "option", "error"),
    [
        ("disk", "-v", "ISOLATION_STRATEGY"),  # found at configure
        ("file", "--no-such-option", "unrecognized arguments: --no-such-option"),  # parsing
    ],
    ids=["bad strategy", "unknown option"],
)
def test_a_run_stopped_before_its_session_leaves_the_database_free(
    tmp_path: Path, strategy: str, option: str, error: str
) -> None:
    """``pytest.main()`` in a script: a usage error, before pytest configures its plugins
    or while it does, leaves the process's database as free as the plugin found it."""
    (tmp_path / "test_suite.py").write_text(ONE_ISOLATED_TEST)
    env = child_environment(tmp_path) | {"DATABASE_URL": f"file:{tmp_path / 'dev.db'}"}
    env["ISOLATION_STRATEGY"] = strategy
    command = [sys.executable, "-c", FAILED_START, "-p", "no:cacheprovider", option]
    command += ["-p", "tests.setup_integration", str(tmp_path / "test_suite.py")]
    child = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = child.stdout + child.stderr
    assert child.returncode == 0, output
    assert error in output
    assert "exit 4" in output
    assert "rows 1" in output


def test_the_libsql_driver_without_libsql_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one "needs the libsql package" failure per test."""
    (tmp_path / "without_libsql.py").write_text('import sys\n\nsys.modules["libsql"] = None\n')
    monkeypatch.setenv("DATABASE_DRIVER", "libsql")
    child = run_suite(tmp_path, TESTS_MARKED_LATE, "-p", "without_libsql")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "ERROR: DATABASE_DRIVER=libsql needs the libsql package" in child.stderr
    assert "INTERNALERROR" not in child.stderr


ONE_ISOLATED_TEST = """
import pytest

pytestmark = pytest.mark.isolated


def test_one(db):
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
"""


SEES_ITS_STRATEGY = """
import os

import pytest

pytestmark = pytest.mark.isolated


def test_strategy(db):
    memory = "vfs=memdb" in os.environ["DATABASE_URL"]
    assert ("memory" if memory else "file") == os.environ["EXPECTED_STRATEGY"]
"""


@pytest.mark.parametrize(
    ("variable", "args", "expected"),
    [
        ("MEMORY", ["-o", "isolation_strategy=file"], "memory"),  # any case; over the ini
        ("memory", ["--isolation-strategy", "File"], "file"),  # the option over the variable
        (None, ["--isolation-strategy", "disk"], "argument --isolation-strategy: invalid"),
        (None, ["-o", "isolation_strategy=Memory"], "memory"),
        ("", [], "ISOLATION_STRATEGY is '', not one of file, memory"),
        (None, ["-o", "isolation_strategy=disk"], "isolation_strategy setting is 'disk', not"),
    ],
    ids=["variable", "option", "bad option", "ini", "empty variable", "bad ini"],
)
def test_the_strategy_comes_from_the_option_the_variable_or_the_ini_setting(
    tmp_path: Path, variable: str | None, args: list[str], expected: str
) -> None:
    """Each source, in that order of precedence; a bad value is an error naming where it
    was set (an empty variable too, as an empty DATABASE_DRIVER is)."""
    command, env = suite_command(tmp_path, SEES_ITS_STRATEGY, *args)
    env.pop("ISOLATION_STRATEGY", None)
    if variable is not None:
        env["ISOLATION_STRATEGY"] = variable
    env["EXPECTED_STRATEGY"] = expected
    child = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if expected in ("file", "memory"):
        assert child.returncode == 0, child.stdout + child.stderr
    else:
        assert child.returncode == 4, child.stdout + child.stderr
        assert expected in child.stderr


def baseline_file(tmp_path: Path, error: float, min_tests: int = 0) -> str:
    """A baseline whose average test duration warns above 1 µs and fails above ``error`` µs."""
    path = tmp_path / "baseline.json"
    limits = {"baseline": 0.001, "warning": 1.0, "error": error}
    metrics = {"average_test_duration_ms": limits}
    path.write_text(json.dumps({"min_tests_for_averages": min_tests, "metrics": metrics}))
    return f"isolation_performance_baseline={path}"


def test_a_regression_of_severity_error_fails_the_run_and_says_so(tmp_path: Path) -> None:
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", baseline_file(tmp_path, 1.0))
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 passed" in child.stdout
    assert re.search(r"average_test_duration_ms +[\d.]+ +0\.00 +0\.00 +error", child.stdout)
    assert "performance regressions of severity error fail this run" in child.stdout
    assert "baseline.json, the isolation_performance_baseline setting" in child.stdout


def test_a_regression_of_severity_warning_is_reported_only(tmp_path: Path) -> None:
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", baseline_file(tmp_path, 1e9))
    assert child.returncode == 0, child.stdout + child.stderr
    assert re.search(r"average_test_duration_ms +[\d.]+ +0\.00 +[\d.]+ +warning", child.stdout)
    assert "fail this run" not in child.stdout


def test_averages_of_too_few_tests_are_not_judged(tmp_path: Path) -> None:
    """One slow test picked with ``-k`` does not fail the run as a slow suite would."""
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", baseline_file(tmp_path, 1.0, 2))
    assert child.returncode == 0, child.stdout + child.stderr
    assert "Averages not checked: fewer than 2 isolated tests ran" in child.stdout
    assert "No performance regressions detected" in child.stdout


def test_a_baseline_of_warnings_only_is_judged(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    metrics = {"average_test_duration_ms": {"baseline": 0.001, "warning": 1.0}}
    path.write_text(json.dumps({"metrics": metrics}))
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_performance_baseline={path}")
    assert child.returncode == 0, child.stdout + child.stderr
    assert re.search(r"average_test_duration_ms +[\d.]+ +0\.00 +0\.00 +warning", child.stdout)


@pytest.mark.parametrize(
    ("baseline", "problem"),
    [
        (
            {"metrics": {"average_test_duration_ms": {"baseline": "50", "error": 4}}},
            "under 'baseline'",
        ),
        (
            {"metrics": {"average_test_duration_ms": {"baseline": 50}}},
            "under 'warning', 'error' or both",
        ),
        (
            {"metrics": {"avg_duration": {"baseline": 50, "error": 4}}},
            "unknown metric 'avg_duration'",
        ),
        ({"slow_tests_ms": 100, "metrics": {}}, "unknown entry 'slow_tests_ms'"),
        (
            {"metrics": {"max_test_duration_ms": {"baseline": 1, "warning": 1.5, "eror": 3}}},
            "metrics.max_test_duration_ms: unknown entry 'eror'",
        ),
    ],
)
def test_a_broken_baseline_stops_the_run_before_the_tests(
    tmp_path: Path, baseline: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_performance_baseline={path}")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "baseline.json (isolation_performance_baseline): " in child.stderr
    assert problem in child.stderr
    assert "Traceback" not in child.stdout + child.stderr


def test_a_baseline_path_that_does_not_exist_stops_the_run_before_the_tests(
    tmp_path: Path,
) -> None:
    """A typo in the path must not turn the regression check off without a word."""
    setting = f"isolation_performance_baseline={tmp_path / 'baseline.jsn'}"
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", setting)
    assert child.returncode == 4, child.stdout + child.stderr
    assert "baseline.jsn (isolation_performance_baseline) does not exist" in child.stderr
    assert "set isolation_performance_baseline to an empty value" in child.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "(isolation_performance_baseline) is not a file"), (b"\xff\xfe\xff", "not valid JSON")],
    ids=["a-directory", "not-utf8"],
)
def test_a_baseline_that_is_a_directory_or_not_text_stops_the_run_before_the_tests(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "baseline.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_performance_baseline={path}")
    assert child.returncode == 4, child.stdout + child.stderr
    assert problem in child.stderr
    assert "Traceback" not in child.stdout + child.stderr


def test_a_missing_default_baseline_is_reported_as_not_checked(tmp_path: Path) -> None:
    child = run_suite(tmp_path, ONE_ISOLATED_TEST)  # its pytest.ini sets no baseline
    assert child.returncode == 0, child.stdout + child.stderr
    assert (
        "Performance regressions not checked: tests/performance-baseline.json does not exist"
        in child.stdout
    )


def test_an_empty_baseline_setting_turns_the_check_off(tmp_path: Path) -> None:
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", "isolation_performance_baseline=")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "1 passed" in child.stdout
    assert "Isolation Metrics Report" in child.stdout
    assert "performance regressions" not in child.stdout.lower()


CHATTY_TEST = """
import logging

import pytest

pytestmark = pytest.mark.isolated


def test_one(db):
    logging.getLogger("chatty.client").debug("a library's debug line")
    logging.getLogger("chatty.client").warning("a library's warning")
    db.execute("SELECT 1")
"""


def test_debug_isolation_shows_its_own_loggers_live_and_no_others_debug(tmp_path: Path) -> None:
    """The names in any case, with a space after the comma, as people write them."""
    child = run_suite(tmp_path, CHATTY_TEST, environ={"DEBUG": "Isolation, database"})
    assert child.returncode == 0, child.stdout + child.stderr
    assert "client closed: " in child.stdout  # the database logger's
    created = re.search(r"scope created: test_\S+ for \S+test_one at (\S+)", child.stdout)
    assert created, child.stdout
    assert created.group(1).startswith("file:")  # where the test's database is
    assert "a library's warning" in child.stdout
    assert "a library's debug line" not in child.stdout


def test_a_report_path_that_cannot_be_written_stops_the_run_before_the_tests(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.txt").write_text("")
    for report, problem in [
        (tmp_path, "it is a directory"),
        (tmp_path / "notes.txt" / "report.json", f"{tmp_path / 'notes.txt'} is not a directory"),
    ]:
        child = run_suite(tmp_path, ONE_ISOLATED_TEST, f"--isolation-report={report}")
        assert child.returncode == 4, child.stdout + child.stderr
        assert f"--isolation-report={report}: {problem}" in child.stderr


def test_a_step_summary_that_cannot_be_written_fails_the_run_after_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing" / "summary.md"))
    child = run_suite(tmp_path, ONE_ISOLATED_TEST)
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 passed" in child.stdout
    assert "Isolation Metrics Report" in child.stdout
    assert "could not write the step summary (GITHUB_STEP_SUMMARY): [Errno 2]" in child.stdout
    assert "Traceback" not in child.stdout + child.stderr


LEAK_THEN_EXIT = """
import os
import sqlite3

import pytest

pytestmark = pytest.mark.isolated
KEPT = []


def test_leaks_a_connection():
    KEPT.append(sqlite3.connect(os.environ["DATABASE_URL"], uri=True))


def test_stops_the_run(db):
    pytest.exit("stopped", returncode=7)
"""


FAILS_BEFORE_ITS_CLOSE = """
import os
import sqlite3

import pytest

pytestmark = pytest.mark.isolated


def test_fails_before_closing_its_connection():
    conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    assert conn.execute("SELECT 1").fetchone() == (2,)
    conn.close()


def test_fails_in_a_helper_before_its_close():
    conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    check(conn)
    conn.close()


def check(conn):
    raise ValueError("a helper failed")


@pytest.mark.xfail(reason="expected to fail", strict=True)
def test_is_expected_to_fail_before_its_close():
    conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    check(conn)
    conn.close()


def look_up():
    conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    {}["missing"]
    conn.close()


def test_fails_with_an_error_raised_from_another():
    try:
        look_up()
    except KeyError:  # the context, the cause being another
        raise LookupError("not found") from ValueError("no such key")


def test_fails_with_a_group_of_errors():
    errors = []
    try:
        look_up()
    except KeyError as error:
        errors.append(error)
    raise ExceptionGroup("the lookups failed", errors)
"""


def test_a_failed_tests_own_connections_are_not_its_leaks(tmp_path: Path) -> None:
    """pytest keeps a failed test's traceback (sys.last_traceback, for post-mortem
    debugging), and with it the test's local variables: a connection that the test would
    have closed after the failing line is no leak, as it is none when the test passes
    without closing it. Only the failures fail the run, strict as it is."""
    report = tmp_path / "report.json"
    child = run_suite(
        tmp_path, FAILS_BEFORE_ITS_CLOSE, "--isolation-strict", f"--isolation-report={report}"
    )
    output = child.stdout + child.stderr
    assert "4 failed, 1 xfailed" in output, output
    assert "leak detected" not in output, output
    assert "connection leak in" not in output, output
    assert "strict mode" not in output, output
    assert json.loads(report.read_text())["summary"]["connection_leaks"] == 0


def test_pdb_still_sees_a_failed_tests_connection(tmp_path: Path) -> None:
    """The test's local variables are let go of only after ``--pdb`` has had its look."""
    command, env = suite_command(
        tmp_path, FAILS_BEFORE_ITS_CLOSE, "--pdb", "-k", "closing or helper"
    )
    looks = "p conn\nc\n" * 2
    child = subprocess.run(
        command, cwd=tmp_path, env=env, input=looks, capture_output=True, text=True, timeout=120
    )
    output = child.stdout + child.stderr
    assert "2 failed" in output, output
    assert output.count("(Pdb) <sqlite3.Connection object at ") == 2, output
    assert "leak detected" not in output, output


def test_strict_mode_keeps_an_exit_code_other_than_success(tmp_path: Path) -> None:
    """Only a run that would pass is failed by a leak: "interrupted" and the like stay."""
    report = tmp_path / "report.json"
    child = run_suite(
        tmp_path, LEAK_THEN_EXIT, "--isolation-strict", f"--isolation-report={report}"
    )
    assert child.returncode == 7, child.stdout + child.stderr
    assert json.loads(report.read_text())["summary"]["connection_leaks"] == 1


def test_a_broken_migration_under_xdist_is_one_error_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    migrations = broken_migrations(tmp_path)
    setting = f"isolation_migrations_dir={migrations}"
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-n", "2", "-o", setting)
    assert child.returncode == 4, child.stdout + child.stderr
    assert "ERROR: cannot build the template database" in child.stderr
    assert "0001_refunds.sql" in child.stderr
    assert "Traceback" not in child.stdout + child.stderr


UNIT_TEST = """
def test_unit():
    assert 1 + 1 == 2
"""

MIXED_TESTS = """
import pytest


@pytest.mark.isolated
def test_isolated(db):
    assert db.execute("SELECT 1").rows[0][0] == 1


def test_unit():
    assert 1 + 1 == 2
"""

# A plugin for run_suite's -p: sqlite-utils is then missing, as if not installed.
WITHOUT_SQLITE_UTILS = "import sys\n\nsys.modules['sqlite_utils'] = None\n"

# Deselects as --lf does: after every other plugin has seen the collected tests.
DESELECT_ISOLATED = """
import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config, items):
    yield
    deselected = [item for item in items if item.get_closest_marker("isolated")]
    items[:] = [item for item in items if item not in deselected]
    config.hook.pytest_deselected(items=deselected)
"""


def test_a_run_of_unit_tests_alone_builds_nothing_and_needs_no_sqlite_utils(
    tmp_path: Path,
) -> None:
    """No isolated test, no template: nothing written, as when only collecting."""
    (tmp_path / "without_sqlite_utils.py").write_text(WITHOUT_SQLITE_UTILS)
    (tmp_path / "deselect_isolated.py").write_text(DESELECT_ISOLATED)
    for suite, args in [
        (UNIT_TEST, ["-p", "without_sqlite_utils"]),
        (ONE_ISOLATED_TEST, ["--collect-only"]),
        (MIXED_TESTS, ["-p", "deselect_isolated"]),
    ]:
        child = run_suite(tmp_path, suite, *args)
        assert child.returncode == 0, child.stdout + child.stderr
        assert not (tmp_path / "data").exists(), args


NOTHING_ISOLATED = "no test of this run is isolated: isolation_test_paths is unset, so its default"
# A plugin for run_suite's -p: a project's own hook marks its database tests isolated.
MARKS_ISOLATED = """
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "db" in item.name:
            item.add_marker(pytest.mark.isolated)
"""


def test_a_run_that_isolates_nothing_for_want_of_tests_integration_says_so(
    tmp_path: Path,
) -> None:
    """A repository adopting the plugin, with its tests elsewhere than the default path
    and none marked: no test gets a database, and the failures do not say why. Said also
    where warnings are errors (shown, not raised: raised, it would crash the run), and by
    one xdist worker only. Not said while only collecting, nor when a collected test is
    marked (deselected with -k: a project that marks its tests, with the decorator or a
    hook of its own, and runs others), nor when the setting is empty, nor once
    tests/integration exists."""
    child = run_suite(tmp_path, UNIT_TEST)
    assert child.returncode == 0, child.stdout + child.stderr
    assert f"IsolationWarning: {NOTHING_ISOLATED}, tests/integration," in child.stdout
    child = run_suite(tmp_path, UNIT_TEST, "-W", "error")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "this warning stops (found at collection: shown, not raised)" in child.stdout
    child = run_suite(tmp_path, UNIT_TEST + UNIT_TEST.replace("unit", "other"), "-n", "2")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "2 passed, 1 warning in" in child.stdout, child.stdout
    (tmp_path / "marks_isolated.py").write_text(MARKS_ISOLATED)
    marked_by_a_plugin = UNIT_TEST + "\n\ndef test_db_thing():\n    pass\n"
    for suite, args in [
        (UNIT_TEST, ["--collect-only"]),
        (MIXED_TESTS, ["-k", "unit"]),
        (marked_by_a_plugin, ["-p", "marks_isolated", "-k", "unit"]),
        (UNIT_TEST, ["-o", "isolation_test_paths="]),
    ]:
        child = run_suite(tmp_path, suite, *args)
        assert child.returncode == 0, child.stdout + child.stderr
        assert NOTHING_ISOLATED not in child.stdout, args
    (tmp_path / "tests" / "integration").mkdir(parents=True)
    child = run_suite(tmp_path, UNIT_TEST)
    assert child.returncode == 0, child.stdout + child.stderr
    assert NOTHING_ISOLATED not in child.stdout


def test_a_missing_sqlite_utils_is_one_error_naming_it(tmp_path: Path) -> None:
    """A session without the project's dependencies cannot build the template."""
    (tmp_path / "without_sqlite_utils.py").write_text(WITHOUT_SQLITE_UTILS)
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-p", "without_sqlite_utils")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "the migrations run with sqlite_utils, which is not installed here" in child.stderr
    assert "uv sync --group test" in child.stderr
    assert "INTERNALERROR" not in child.stdout + child.stderr


def test_a_data_directory_that_cannot_be_written_is_one_error_naming_the_setting(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_data_dir={data}")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "cannot prepare the isolated tests' databases: [Errno 20] Not a directory" in (
        child.stderr
    )
    assert f"The isolation_data_dir setting (now {data}) must be a directory" in child.stderr
    assert "INTERNALERROR" not in child.stdout + child.stderr


def test_a_data_directory_sqlite_cannot_open_a_file_in_is_one_error_naming_the_setting(
    tmp_path: Path,
) -> None:
    """Python makes the directories, SQLite cannot open a file there (here: a path longer
    than its limit of 512 bytes, as a directory it may not write does as another user)."""
    data = tmp_path.joinpath(*["d" * 200] * 3, "data")
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_data_dir={data}")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "cannot prepare the isolated tests' databases: cannot open the SQLite database" in (
        child.stderr
    )
    assert f"The isolation_data_dir setting (now {data}) must be a directory" in child.stderr
    assert "INTERNALERROR" not in child.stdout + child.stderr


@pytest.mark.parametrize("name", ["isolation_use_dev_shm", "isolation_strict"])
def test_a_true_or_false_setting_pytest_cannot_read_is_an_error_naming_it(
    tmp_path: Path, name: str
) -> None:
    """pytest's own error names only the value; in an ini file quotes are part of it."""
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f'{name}="false"')
    assert child.returncode == 4, child.stdout + child.stderr
    assert f"""{name}: invalid truth value '"false"': write true or false""" in child.stderr
    assert "INTERNALERROR" not in child.stdout + child.stderr


@pytest.mark.parametrize("where", ["ini", "-o"])
def test_a_missing_migrations_directory_says_where_the_schema_goes(
    tmp_path: Path, where: str
) -> None:
    """The hint names where the setting was made: the one configuration file pytest read,
    or a ``-o``, which wins over it."""
    missing = tmp_path / "db" / "migrations"
    override = ["-o", f"isolation_migrations_dir={missing}"] if where == "-o" else []
    command, env = suite_command(tmp_path, ONE_ISOLATED_TEST, *override)
    ini = tmp_path / "pytest.ini"
    if where == "ini":
        setting = f"isolation_migrations_dir = {MIGRATIONS_DIR}"
        ini.write_text(ini.read_text().replace(setting, f"isolation_migrations_dir = {missing}"))
    child = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 4, child.stdout + child.stderr
    assert f"migrations directory {missing} does not exist" in child.stderr
    assert "put the schema there as ordered *.sql migration files" in child.stderr
    made = f"in {ini}"
    if where == "-o":
        made = "set with -o, on the command line or in PYTEST_ADDOPTS"
    assert f"Set isolation_migrations_dir to the directory of the migrations ({made})." in (
        child.stderr
    )


def test_a_migrations_directory_of_another_tool_is_refused_not_an_empty_schema(
    tmp_path: Path,
) -> None:
    """Alembic's ``migrations/`` (Python files, no SQL) would give every test a database
    without tables: the run stops before the first test, naming what it found there."""
    migrations = tmp_path / "alembic"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text("")
    (migrations / "versions" / "1a2b_create_users.py").write_text("")
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_migrations_dir={migrations}")
    assert child.returncode == 4, child.stdout + child.stderr
    assert (
        f"migrations directory {migrations} holds Alembic's Python migrations (it holds "
        "env.py, versions/), which are not run: write their SQL into a directory of its own "
        "(alembic upgrade head --sql > db/sql/0001_schema.sql"
    ) in child.stderr
    assert "Fix that migration" not in child.stderr


# The head of a suite whose tests connect through a test tool's file and a library's.
THROUGH_A_TOOL_OR_A_LIBRARY = """
pytestmark = pytest.mark.isolated
CONNECT = "import sqlite3\\ndef connect(path):\\n    sqlite3.connect(path).close()\\n"
SITE_PACKAGES = os.path.join(os.sep, "opt", ".venv", "site-packages")
TOOL, LIBRARY = {}, {}  # coverage writing its data file; SQLAlchemy opening the app's
exec(compile(CONNECT, os.path.join(SITE_PACKAGES, "coverage", "sqldata.py"), "exec"), TOOL)
exec(compile(CONNECT, os.path.join(SITE_PACKAGES, "sqlalchemy", "pool.py"), "exec"), LIBRARY)
"""
WRITES_THROUGH_ITS_OWN_SETTING = (
    """
import os
import sqlite3

import pytest
"""
    + THROUGH_A_TOOL_OR_A_LIBRARY
    + """

def add_note(body):
    notes = sqlite3.connect(os.environ["NOTES_DB"])
    notes.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
    notes.execute("INSERT INTO notes VALUES (?)", [body])
    notes.commit()
    notes.close()


@pytest.mark.parametrize("body", ["first", "second"])
def test_adds_a_note(db, tmp_path, body):
    add_note(body)
    sqlite3.connect(tmp_path / "scratch.db").close()
    sqlite3.connect(f"file:{os.environ['REFERENCE_DB']}?mode=ro", uri=True).close()
    TOOL["connect"](os.environ["TOOL_DB"])
    LIBRARY["connect"](os.environ["LEGACY_DB"])
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
"""
)


def test_a_database_the_test_opens_besides_its_own_is_named_once(tmp_path: Path) -> None:
    """Where other databases are not refused (isolation_refuse_other_databases = false),
    an application module reading another setting than DATABASE_URL writes into its
    real database while the tests pass: the run names that file and where it was opened,
    once, also through a library (SQLAlchemy), also where the project lies in the temporary
    directory (a checkout under /tmp). Not a scratch file (pytest's tmp_path, wherever
    --basetemp puts it, here inside the project), a file only read, nor a test tool's
    (coverage's data)."""
    notes = tmp_path / "instance" / "notes.sqlite"
    reference = tmp_path / "instance" / "reference.sqlite"
    notes.parent.mkdir()
    sqlite3.connect(reference).close()
    environ = {
        "NOTES_DB": str(notes),
        "REFERENCE_DB": str(reference),
        "TOOL_DB": str(tmp_path / ".coverage"),
        "LEGACY_DB": str(tmp_path / "instance" / "legacy.sqlite"),
        "TMPDIR": str(tmp_path.parent),  # the project is a temporary directory's
    }
    basetemp = f"--basetemp={tmp_path / 'scratch'}"
    warn = ("-o", "isolation_refuse_other_databases=false")
    child = run_suite(tmp_path, WRITES_THROUGH_ITS_OWN_SETTING, basetemp, *warn, environ=environ)
    assert child.returncode == 0, child.stdout + child.stderr
    assert child.stdout.count("a database that is not its own") == 2, child.stdout
    test_file = tmp_path / "test_suite.py"
    assert f"opened {notes} (at {test_file}:16)" in child.stdout
    assert f"opened {notes.parent / 'legacy.sqlite'} (at {test_file}:29)" in child.stdout
    for unnamed in ("scratch.db", "reference.sqlite", ".coverage"):
        assert unnamed not in child.stdout


OPENS_OTHER_DATABASES = (
    """
import os
import sqlite3
from urllib.parse import urlsplit

import pytest
"""
    + THROUGH_A_TOOL_OR_A_LIBRARY
    + """

def test_its_own_setting():
    sqlite3.connect(os.environ["NOTES_DB"])


def test_through_a_library():
    LIBRARY["connect"](os.environ["LEGACY_DB"])


def test_the_url_without_its_prefix():
    sqlite3.connect(os.environ["DATABASE_URL"].removeprefix("file:"))


def test_the_path_of_the_url():
    sqlite3.connect(urlsplit(os.environ["DATABASE_URL"]).path)


def test_what_it_may_open(db, tmp_path):
    sqlite3.connect(tmp_path / "scratch.db").close()
    sqlite3.connect(f"file:{os.environ['REFERENCE_DB']}?mode=ro", uri=True).close()
    TOOL["connect"](os.environ["TOOL_DB"])
    sqlite3.connect(os.environ["DATABASE_URL"], uri=True).close()
"""
)


STRIPS_AN_ESCAPED_URL = """
import os
import sqlite3

import pytest

pytestmark = pytest.mark.isolated


def test_the_url_without_its_prefix():
    url = os.environ["DATABASE_URL"]
    assert "my%20projects" in url
    sqlite3.connect(url.removeprefix("file:"))
"""


def test_the_url_taken_for_a_file_name_is_refused_where_escaping_moved_it_elsewhere(
    tmp_path: Path,
) -> None:
    """A space above the project is escaped in DATABASE_URL: the URL taken for a file name
    is a path outside the project, still named for what it is."""
    project = tmp_path / "my projects" / "shop"
    project.mkdir(parents=True)
    child = run_suite(project, STRIPS_AN_ESCAPED_URL, "-o", "isolation_use_dev_shm=false")
    assert "1 failed" in child.stdout, child.stdout + child.stderr
    assert "opened the path of its DATABASE_URL as a file name" in child.stdout, child.stdout


def test_a_database_the_test_would_write_besides_its_own_is_refused_before_it_opens(
    tmp_path: Path,
) -> None:
    """Its application's, through a setting of its own or a library, or the test's own
    URL (or its path) taken for a file name: refused, and nothing is written, not even an
    empty file. A scratch file, a file opened read-only, a test tool's and the test's own
    open."""
    instance = tmp_path / "instance"
    instance.mkdir()
    reference = instance / "reference.sqlite"
    sqlite3.connect(reference).close()
    environ = {
        "NOTES_DB": str(instance / "notes.sqlite"),
        "LEGACY_DB": str(instance / "legacy.sqlite"),
        "REFERENCE_DB": str(reference),
        "TOOL_DB": str(tmp_path / ".coverage"),
        "TMPDIR": str(tmp_path.parent),  # the project is a temporary directory's
    }
    basetemp = f"--basetemp={tmp_path / 'scratch'}"
    memory = ("--isolation-strategy", "memory")  # a URL without file: is a name at the root
    child = run_suite(tmp_path, OPENS_OTHER_DATABASES, basetemp, *memory, environ=environ)
    assert child.returncode == 1, child.stdout + child.stderr
    assert "4 failed, 1 passed" in child.stdout, child.stdout
    refusals = re.findall(r"^E .*DatabaseAccessBlockedError: refused to open", child.stdout, re.M)
    assert len(refusals) == 4, child.stdout
    for name in ("notes.sqlite", "legacy.sqlite"):
        assert f"refused to open '{instance / name}': it is not the database of" in child.stdout
    assert "or read DATABASE_URL once, before the session set it (unset, it" in child.stdout
    assert child.stdout.count("opened the path of its DATABASE_URL as a file name") >= 2
    assert sorted(path.name for path in instance.iterdir()) == ["reference.sqlite"]
    assert not list(Path(os.sep).glob("isolation-test_*")), "a file made at the root"

    allowed = ("-o", "isolation_allowed_databases=instance/notes.*")  # from the rootdir
    child = run_suite(tmp_path, OPENS_OTHER_DATABASES, basetemp, *memory, *allowed, environ=environ)
    assert "3 failed, 2 passed" in child.stdout, child.stdout
    assert (instance / "notes.sqlite").exists()
    assert "notes.sqlite" not in child.stdout


# Modules named by isolation_database_module in the tests below, written to tmp_path.
CONNECTS_AT_IMPORT = """
import os
import sqlite3

_conn = sqlite3.connect(os.environ.get("DATABASE_URL", ":memory:"), uri=True)
_conn.execute("CREATE TABLE IF NOT EXISTS touched (id INTEGER)")
_conn.close()


def reset():
    pass
"""

RESET_THAT_FAILS = """
import os


def reset():  # fine at the session's start; fails around the test
    if os.environ["DATABASE_URL"] != ":memory:":
        raise RuntimeError("closed from the wrong thread")
"""

RESET_THAT_RECONNECTS = """
import os
import sqlite3

_conn = None


def reset():
    global _conn
    if _conn is not None:
        _conn.close()
    _conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
"""

TWO_ISOLATED_TESTS = (
    ONE_ISOLATED_TEST
    + """

def test_two(db):
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
"""
)


SEEDS_IN_A_SESSION_FIXTURE = """
import pytest

from lib.database import get_database_client

pytestmark = pytest.mark.isolated


@pytest.fixture(scope="session")
def customer():
    get_database_client().execute(
        "INSERT INTO users (email, name) VALUES ('ada@example.com', 'Ada')"
    )
    return "ada@example.com"


@pytest.fixture(scope="module")
def reads_only():
    return get_database_client().execute("SELECT COUNT(*) FROM users").rows[0][0]


def test_first(customer, reads_only):
    pass


def test_second(customer, reads_only):
    pass
"""


def test_rows_a_wider_fixture_writes_are_said_to_be_the_first_tests_alone(
    tmp_path: Path,
) -> None:
    """Seeded while the first test that uses it runs, they go with that test's database:
    the second test runs without them, and nothing said so."""
    child = run_suite(tmp_path, SEEDS_IN_A_SESSION_FIXTURE)
    assert child.returncode == 0, child.stdout + child.stderr
    assert child.stdout.count("row(s) into the database of") == 1, child.stdout
    assert (
        "the session-scoped fixture 'customer' wrote 1 row(s) into the database of scope test_"
    ) in child.stdout
    assert "reads_only" not in child.stdout.split("warnings summary")[-1]


def test_a_conftest_below_the_root_that_uses_the_database_at_import_is_refused(
    tmp_path: Path,
) -> None:
    """Given a path below it, pytest imports that directory's conftest.py before the
    session starts: the application it imports must not reach the developer's database."""
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "conftest.py").write_text(
        "from lib.database import get_database_client\n\n"
        "get_database_client().execute('CREATE TABLE written_at_import (id INTEGER)')\n"
    )
    (tmp_path / "api" / "test_api.py").write_text("def test_one():\n    pass\n")
    developer_db = tmp_path / "dev.db"
    below = str(tmp_path / "api" / "test_api.py")
    child = run_suite(
        tmp_path, ONE_ISOLATED_TEST, below, environ={"DATABASE_URL": f"file:{developer_db}"}
    )
    assert child.returncode == 4, child.stdout + child.stderr
    assert "DatabaseAccessBlockedError: the database is only available inside an isolated" in (
        child.stdout + child.stderr
    )
    assert not developer_db.exists()


def test_the_database_module_is_imported_only_once_the_developers_database_is_hidden(
    tmp_path: Path,
) -> None:
    """A module that connects at import never reaches the database of DATABASE_URL, not
    even in a run that only collects."""
    (tmp_path / "connects_at_import.py").write_text(CONNECTS_AT_IMPORT)
    developer_db = tmp_path / "dev.db"
    setting = "isolation_database_module=connects_at_import:reset"
    environ = {"DATABASE_URL": f"file:{developer_db}"}
    for args in [["--collect-only"], []]:
        child = run_suite(tmp_path, ONE_ISOLATED_TEST, *args, "-o", setting, environ=environ)
        assert child.returncode == 0, child.stdout + child.stderr
        assert not developer_db.exists(), args


KEEPS_THE_CONNECTION = """
import os
import sqlite3

_connection = None


def connection():
    global _connection
    if _connection is None:
        _connection = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    return _connection


def reset():
    global _connection
    kept, _connection = _connection, None
    if kept is not None:
        kept.close()
"""

USES_A_KEPT_CONNECTION = """
import sys

import pytest

import shop_db


class Repository:
    def __init__(self):
        self.connection = shop_db.connection()  # kept at import, as collected


class LazyDict(dict):
    def items(self):
        raise RuntimeError("project code ran: LazyDict.items")


class Settings:  # stands in for a module in sys.modules, as some settings modules do
    __slots__ = ()


CONNECTIONS = {"orders": shop_db.connection()}
repository = Repository()
lazy = LazyDict(a=1)
sys.modules["shop_settings"] = Settings()
pytestmark = pytest.mark.isolated


def test_count(db):
    CONNECTIONS["orders"].execute("SELECT 1")
"""


KEEPS_A_CONNECTION_DEEP_DOWN = """
import os
import sqlite3

import pytest

pytestmark = pytest.mark.isolated


class Session:  # holds its connection deeper than a module global's attribute
    def __init__(self):
        self.state = {"connection": None}


SESSION = Session()


def test_leaves_its_connection_open():
    SESSION.state["connection"] = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)


def test_uses_it_later():
    SESSION.state["connection"].execute("SELECT 1")
"""


LEAVES_A_LIBRARYS_CONNECTION_OPEN = """
import os

import pytest

pytestmark = pytest.mark.isolated
CONNECT = "import sqlite3\\ndef connect(url):\\n    return sqlite3.connect(url, uri=True)\\n"
ENGINE = os.path.join(os.sep, "opt", ".venv", "site-packages", "orm", "engine.py")
LIBRARY = {}
exec(compile(CONNECT, ENGINE, "exec"), LIBRARY)
KEPT = []


def test_keeps_what_the_library_opened():
    KEPT.append(LIBRARY["connect"](os.environ["DATABASE_URL"]))
"""


def test_a_leak_is_named_by_the_projects_line_not_the_librarys(tmp_path: Path) -> None:
    """Opened through a library (SQLAlchemy's engine), the connection is named where the
    project's code asked for it."""
    child = run_suite(tmp_path, LEAVES_A_LIBRARYS_CONNECTION_OPEN)
    leak = "Connection leak detected in test: test_suite.py::test_keeps_what_the_library_opened"
    assert f"{leak} (opened at {tmp_path / 'test_suite.py'}:15;" in child.stdout, child.stdout


def test_a_closed_connection_held_deep_down_names_the_leaks_closed_before(
    tmp_path: Path,
) -> None:
    """No global leads to it: the failure lists the connections closed as leaks of earlier
    tests, where they were opened."""
    child = run_suite(tmp_path, KEEPS_A_CONNECTION_DEEP_DOWN)
    assert "1 failed, 1 passed" in child.stdout, child.stdout + child.stderr
    assert "Cannot operate on a closed database" in child.stdout
    section = "isolation: connections closed as leaks of earlier tests"
    opened = f"test_suite.py::test_leaves_its_connection_open: opened at {tmp_path}/test_suite.py:"
    assert re.search(rf"{section} -+\n{re.escape(opened)}19\n", child.stdout), child.stdout


def test_a_closed_sqlite3_connection_a_test_used_is_named_where_it_is_kept(
    tmp_path: Path,
) -> None:
    """sqlite3's "Cannot operate on a closed database" names no connection: the failure
    names the module globals that kept the one the reset closed, an instance's attribute
    too, without running project code (a dict subclass's items()) and past an object
    standing in for a module."""
    (tmp_path / "shop_db.py").write_text(KEEPS_THE_CONNECTION)
    setting = "isolation_database_module=shop_db:reset"
    child = run_suite(tmp_path, USES_A_KEPT_CONNECTION, "-o", setting)
    assert child.returncode == 1, child.stdout + child.stderr
    assert "Cannot operate on a closed database" in child.stdout
    assert "isolation: closed connections kept in module globals" in child.stdout
    named = "test_suite.CONNECTIONS['orders']\ntest_suite.repository.connection\n"
    assert named in child.stdout
    assert "a reset closed it when DATABASE_URL changed" in child.stdout
    assert "project code ran" not in child.stdout + child.stderr


CLOSES_THE_KEPT_CONNECTION = """
import pytest
import shop_db

pytestmark = pytest.mark.isolated


@pytest.fixture
def connection():
    yield shop_db.connection()
    shop_db.connection().close()


def test_first(connection):
    connection.execute("SELECT 1")


def test_second(connection):
    connection.execute("SELECT 1")
"""


@pytest.mark.parametrize(
    "closed_by", ["a fixture", "the end of the first test", "the end, another module reset"]
)
def test_a_connection_closed_in_a_module_not_reset_says_what_closed_it(
    tmp_path: Path, closed_by: str
) -> None:
    """No reset closed the connection: a fixture did, or the plugin, as a connection the
    first test leaked, and the module kept it. With no isolation_database_module, the
    failure says which setting lets the module reconnect; with one (another module's), a
    reset may have closed it too."""
    (tmp_path / "shop_db.py").write_text(KEEPS_THE_CONNECTION)
    (tmp_path / "other_db.py").write_text("def reset():\n    pass\n")
    suite, args = CLOSES_THE_KEPT_CONNECTION, []
    if closed_by != "a fixture":
        suite = suite.replace("    shop_db.connection().close()\n", "")
    if "reset" in closed_by:
        args = ["-o", "isolation_database_module=other_db:reset"]
    child = run_suite(tmp_path, suite, *args)
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 failed, 1 passed" in child.stdout
    assert "shop_db._connection\n" in child.stdout
    assert "as a connection that test leaked (its leak line says so)" in child.stdout
    assert ("a reset closed it" in child.stdout) is bool(args)
    named = "If the global is your database module's own connection, name that module in"
    assert (named in child.stdout) is not bool(args)
    leaked = "Connection leak detected in test: test_suite.py::test_first"
    assert (leaked in child.stdout) is (closed_by != "a fixture"), child.stdout


CACHES_THE_CONNECTION = """
import functools
import os
import sqlite3


@functools.lru_cache
def connection():
    return sqlite3.connect(os.environ["DATABASE_URL"], uri=True)


def reset():
    connection.cache_clear()
"""

USES_THE_MODULES_CONNECTION = """
import pytest
import shop_db

pytestmark = pytest.mark.isolated


def test_first():
    shop_db.connection().execute("SELECT 1")
"""


@pytest.mark.parametrize("module", ["forgets", "closes"])
def test_a_reset_that_forgets_its_connection_without_closing_it_is_told_to(
    tmp_path: Path, module: str
) -> None:
    """A reset that only clears an lru_cache leaves the connection open at each test's
    end: the leak line says the reset must close it. One that closes it leaks nothing."""
    source = CACHES_THE_CONNECTION if module == "forgets" else KEEPS_THE_CONNECTION
    (tmp_path / "shop_db.py").write_text(source)
    setting = "isolation_database_module=shop_db:reset"
    child = run_suite(tmp_path, USES_THE_MODULES_CONNECTION, "-o", setting)
    assert child.returncode == 0, child.stdout + child.stderr
    hint = "isolation_database_module names that module, and its reset did not close"
    assert (hint in child.stdout) is (module == "forgets"), child.stdout
    assert ("Connection leak detected" in child.stdout) is (module == "forgets")


def test_warnings_before_an_error_at_the_end_of_a_session_are_given() -> None:
    """The end of a test the run was interrupted in may warn (a stale binding), then raise
    (a reset hook that failed): the warnings are given all the same."""
    from lib.isolation_manager import IsolationError, IsolationWarning
    from tests.setup_integration import _warned_late

    def end_of_the_test() -> None:
        warnings.warn("a stale binding", IsolationWarning, stacklevel=1)
        raise IsolationError("the database reset hook failed")

    with (
        pytest.warns(IsolationWarning, match="a stale binding"),
        pytest.raises(IsolationError, match="reset hook failed"),
    ):
        _warned_late(end_of_the_test)


CACHES_A_CLIENT = """
from lib.database import get_database_client

_client = None


def client():
    global _client
    _client = _client or get_database_client()
    return _client
"""

USES_THE_CACHED_CLIENT = """
import pytest

import client_cache

pytestmark = pytest.mark.isolated


@pytest.mark.parametrize("number", [1, 2])
def test_counts(number):
    assert client_cache.client().execute("SELECT ?", [number]).rows[0][0] == number
"""


def test_a_client_kept_in_a_global_is_named_where_it_fails(tmp_path: Path) -> None:
    """The second test fails with CLIENT_CLOSED: its report names the global that kept
    the first test's client, next to the failure."""
    (tmp_path / "client_cache.py").write_text(CACHES_A_CLIENT)
    child = run_suite(tmp_path, USES_THE_CACHED_CLIENT)
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 failed, 1 passed" in child.stdout
    section = "isolation: closed database clients kept in module globals"
    assert re.search(rf"{section} -+\nclient_cache\._client\n", child.stdout), child.stdout


def test_a_reset_hook_that_fails_fails_the_test(tmp_path: Path) -> None:
    """Its connection may still point at this test's database: the next test would see
    this one's rows. A warning in a captured log was all it got."""
    (tmp_path / "reset_that_fails.py").write_text(RESET_THAT_FAILS)
    setting = "isolation_database_module=reset_that_fails:reset"
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", setting)
    assert child.returncode == 1, child.stdout + child.stderr
    assert "the database reset hook failed: reset_that_fails:reset raised RuntimeError(" in (
        child.stdout
    )
    assert "make the hook forget its connection even when closing it fails" in child.stdout
    assert "(DATABASE_URL was 'file:" in child.stdout  # the test's, when the test ended


def test_a_database_module_that_fails_at_import_is_one_error_naming_the_setting(
    tmp_path: Path,
) -> None:
    """A settings module that requires your own settings: no INTERNALERROR traceback."""
    (tmp_path / "needs_a_secret.py").write_text('import os\n\nSECRET = os.environ["SECRET"]\n')
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", "isolation_database_module=needs_a_secret")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "INTERNALERROR" not in child.stdout + child.stderr
    assert (
        "isolation_database_module = 'needs_a_secret' cannot be used: importing it raised "
        "KeyError('SECRET') at the session's start, where DATABASE_URL is ':memory:'"
    ) in child.stderr


def test_a_connection_the_reset_hook_opens_for_the_next_test_is_no_leak(tmp_path: Path) -> None:
    (tmp_path / "reset_that_reconnects.py").write_text(RESET_THAT_RECONNECTS)
    setting = "isolation_database_module=reset_that_reconnects:reset"
    child = run_suite(tmp_path, TWO_ISOLATED_TESTS, "-o", setting)
    assert child.returncode == 0, child.stdout + child.stderr
    assert "Connection leak detected" not in child.stdout + child.stderr
    assert "Connection Leaks: 0" in child.stdout


FAILING_ISOLATED_TEST = """
import pytest

pytestmark = pytest.mark.isolated


def test_fails(db):
    db.execute("INSERT INTO users (email, name) VALUES ('kept@example.com', 'kept')")
    assert False
"""


def test_kept_databases_stay_until_a_run_that_isolates_tests(tmp_path: Path) -> None:
    """Collecting (as an IDE does) or running unit tests alone leaves them for you to open."""
    child = run_suite(tmp_path, FAILING_ISOLATED_TEST, "--isolation-keep-failed")
    (kept,) = re.findall(r"Kept database of a failed test: (\S+)", child.stdout)
    for suite, args in [(FAILING_ISOLATED_TEST, ["--collect-only"]), (UNIT_TEST, [])]:
        child = run_suite(tmp_path, suite, *args)
        assert child.returncode in (0, 5), child.stdout + child.stderr
        assert Path(kept).is_file(), args
    run_suite(tmp_path, ONE_ISOLATED_TEST)
    assert not Path(kept).exists()


SESSION_CONNECTIONS_TO_THE_FIRST_TESTS_DATABASE = """
import os
import sqlite3
import unittest

import pytest

from lib.database import DatabaseService

pytestmark = pytest.mark.isolated


@pytest.fixture(scope="session")
def own_connection():
    conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def own_service():
    service = DatabaseService()
    service.get_client().execute("SELECT 1")
    yield service
    service.close()


@pytest.mark.parametrize("test", ["first", "second"])
def test_connection(own_connection, test):
    own_connection.execute("INSERT INTO users (email, name) VALUES (?, ?)", (test, test))


@pytest.mark.parametrize("test", ["first", "second"])
def test_service(own_service, test):
    own_service.get_client().execute("INSERT INTO users (email, name) VALUES (?, ?)", (test, test))


class TestShared(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.conn = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)

    @classmethod
    def tearDownClass(cls):
        cls.conn.close()

    def test_first(self):
        self.conn.execute("INSERT INTO users (email, name) VALUES ('first', 'first')")

    def test_second(self):
        self.conn.execute("INSERT INTO users (email, name) VALUES ('second', 'second')")
"""


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_a_wider_fixture_connecting_to_its_first_tests_database_is_an_error_in_every_test(
    tmp_path: Path, strategy: str
) -> None:
    """That database is deleted when its test ends, yet the connection keeps it: every
    later test would read and write the first one's rows, with no error anywhere."""
    suite = SESSION_CONNECTIONS_TO_THE_FIRST_TESTS_DATABASE
    child = run_suite(tmp_path, suite, "--isolation-strategy", strategy)
    assert "6 errors" in child.stdout, child.stdout + child.stderr
    for fixture in ("own_connection", "own_service"):
        message = f"the session-scoped fixture {fixture!r} opened a connection to the database"
        assert message in child.stdout, child.stdout
    # pytest runs a setUpClass as a fixture of its own making: the error names the method.
    assert "TestShared.setUpClass opened a connection to the database" in child.stdout
    assert "Do it in setUp instead" in child.stdout


UNITTEST_MODULE_CONNECTION = """
import os
import sqlite3
import unittest

import pytest

pytestmark = pytest.mark.isolated
shared = None


def setUpModule():
    global shared
    shared = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)


def tearDownModule():
    shared.close()


class TestUsers(unittest.TestCase):
    def test_first(self):
        shared.execute("SELECT 1")
"""


def test_a_unittest_setupmodule_connecting_to_its_first_tests_database_is_named_as_such(
    tmp_path: Path,
) -> None:
    child = run_suite(tmp_path, UNITTEST_MODULE_CONNECTION)
    assert "setUpModule of test_suite opened a connection to the database" in child.stdout
    assert "Do it in setUp instead" in child.stdout, child.stdout


RUNAWAY_STATEMENTS = """
import sqlite3
import time

import pytest

pytestmark = pytest.mark.isolated
FOREVER = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"


@pytest.mark.timeout(3)
def test_runaway(db):
    db.execute(FOREVER)


@pytest.mark.timeout(3)
def test_swallows_the_error_then_overruns(db):
    try:
        db.execute(FOREVER)
    except sqlite3.OperationalError:
        pass
    time.sleep(3)


def test_next(db):
    assert db.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
"""


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_a_timeout_stops_a_statement_that_runs_away(tmp_path: Path, strategy: str) -> None:
    """Its statement is interrupted before pytest-timeout fires, and fails the test;
    pytest-timeout's own failure still comes for a test that swallows that error and
    overruns. The run used to hang until killed."""
    child = run_suite(tmp_path, RUNAWAY_STATEMENTS, "--isolation-strategy", strategy)
    assert "2 failed, 1 passed" in child.stdout, child.stdout + child.stderr
    assert "sqlite3.OperationalError: interrupted" in child.stdout
    assert "the statement ran past its test's timeout (pytest-timeout)" in child.stdout
    assert "Failed: Timeout" in child.stdout  # the second test's, from pytest-timeout


KEPT_SERVICE = """
import pytest

from lib.database import get_database_service

pytestmark = pytest.mark.isolated


class TestKept:
    @pytest.fixture(scope="class")
    def service(self):
        return get_database_service()

    def test_first(self, service):
        service.get_client().execute("SELECT 1")

    def test_second(self, service):
        service.get_client().execute("SELECT 1")
"""


def test_a_service_kept_past_its_test_says_whose_it_was(tmp_path: Path) -> None:
    child = run_suite(tmp_path, KEPT_SERVICE)
    assert "1 failed, 1 passed" in child.stdout, child.stdout + child.stderr
    assert "ClientClosedError: CLIENT_CLOSED: this database service belonged to scope" in (
        child.stdout
    )
    assert "test_suite.py::TestKept::test_first), whose database is gone" in child.stdout


RERUN_PLUGIN = """
from _pytest.runner import runtestprotocol


def pytest_runtest_protocol(item, nextitem):
    \"\"\"Run a test that failed once more, as pytest-rerunfailures does.\"\"\"
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if any(report.failed for report in reports):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""

FLAKY_ONCE = """
import pytest

pytestmark = pytest.mark.isolated
attempts = []


def test_flaky(db):
    attempts.append(1)
    db.execute("INSERT INTO users (email, name) VALUES (?, 'x')", (f"attempt{len(attempts)}",))
    assert len(attempts) > 1
"""


def test_a_rerun_that_passes_keeps_the_failed_attempts_database(tmp_path: Path) -> None:
    (tmp_path / "rerun_once.py").write_text(RERUN_PLUGIN)
    child = run_suite(tmp_path, FLAKY_ONCE, "-p", "rerun_once", "--isolation-keep-failed")
    assert child.returncode == 0, child.stdout + child.stderr
    kept = re.findall(r"Kept database of a failed test: (\S+)", child.stdout)
    assert len(kept) == 1, child.stdout
    with closing(sqlite3.connect(kept[0])) as conn:
        assert conn.execute("SELECT email FROM users").fetchall() == [("attempt1",)]


CRASHING_WORKER = (
    ONE_ISOLATED_TEST
    + """

def test_crashes(db):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
"""
)


def test_a_crashed_worker_is_named_in_the_report_whose_figures_lack_its_tests(
    tmp_path: Path,
) -> None:
    """Its records never reach the main process: the totals would pass for the whole run."""
    # on disk, in tmp_path: the killed worker leaves its directory behind
    child = run_suite(tmp_path, CRASHING_WORKER, "-n", "2", "-o", "isolation_use_dev_shm=false")
    assert child.returncode == 1, child.stdout + child.stderr
    assert re.search(r"Worker gw\d ended without its records \(it crashed\)", child.stdout), (
        child.stdout
    )


KEEPS_ITS_OWN_CLIENT = """
import os

import pytest

from lib.database import DatabaseClient

pytestmark = pytest.mark.isolated
KEPT = []


def test_keeps_a_client():
    KEPT.append(DatabaseClient(os.environ["DATABASE_URL"], owner="my own client"))


def test_uses_it_later():
    KEPT[0].execute("SELECT 1")
"""


def test_a_leaked_client_says_which_test_leaked_it_when_used_later(tmp_path: Path) -> None:
    child = run_suite(tmp_path, KEEPS_ITS_OWN_CLIENT)
    assert child.returncode == 1, child.stdout + child.stderr
    assert (
        "belonged to my own client and was closed at the end of "
        "test_suite.py::test_keeps_a_client as a connection leak"
    ) in child.stdout


# A module that reads DATABASE_URL at import, as settings modules do, and that the
# suite's conftest.py imports: before the session began.
READS_THE_URL_AT_IMPORT = """
import os
import sqlite3

URL = os.environ.get("DATABASE_URL", "file:./data/app.db")
_connection = None


def connection():
    global _connection
    if _connection is None:
        _connection = sqlite3.connect(URL, uri=True)
        _connection.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
    return _connection


def reset():
    global _connection
    connection, _connection = _connection, None
    if connection is not None:
        connection.close()
"""

WRITES_THROUGH_IT = """
import pytest

import reads_the_url


def test_unit_test_writes():
    reads_the_url.connection().execute("INSERT INTO notes VALUES ('from a unit test')")


@pytest.mark.isolated
def test_isolated_test_writes():
    reads_the_url.reset()  # connects again, to the URL it read at import
    reads_the_url.connection().execute("INSERT INTO notes VALUES ('from an isolated test')")
"""


@pytest.mark.parametrize("connected_at_import", [False, True])
def test_code_that_read_database_url_before_the_session_never_reaches_that_database(
    tmp_path: Path, connected_at_import: bool
) -> None:
    """A connection made at import is dropped at the session's start (through the reset
    hook), and opening that database again during the session is refused, naming why:
    in a unit test as in an isolated one."""
    (tmp_path / "reads_the_url.py").write_text(READS_THE_URL_AT_IMPORT)
    imports = "import reads_the_url\n"
    if connected_at_import:
        imports += "reads_the_url.connection()\n"
    (tmp_path / "conftest.py").write_text(imports)
    developer_db = tmp_path / "dev.db"
    setting = "isolation_database_module=reads_the_url:reset"
    child = run_suite(
        tmp_path,
        WRITES_THROUGH_IT,
        "-o",
        setting,
        environ={"DATABASE_URL": f"file:{developer_db}"},
    )
    output = child.stdout + child.stderr
    assert "2 failed" in output, output
    refusal = f"refused to open 'file:{developer_db}': it is your own database"
    assert output.count(refusal) >= 2, output
    if developer_db.exists():  # made by the conftest.py, before the session
        with closing(sqlite3.connect(developer_db)) as conn:
            assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_several_test_paths_on_one_ini_line_are_refused(tmp_path: Path) -> None:
    """pytest reads the line as one path: no test would be isolated, and nothing said so."""
    setting = "isolation_test_paths=tests/integration tests/api"
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", setting)
    assert child.returncode == 4, child.stdout + child.stderr
    assert "isolation_test_paths: 'tests/integration tests/api' is not a directory" in (
        child.stderr
    )
    assert "several paths go one per line" in child.stderr


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("isolation_test_paths=tests/integraton", "'tests/integraton' is not a directory"),
        ("isolation_test_paths=tests/integration", "'tests/integration' is not a directory"),
        ('isolation_test_paths="tests"', 'isolation_test_paths = "tests": write it without'),
        ("isolation_data_dir='data'", "isolation_data_dir = 'data': write it without quotes"),
        (
            'isolation_performance_baseline=""',
            'isolation_performance_baseline = "": write it without quotes (for an empty value',
        ),
    ],
)
def test_a_test_path_that_is_no_directory_or_a_quoted_path_is_refused(
    tmp_path: Path, setting: str, error: str
) -> None:
    """Either would isolate no test, or make a directory named with the quotes; the
    default path, set, is no exception."""
    (tmp_path / "tests").mkdir()
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", setting)
    assert child.returncode == 4, child.stdout + child.stderr
    assert error in child.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "pytest.ini",
        "test_suite.py",
        "tests",
    ]


OPENS_A_PATH = """
import sqlite3

import pytest


@pytest.mark.isolated
def test_opens_it():
    sqlite3.connect({path!r}).close()
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "two workers"])
def test_the_developers_database_is_refused_on_xdist_workers_too(
    tmp_path: Path, workers: list[str]
) -> None:
    """A worker starts once the main process has set DATABASE_URL to :memory:: the main
    process tells it which database was the developer's."""
    developer_db = tmp_path / "dev.db"
    suite = OPENS_A_PATH.format(path=str(developer_db))
    environ = {"DATABASE_URL": f"file:{developer_db}"}
    child = run_suite(tmp_path, suite, *workers, environ=environ)
    assert child.returncode == 1, child.stdout + child.stderr
    assert f"refused to open {str(developer_db)!r}: it is your own database" in child.stdout
    assert not developer_db.exists()


@pytest.mark.parametrize("form", ["sqlite:///{relative}", "sqlite+pysqlite:////{absolute}"])
def test_the_developers_database_named_by_an_sqlalchemy_url_is_refused(
    tmp_path: Path, form: str
) -> None:
    """Code of yours may read it before the session (SQLAlchemy's form, not this project's)."""
    developer_db = tmp_path / "dev.db"
    url = form.format(relative="dev.db", absolute=str(developer_db).lstrip("/"))
    suite = OPENS_A_PATH.format(path=str(developer_db))
    child = run_suite(tmp_path, suite, environ={"DATABASE_URL": url})
    assert child.returncode == 1, child.stdout + child.stderr
    assert f"refused to open {str(developer_db)!r}: it is your own database" in child.stdout
    assert not developer_db.exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db.internal:5432/shop", "postgresql://db.internal"),
        ("sqlite://", None),
    ],
)
def test_a_database_url_the_project_cannot_read_is_a_warning(
    tmp_path: Path, url: str, shown: str | None
) -> None:
    """Nothing can be refused then: the run says so instead of protecting nothing silently
    (SQLAlchemy's in-memory URL names no file to protect), without the URL's password."""
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, environ={"DATABASE_URL": url})
    assert child.returncode == 0, child.stdout + child.stderr
    warned = "So the tests cannot tell which file is your own database" in child.stdout
    assert warned is (shown is not None), child.stdout
    assert "s3cret" not in child.stdout + child.stderr
    if shown is not None:
        assert f"DATABASE_URL={shown}... uses the unsupported scheme 'postgresql'" in (child.stdout)


LEAVES_A_THREAD_RUNNING = """
import functools
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lib.database import get_database_client

pytestmark = pytest.mark.isolated
POOL = ThreadPoolExecutor(max_workers=1)  # its thread starts in the first test to use it
DONE = threading.Event()
FIRED = threading.Event()  # the timer a test left has run
HANDLED = threading.Event()  # the server's request has used the database
errors = []


def write_forever(stop):  # a worker that logs its errors and goes on
    while not stop.wait(0.005):
        try:
            get_database_client().execute("INSERT INTO logs (level, message) VALUES ('info', 'x')")
        except Exception as error:
            errors.append(error)


def serve(stop, requests):  # a server of the project's: a thread for each request
    while not stop.is_set():
        request = requests.get()
        threading.Thread(target=request, daemon=True).start()


@pytest.fixture(scope="session")
def server():
    stop, requests = threading.Event(), queue.Queue()
    thread = threading.Thread(target=serve, args=(stop, requests), daemon=True)
    thread.start()
    yield requests
    stop.set()
    requests.put(lambda: None)


def handle(done):  # a request served over two tests
    done.wait()
    get_database_client().execute("SELECT 1")
    HANDLED.set()


def test_starts_a_pool_thread_and_uses_the_server(server):
    assert POOL.submit(lambda: get_database_client().execute("SELECT 1")).result()
    server.put(functools.partial(handle, DONE))


def test_stops_its_thread():
    stop = threading.Event()
    threading.Thread(target=write_forever, args=(stop,), name="stopped").start()
    stop.set()  # and not joined: the thread ends within the grace


def write_once():
    try:
        get_database_client().execute("INSERT INTO logs (level, message) VALUES ('info', 'x')")
    except Exception as error:
        errors.append(error)
    finally:
        FIRED.set()


def test_leaves_a_timer_set():
    timer = threading.Timer(0.5, write_once)  # fires well after the check at the end
    timer.daemon = True
    timer.start()


def test_leaves_a_thread_running():
    writer = threading.Thread(target=write_forever, args=(threading.Event(),), name="writer")
    writer.daemon = True  # or the run would never end
    writer.start()
    time.sleep(0.05)


def test_sees_no_rows_of_it(server):
    DONE.set()
    assert HANDLED.wait(timeout=30)
    assert FIRED.wait(timeout=30)
    assert get_database_client().execute("SELECT count(*) FROM logs").rows[0][0] == 0
    refusals = [str(error) for error in errors if " was started by " in str(error)]
    started_by = {refusal.split(" was started by ")[1].split(" ")[0] for refusal in refusals}
    assert started_by == {
        "test_suite.py::test_leaves_a_timer_set",
        "test_suite.py::test_leaves_a_thread_running",
    }
"""


def test_a_thread_a_test_left_running_is_a_leak_and_refused_the_database(
    tmp_path: Path,
) -> None:
    """It would write into the next test's database; a pool's or a session fixture's
    thread, which serve every test, are neither."""
    report = tmp_path / "report.json"
    child = run_suite(
        tmp_path, LEAVES_A_THREAD_RUNNING, "--isolation-strict", f"--isolation-report={report}"
    )
    output = child.stdout + child.stderr
    assert child.returncode == 1, output
    assert "5 passed" in output
    leaks = json.loads(report.read_text())["leaks"]
    assert [(leak["kind"], leak["test"]) for leak in leaks] == [
        ("thread", "test_suite.py::test_leaves_a_timer_set"),
        ("thread", "test_suite.py::test_leaves_a_thread_running"),
    ]
    assert " running write_once (" in leaks[0]["detail"]
    assert "thread 'writer' running write_forever (" in leaks[1]["detail"]
    assert "Thread leak detected in test: test_suite.py::test_leaves_a_thread_running" in output


LEGACY_MODULE = """
import os
import sqlite3

CONN = sqlite3.connect(os.environ.get("DATABASE_URL", "file:./data/app.db"), uri=True)


def count_users():
    return CONN.execute("SELECT count(*) FROM users").fetchone()[0]
"""

USES_A_CONNECTION_MADE_AT_IMPORT = """
import pytest

import legacy

pytestmark = pytest.mark.isolated


def test_counts_the_users(db):
    db.execute("INSERT INTO users (email, name) VALUES ('ada@example.com', 'Ada')")
    assert legacy.count_users() == 1
"""


def test_a_missing_table_names_the_connection_a_module_made_at_import(tmp_path: Path) -> None:
    """A module that connects at import gets DATABASE_URL's value outside a test, an empty
    in-memory database: the failure says where that connection was made, and why."""
    (tmp_path / "legacy.py").write_text(LEGACY_MODULE)
    child = run_suite(tmp_path, USES_A_CONNECTION_MADE_AT_IMPORT)
    output = child.stdout + child.stderr
    assert "no such table: users" in output, output
    assert "in-memory connections kept since the tests were collected" in output, output
    assert f"{tmp_path / 'legacy.py'}:5\n" in output, output
    assert "name that module in isolation_database_module" in output, output


KEEPS_A_URL_IN_A_THREAD = """
import os
import sqlite3
import threading

import pytest

pytestmark = pytest.mark.isolated
errors = []
NEXT_TEST_RUNS = threading.Event()
TRIED = threading.Event()


def write_late(url):
    NEXT_TEST_RUNS.wait(timeout=30)
    try:
        conn = sqlite3.connect(url, uri=True)
        conn.execute("CREATE TABLE ghost (x)")
        conn.commit()
        conn.close()
    except Exception as error:
        errors.append(error)
    finally:
        TRIED.set()


def test_starts_a_late_writer():
    url = os.environ["DATABASE_URL"]
    threading.Thread(target=write_late, args=(url,), name="late", daemon=True).start()


def test_runs_meanwhile(db):
    NEXT_TEST_RUNS.set()
    assert TRIED.wait(timeout=30)
    assert [type(error).__name__ for error in errors] == ["DatabaseAccessBlockedError"]
    message = str(errors[0])
    assert "it is the database of a test that has ended, and this thread ('late')" in message
    assert "while test_suite.py::test_runs_meanwhile runs" in message
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ghost'").rows[0][0] == 0
"""


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_another_thread_is_refused_the_database_of_a_test_that_ended(
    tmp_path: Path, strategy: str
) -> None:
    """A thread that kept an ended test's DATABASE_URL would make that database again,
    empty, and write to it unseen; the test running meanwhile did not open it."""
    child = run_suite(tmp_path, KEEPS_A_URL_IN_A_THREAD, "--isolation-strategy", strategy)
    output = child.stdout + child.stderr
    assert "2 passed" in output, output
    assert "Thread leak detected in test: test_suite.py::test_starts_a_late_writer" in output
    assert "not its own" not in output, output


CONNECTS_TO_REFERENCE_DATA_LAZILY = """
import sqlite3

import pytest

pytestmark = pytest.mark.isolated


class Reference:  # reference data on a file of its own, connected on first use (a pool)

    def __init__(self, path):
        self.path, self.connection = path, None

    def rows(self):
        if self.connection is None:
            self.connection = sqlite3.dbapi2.connect(self.path)
        return self.connection.execute("SELECT 1").fetchall()


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    data = Reference(tmp_path_factory.mktemp("reference") / "reference.db")
    yield data
    data.connection.close()


@pytest.mark.parametrize("test", ["first", "second"])
def test_reads_reference_data(reference, test):
    assert reference.rows() == [(1,)]
"""


def test_a_connection_to_another_database_left_open_is_not_the_tests_leak(
    tmp_path: Path,
) -> None:
    """Only a connection to the test's own database is its leak, closed at its end: one to
    reference data that a session fixture opens on first use serves every later test."""
    child = run_suite(tmp_path, CONNECTS_TO_REFERENCE_DATA_LAZILY, "--isolation-strict")
    assert child.returncode == 0, child.stdout + child.stderr
    assert "Connection Leaks: 0" in child.stdout


OPENS_MEMORY = """
import sqlite3

import pytest


@pytest.mark.isolated
def test_in_memory(db):
    sqlite3.connect(":memory:").close()


def test_in_memory_unit():
    sqlite3.connect(":memory:").close()
"""


@pytest.mark.parametrize("url", ["file::memory:?cache=shared", "file:x?mode=memory", ":memory:"])
def test_an_in_memory_database_url_refuses_no_file(tmp_path: Path, url: str) -> None:
    child = run_suite(tmp_path, OPENS_MEMORY, environ={"DATABASE_URL": url})
    assert child.returncode == 0, child.stdout + child.stderr


INTERRUPTED_START = """
import pytest


@pytest.hookimpl(tryfirst=True)  # after the isolation plugin's, before pytest-xdist's
def pytest_sessionstart(session):
    raise KeyboardInterrupt  # Ctrl-C while the session starts
"""


def test_a_session_start_interrupted_after_the_plugins_leaves_no_databases(
    tmp_path: Path,
) -> None:
    """pytest skips ``pytest_sessionfinish`` when a later plugin's session start fails or
    is interrupted (Ctrl-C while pytest-xdist starts its workers), after the plugin made
    this run's copy of the template: the run ends all the same."""
    (tmp_path / "interrupted_start.py").write_text(INTERRUPTED_START)
    args = ("-p", "interrupted_start", "-n", "2", "-o", "isolation_use_dev_shm=false")
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, *args)
    assert child.returncode == 2, child.stdout + child.stderr
    runs = tmp_path / "data" / RUNS_DIR_NAME
    assert (runs / "templates").is_dir(), "the template was built"
    assert [path.name for path in runs.iterdir()] == ["templates"], "no run directory left"


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes on Linux")
def test_a_data_directory_whose_path_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    """SQLite's file names and URIs are UTF-8: a run stopped with a traceback."""
    data = tmp_path / os.fsdecode(b"lat\xe9")
    data.mkdir()
    child = run_suite(tmp_path, ONE_ISOLATED_TEST, "-o", f"isolation_data_dir={data}")
    assert child.returncode == 4, child.stdout + child.stderr
    assert "isolation_data_dir: " in child.stderr, child.stderr
    assert "lat\ufffd is not a UTF-8 path" in child.stderr, child.stderr
    assert "Traceback" not in child.stdout + child.stderr
