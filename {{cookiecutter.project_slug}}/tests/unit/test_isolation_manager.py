"""The isolation manager on its own: scopes, databases, tracking, modules, metrics.

Each test uses a standalone manager with its own data directory under ``tmp_path``, so
nothing here touches the suite's own manager or the project's ``data/`` directory.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lib import connection_tracking, database, scope_databases
from lib.database import (
    AsyncDatabaseClient,
    ClientClosedError,
    DatabaseAccessBlockedError,
    DatabaseClient,
    parse_database_url,
)
from lib.isolation_manager import (
    RUNS_DIR_NAME,
    IsolationWarning,
    ScopeNotFoundError,
    TestIsolationManager,
)
from lib.migrate import pending_migrations
from lib.scope_databases import Strategy, cached_template
from lib.stale_bindings import SEARCHED_ITEMS
from tests.unit.holding import held_in_another_thread
from tests.unit.own_schema import MIGRATIONS_DIR, TABLES

SCOPE_ID = re.compile(r"^test_\d+_[0-9a-f]{8}$")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def manager(data_dir: Path) -> Iterator[TestIsolationManager]:
    """A standalone manager in test mode; always cleaned up, also when a test fails."""
    m = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=data_dir)
    m.initialize_test_mode()
    yield m
    m.complete_test()
    m.emergency_cleanup()
    m.shutdown()


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for throwaway modules."""
    path = tmp_path / "modules"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


@pytest.fixture
def make_module(module_dir: Path) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named throwaway module; returns its name. Removed afterwards."""
    names: list[str] = []

    def make(source: str = "") -> str:
        name = f"isoprobe_{uuid.uuid4().hex[:12]}"
        (module_dir / f"{name}.py").write_text(source)
        names.append(name)
        importlib.invalidate_caches()
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


ProbeManager = Callable[..., TestIsolationManager]


@pytest.fixture
def probe_manager(data_dir: Path) -> Iterator[ProbeManager]:
    """Make managers in test mode that isolate only the throwaway ``isoprobe_*`` modules
    (see ``make_module``); each one's test and scopes are ended afterwards."""
    made: list[TestIsolationManager] = []

    def make(*, defer_binding_scan: bool = False) -> TestIsolationManager:
        m = TestIsolationManager(
            migrations_dir=MIGRATIONS_DIR,
            data_dir=data_dir,
            module_patterns=["isoprobe_*"],
            defer_binding_scan=defer_binding_scan,
        )
        m.initialize_test_mode()
        made.append(m)
        return m

    yield make
    for m in made:
        m.complete_test()
        m.emergency_cleanup()


def _tables(client: DatabaseClient) -> set[str]:
    return set(client.db.table_names())


def isolation_warnings(action: Callable[[], object]) -> list[str]:
    """What ``action`` warns as an ``IsolationWarning``, every warning shown."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in record if issubclass(w.category, IsolationWarning)]


# --- ported from the reference: core functionality ---------------------------------------


def test_scopes_have_unique_well_formed_ids(manager: TestIsolationManager) -> None:
    ids = [manager.create_scope(f"test{i}") for i in range(20)]
    assert len(set(ids)) == 20
    for scope_id in ids:
        assert SCOPE_ID.match(scope_id), scope_id
        assert scope_id in manager.active_scopes
        assert manager.active_scopes[scope_id].id == scope_id
    assert len(manager.active_scopes) == 20


def test_clients_are_isolated_between_scopes(manager: TestIsolationManager) -> None:
    scope1 = manager.create_scope("isolation-test-1")
    scope2 = manager.create_scope("isolation-test-2")
    client1 = manager.get_scoped_database_client(scope1)
    client2 = manager.get_scoped_database_client(scope2)

    assert client1 is not client2
    assert client1.execute("SELECT 1 AS test").rows[0]["test"] == 1
    assert client2.execute("SELECT 2 AS test").rows[0]["test"] == 2
    assert manager.active_scopes[scope1].connections == {client1}
    assert manager.active_scopes[scope2].connections == {client2}

    client1.execute("INSERT INTO users (email, name) VALUES ('one@example.com', 'One')")
    assert client2.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0


def test_scope_cleanup_is_complete(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("cleanup-test")
    client = manager.get_scoped_database_client(scope_id)
    assert scope_id in manager.active_scopes
    assert client in manager.global_connection_registry

    assert manager.destroy_scope(scope_id) is True

    assert scope_id not in manager.active_scopes
    assert client not in manager.global_connection_registry
    assert client.closed


def test_module_cache_clearing_counts_what_it_drops(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    m = probe_manager()
    before = m.performance_metrics["modules_cleared"]
    names = [make_module("VALUE = 1\n") for _ in range(3)]
    for name in names:
        importlib.import_module(name)
    assert m.clear_module_cache() == 3
    assert m.performance_metrics["modules_cleared"] == before + 3
    assert not set(names) & set(sys.modules)
    assert m.clear_module_cache() == 0
    assert m.performance_metrics["modules_cleared"] == before + 3


def test_metrics_are_accurate(manager: TestIsolationManager) -> None:
    initial = dict(manager.performance_metrics)

    scope_id = manager.create_scope("metrics-test")
    manager.get_scoped_database_client(scope_id)
    manager.get_scoped_database_client(scope_id)  # the same client: counted once
    manager.destroy_scope(scope_id)

    final = manager.performance_metrics
    assert final["scopes_created"] == initial["scopes_created"] + 1
    assert final["scopes_destroyed"] == initial["scopes_destroyed"] + 1
    assert final["connections_created"] == initial["connections_created"] + 1
    assert final["connections_closed"] == initial["connections_closed"] + 1
    assert final["average_cleanup_time"] > 0
    assert final["emergency_cleanups"] == initial["emergency_cleanups"]


def test_repeated_requests_return_the_same_client(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("same client")
    first = manager.get_scoped_database_client(scope_id)
    assert manager.get_scoped_database_client(scope_id) is first
    assert len(manager.active_scopes[scope_id].connections) == 1


def test_manager_is_not_collected_as_a_test() -> None:
    assert TestIsolationManager.__test__ is False


# --- databases ---------------------------------------------------------------------------


def test_database_file_exists_at_creation_and_is_removed_with_wal_and_shm(
    manager: TestIsolationManager, data_dir: Path
) -> None:
    scope_id = manager.create_scope("file lifecycle")
    path = manager.active_scopes[scope_id].database_path
    assert path is not None
    assert path.exists(), "the file must exist before any client is opened"
    assert path.is_relative_to(data_dir / RUNS_DIR_NAME)

    client = manager.get_scoped_database_client(scope_id)
    client.execute("INSERT INTO logs (level, message) VALUES ('info', 'hello')")
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    assert wal.exists()
    assert shm.exists()

    manager.destroy_scope(scope_id)
    assert not path.exists()
    assert not wal.exists()
    assert not shm.exists()


@pytest.mark.skipif(os.name == "nt", reason="Windows cannot delete an open file: closes first")
def test_a_scope_never_copies_its_writes_into_the_file_it_deletes(
    manager: TestIsolationManager,
) -> None:
    """The files go before the close, so SQLite skips the checkpoint: the test's WAL is
    not written back into a database file that is about to be deleted."""
    scope_id = manager.create_scope("no checkpoint")
    path = manager.active_scopes[scope_id].database_path
    assert path is not None
    client = manager.get_scoped_database_client(scope_id)
    client.execute("INSERT INTO logs (level, message) VALUES ('info', 'only in the WAL')")
    with open(path, "rb") as database_file:  # still readable once the file is deleted
        before = database_file.read()
        assert manager.destroy_scope(scope_id)
        database_file.seek(0)
        assert database_file.read() == before
    assert client.closed
    assert not path.exists()


def test_scope_database_has_the_migrated_schema(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("schema")
    client = manager.get_scoped_database_client(scope_id)
    assert _tables(client) >= TABLES
    assert pending_migrations(client, MIGRATIONS_DIR) == []
    assert client.execute("PRAGMA foreign_keys").rows[0][0] == 1
    assert client.execute("PRAGMA journal_mode").rows[0][0] == "wal"
    for table in TABLES:
        assert client.execute(f"SELECT COUNT(*) FROM {table}").rows[0][0] == 0


def test_memory_strategy_scope(manager: TestIsolationManager, data_dir: Path) -> None:
    files_before = set(data_dir.rglob("*.db"))
    scope1 = manager.create_scope("memory-1", strategy="memory")
    scope2 = manager.create_scope("memory-2", strategy="memory")
    assert manager.active_scopes[scope1].database_path is None
    assert set(data_dir.rglob("*.db")) == files_before

    client1 = manager.get_scoped_database_client(scope1)
    client2 = manager.get_scoped_database_client(scope2)
    assert _tables(client1) >= TABLES
    client1.execute("INSERT INTO users (email, name) VALUES ('m@example.com', 'M')")
    assert client1.execute("SELECT COUNT(*) FROM users").rows[0][0] == 1
    assert client2.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
    assert client1.execute("PRAGMA foreign_keys").rows[0][0] == 1

    assert manager.destroy_scope(scope1)
    assert client1.closed
    assert not client2.closed


def test_memory_scope_is_reachable_through_its_url(manager: TestIsolationManager) -> None:
    """Another connection opened from the scope's URL shares its database from the
    moment the scope exists; the scope holds it until it ends, whatever connections
    close, and it is gone with the scope."""
    scope_id = manager.create_scope("memory url", strategy="memory")
    url = manager.active_scopes[scope_id].database_url
    other = DatabaseClient(parse_database_url(url), owner="the application")
    try:
        assert _tables(other) >= TABLES
        other.execute("INSERT INTO users (email, name) VALUES ('u@example.com', 'U')")
        client = manager.get_scoped_database_client(scope_id)
        assert client.execute("SELECT name FROM users").rows[0][0] == "U"
        client.close()  # ``other`` still holds the database: reopening keeps its rows
        client = manager.get_scoped_database_client(scope_id)
        assert client.execute("SELECT COUNT(*) FROM users").rows[0][0] == 1
    finally:
        other.close()
    client.close()  # the last client: the scope still holds the database
    client = manager.get_scoped_database_client(scope_id)
    assert client.execute("SELECT COUNT(*) FROM users").rows[0][0] == 1
    assert manager.destroy_scope(scope_id)
    after = DatabaseClient(parse_database_url(url), owner="after the scope")
    try:
        assert _tables(after) == set()
    finally:
        after.close()


def test_unknown_strategy_is_rejected(manager: TestIsolationManager) -> None:
    with pytest.raises(ValueError, match="strategy"):
        manager.create_scope("bad", strategy="postgres")


def test_each_scope_gets_a_fresh_copy_removed_with_it(data_dir: Path) -> None:
    """Six scopes in a row: six different files, each empty, each gone after its scope."""
    m = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=data_dir)
    m.initialize_test_mode()
    try:
        paths: set[Path] = set()
        for i in range(6):
            scope_id = m.create_scope(f"fresh-{i}")
            path = m.active_scopes[scope_id].database_path
            assert path is not None
            assert path.exists()
            paths.add(path)
            client = m.get_scoped_database_client(scope_id)
            assert client.execute("SELECT COUNT(*) FROM logs").rows[0][0] == 0
            client.execute("INSERT INTO logs (level, message) VALUES ('info', ?)", (str(i),))
            assert m.destroy_scope(scope_id)
            assert not path.exists()
        assert len(paths) == 6
    finally:
        m.emergency_cleanup()
        m.shutdown()
    leftovers = [
        p for p in (data_dir / RUNS_DIR_NAME).rglob("*.db") if p.parent.name != "templates"
    ]
    assert all(p.name.startswith("template") for p in leftovers), leftovers


# --- failures ----------------------------------------------------------------------------


def test_stale_client_names_its_scope_and_test(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("tests/test_orders.py::test_refund")
    client = manager.get_scoped_database_client(scope_id)
    manager.destroy_scope(scope_id)
    with pytest.raises(ClientClosedError) as excinfo:
        client.execute("SELECT 1")
    message = str(excinfo.value)
    assert message.startswith("CLIENT_CLOSED:")
    assert scope_id in message
    assert "tests/test_orders.py::test_refund" in message
    assert "closed at" in message
    assert "test_isolation_manager.py:" in message  # where destroy_scope was called


def test_a_client_application_code_kept_is_closed_by_its_scope(
    manager: TestIsolationManager,
) -> None:
    """The singleton hands out the scope's client; the scope's end closes it, with the
    scope's timeout and reason, not the reset of the singleton before it (destroying the
    current test's scope resets the singleton first, as an emergency cleanup does)."""
    scope_id = manager.ensure_test_isolation("tests/test_orders.py::test_export")
    kept = database.get_database_client()
    manager.destroy_scope(scope_id)
    with pytest.raises(ClientClosedError, match=r"test_export.* when that scope ended"):
        kept.execute("SELECT 1")
    manager.complete_test()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"strategy": "disk"}, "strategy must be 'file' or 'memory', not 'disk'"),
        ({"isolate_module": False}, "unknown scope option isolate_module: the options are "),
    ],
    ids=["bad value", "misspelt name"],
)
def test_a_scope_that_cannot_be_made_changes_nothing(
    manager: TestIsolationManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, object],
    error: str,
) -> None:
    """The test gets no database, and never the developer's: the singleton stays blocked
    and DATABASE_URL as it was."""
    developers = f"file:{tmp_path / 'developers.db'}"
    monkeypatch.setenv("DATABASE_URL", developers)
    previous = database.block_database_access("outside any test")
    try:
        with pytest.raises((TypeError, ValueError), match=re.escape(error)):
            manager.ensure_test_isolation("bad options", **options)
        assert manager.current_test_id is None
        assert os.environ["DATABASE_URL"] == developers
        with pytest.raises(database.DatabaseAccessBlockedError, match="outside any test"):
            database.get_database_client()
    finally:
        database.block_database_access(previous)
    assert not (tmp_path / "developers.db").exists()


def test_destroying_an_unknown_scope_returns_false(manager: TestIsolationManager) -> None:
    created = manager.performance_metrics["scopes_destroyed"]
    assert manager.destroy_scope("test_0_00000000") is False
    assert manager.performance_metrics["scopes_destroyed"] == created


def test_destroying_twice_returns_false_the_second_time(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("twice")
    assert manager.destroy_scope(scope_id) is True
    assert manager.destroy_scope(scope_id) is False


def test_unknown_scope_id_raises_scope_not_found(manager: TestIsolationManager) -> None:
    with pytest.raises(ScopeNotFoundError, match=r"test_123_deadbeef'.*without an id") as excinfo:
        manager.get_scoped_database_client("test_123_deadbeef")
    assert isinstance(excinfo.value, LookupError)


def test_no_current_scope_is_a_clear_error(manager: TestIsolationManager) -> None:
    with pytest.raises(RuntimeError, match="integration"):
        manager.get_scoped_database_client()


def test_a_client_whose_close_raises_does_not_break_destroy(
    manager: TestIsolationManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope_id = manager.create_scope("close raises")
    client = manager.get_scoped_database_client(scope_id)
    path = manager.active_scopes[scope_id].database_path
    assert path is not None
    real_close = client.close

    def broken_close(timeout: float = 5.0, *, reason: str | None = None) -> bool:
        raise OSError("disk on fire")

    monkeypatch.setattr(client, "close", broken_close)
    assert manager.destroy_scope(scope_id) is False
    assert scope_id not in manager.active_scopes
    assert client not in manager.global_connection_registry
    assert manager.get_stats()["active_connection_count"] == 0
    real_close()


def test_a_hung_client_is_given_up_after_the_connection_timeout(
    manager: TestIsolationManager,
) -> None:
    """A client held by another thread cannot stall cleanup beyond connection_timeout."""
    scope_id = manager.create_scope("hung", connection_timeout=0.2)
    client = manager.get_scoped_database_client(scope_id)
    with held_in_another_thread(client):
        started = time.monotonic()
        assert manager.destroy_scope(scope_id) is False
        assert time.monotonic() - started < 5
        assert scope_id not in manager.active_scopes
        assert client.closed
        assert client not in manager.global_connection_registry


def test_a_client_closed_by_its_test_leaves_the_registry(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("closes its own client")
    client = manager.get_scoped_database_client(scope_id)
    client.close()
    assert client not in manager.global_connection_registry
    assert len(manager.global_connection_registry) == 0
    reopened = manager.get_scoped_database_client(scope_id)
    assert list(manager.global_connection_registry) == [reopened]
    assert manager.get_stats()["active_connection_count"] == 1
    manager.destroy_scope(scope_id)
    assert len(manager.global_connection_registry) == 0


def test_untracked_connections_stay_out_of_the_registry(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("untracked", track_connections=False)
    client = manager.get_scoped_database_client(scope_id)
    assert client not in manager.global_connection_registry
    manager.destroy_scope(scope_id)
    assert client.closed


# --- stats and emergency cleanup ---------------------------------------------------------


def test_get_stats_shape(manager: TestIsolationManager) -> None:
    scope_id = manager.create_scope("stats-test")
    manager.get_scoped_database_client(scope_id)
    stats = manager.get_stats()
    assert stats["is_test_mode"] is True
    assert stats["current_test_id"] is None
    assert stats["active_scope_count"] == 1
    assert stats["active_connection_count"] == 1
    (scope,) = stats["scopes"]
    assert scope["id"] == scope_id
    assert scope["test_name"] == "stats-test"
    assert scope["connection_count"] == 1
    assert scope["duration"] >= 0
    assert scope["migration_completed"] is True
    assert scope["database_path"] == str(manager.active_scopes[scope_id].database_path)

    manager.destroy_scope(scope_id)
    after = manager.get_stats()
    assert after["active_scope_count"] == 0
    assert after["active_connection_count"] == 0
    assert after["scopes"] == []


def test_emergency_cleanup_clears_everything_and_stays_usable(
    manager: TestIsolationManager,
) -> None:
    ids = [manager.create_scope(f"emergency-{i}") for i in range(3)]
    clients = [manager.get_scoped_database_client(scope_id) for scope_id in ids]
    paths = [manager.active_scopes[scope_id].database_path for scope_id in ids]

    manager.emergency_cleanup()

    assert manager.active_scopes == {}
    assert len(manager.global_connection_registry) == 0
    assert manager.performance_metrics["emergency_cleanups"] == 1
    assert all(client.closed for client in clients)
    assert not any(path is not None and path.exists() for path in paths)

    scope_id = manager.create_scope("post-emergency-test")
    client = manager.get_scoped_database_client(scope_id)
    assert client.execute("SELECT 1 AS recovered").rows[0]["recovered"] == 1


def _dead_pid() -> int:
    """The pid of a process that has already exited."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(finished.stdout)


def test_emergency_cleanup_removes_a_killed_runs_files(
    manager: TestIsolationManager, data_dir: Path
) -> None:
    """A run killed mid-test leaves its directory behind; the next cleanup deletes it."""
    stale_run = data_dir / RUNS_DIR_NAME / f"{_dead_pid()}-0badc0de"
    stale_run.mkdir(parents=True)
    for name in ("test_1_0badc0de.db", "test_1_0badc0de.db-wal", "template-abc.db"):
        (stale_run / name).write_bytes(b"left behind")
    live_scope = manager.create_scope("still running")
    live_path = manager.active_scopes[live_scope].database_path
    assert live_path is not None

    manager.emergency_cleanup()

    assert not stale_run.exists()
    assert live_path.parent.exists(), "this run's own directory stays usable"
    manager.create_scope("after cleanup")


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_shutdown_leaves_nothing_of_the_process_behind_and_the_manager_usable(
    manager: TestIsolationManager, data_dir: Path, strategy: str
) -> None:
    """Not only under pytest: a script that drives the manager and ends with shutdown()
    leaves no directory of its own (in /dev/shm, say) for the next run to find."""

    def process_directories() -> list[str]:
        runs = data_dir / RUNS_DIR_NAME  # beside the template cache, which stays
        return [path.name.split("-")[0] for path in runs.iterdir() if path.name != "templates"]

    manager.destroy_scope(manager.create_scope("first", strategy=strategy))
    assert process_directories() == [str(os.getpid())]

    manager.shutdown()

    assert process_directories() == []
    manager.destroy_scope(manager.create_scope("after shutdown", strategy=strategy))
    manager.shutdown()
    assert process_directories() == []


def test_initialize_removes_a_killed_runs_files(data_dir: Path) -> None:
    stale_run = data_dir / RUNS_DIR_NAME / f"{_dead_pid()}-0badf00d"
    stale_run.mkdir(parents=True)
    (stale_run / "test_2_0badf00d.db").write_bytes(b"left behind")
    m = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=data_dir)
    try:
        m.initialize_test_mode()
        assert not stale_run.exists()
    finally:
        m.emergency_cleanup()


def test_a_killed_runs_files_in_ram_go_also_when_this_run_keeps_its_own_on_disk(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """isolation_use_dev_shm turned off since, or /dev/shm now too full to use: what a
    killed run left there is deleted all the same."""
    (tmp_path / "shm").mkdir()
    monkeypatch.setattr(scope_databases, "SHM_ROOT", tmp_path / "shm")
    shm_runs = scope_databases.all_runs_roots(data_dir)[-1]
    assert shm_runs.parent == tmp_path / "shm"
    stale_run = shm_runs / f"{_dead_pid()}-0badcafe"
    stale_run.mkdir(parents=True)
    (stale_run / "db-1.db").write_bytes(b"left behind")
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data_dir
    )  # its own runs go under data_dir
    try:
        m.initialize_test_mode()
        assert not shm_runs.exists()
    finally:
        m.emergency_cleanup()
        m.shutdown()


def test_a_live_runs_files_are_kept(manager: TestIsolationManager, data_dir: Path) -> None:
    """Another run still going (its pid is alive) keeps its databases."""
    live_run = data_dir / RUNS_DIR_NAME / f"{os.getppid()}-1ee7c0de"
    live_run.mkdir(parents=True)
    (live_run / "test_3_1ee7c0de.db").write_bytes(b"in use")
    manager.emergency_cleanup()
    assert live_run.exists()


def test_a_client_another_thread_keeps_busy_past_its_scope_is_a_connection_leak(
    manager: TestIsolationManager,
) -> None:
    """Not closed when the scope ended: the report counts it and --isolation-strict fails."""
    scope_id = manager.create_scope("busy at the end", connection_timeout=0.2)
    client = manager.get_scoped_database_client(scope_id)
    with held_in_another_thread(client):
        assert manager.destroy_scope(scope_id) is False
    leaks = [leak for leak in manager.leaks if leak.kind == "connection"]
    assert [leak.test for leak in leaks] == ["busy at the end"]
    assert "still in use in another thread 0.2s after its scope ended" in leaks[0].detail


# --- the current test --------------------------------------------------------------------


def test_ensure_test_isolation_points_the_application_at_the_scope(
    manager: TestIsolationManager,
) -> None:
    """While current, DATABASE_URL and the singleton answer with the scope's database."""
    url_before = os.environ.get("DATABASE_URL")
    scope_id = manager.ensure_test_isolation("app-test")
    assert manager.current_test_id == scope_id
    path = manager.active_scopes[scope_id].database_path
    assert path is not None
    assert Path(parse_database_url(os.environ["DATABASE_URL"])) == path

    client = manager.get_scoped_database_client()
    assert database.get_database_client() is client
    database.get_database_client().execute(
        "INSERT INTO users (email, name) VALUES ('app@example.com', 'App')"
    )
    assert client.execute("SELECT COUNT(*) FROM users").rows[0][0] == 1

    assert manager.complete_test() is True
    assert manager.current_test_id is None
    assert client.closed
    assert not path.exists()
    assert os.environ.get("DATABASE_URL") == url_before
    # Back in a unit test: the singleton is blocked again.
    with pytest.raises(DatabaseAccessBlockedError):
        database.get_database_client()


def test_database_url_names_the_scope_file_whatever_the_directory_is_called(
    tmp_path: Path,
) -> None:
    """A ``%2F``, ``?`` or ``#`` in a directory name (a CI branch workspace, say) must not
    send a connection made from DATABASE_URL to another file."""
    data_dir = tmp_path / "feature%2Ffoo?x#y" / "data"
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data_dir, runs_dir=data_dir / RUNS_DIR_NAME
    )
    m.initialize_test_mode()
    try:
        scope_id = m.ensure_test_isolation("odd directory")
        path = m.active_scopes[scope_id].database_path
        assert path is not None
        assert parse_database_url(os.environ["DATABASE_URL"]) == str(path)
        m.get_scoped_database_client().execute(
            "INSERT INTO users (email, name) VALUES ('odd@example.com', 'Odd')"
        )
        with contextlib.closing(
            sqlite3.connect(parse_database_url(os.environ["DATABASE_URL"]))
        ) as own:
            assert own.execute("SELECT name FROM users").fetchall() == [("Odd",)]
        m.complete_test()
        in_memory = m.create_scope("odd directory, in memory", strategy="memory")
        client = m.get_scoped_database_client(in_memory)
        assert client.execute("SELECT COUNT(*) FROM users").rows[0][0] == 0
        cached = cached_template(MIGRATIONS_DIR, data_dir)
        built = cached.stat().st_mtime_ns
        assert cached_template(MIGRATIONS_DIR, data_dir).stat().st_mtime_ns == built  # reused
    finally:
        m.emergency_cleanup()
        m.shutdown()
    assert not (tmp_path / "feature").exists()


def test_next_test_gets_a_new_scope(manager: TestIsolationManager) -> None:
    first = manager.ensure_test_isolation("first")
    first_client = manager.get_scoped_database_client()
    second = manager.ensure_test_isolation("second")  # ends the first test's scope
    assert first != second
    assert first not in manager.active_scopes
    assert first_client.closed
    assert manager.get_scoped_database_client() is not first_client


def test_complete_test_without_a_test_is_harmless(manager: TestIsolationManager) -> None:
    assert manager.complete_test() is True


# --- module isolation --------------------------------------------------------------------


def test_modules_imported_during_a_scope_are_dropped_at_its_end(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    m = probe_manager()
    kept = make_module("STATE = []\n")
    importlib.import_module(kept)  # imported before the scope: stays
    scope_id = m.create_scope("imports")
    dropped = make_module("STATE = []\n")
    module = importlib.import_module(dropped)
    module.STATE.append("import-time state")
    assert dropped in sys.modules

    m.destroy_scope(scope_id)

    assert dropped not in sys.modules
    assert kept in sys.modules
    assert importlib.import_module(dropped).STATE == []  # fresh on next import


def test_a_dropped_module_is_gone_from_its_package_too(
    probe_manager: ProbeManager, module_dir: Path
) -> None:
    """``from package import module`` finds the package's attribute first: left there, the
    next test would get the dropped module, import-time state and all."""
    package = f"isoprobe_{uuid.uuid4().hex[:12]}"
    (module_dir / package).mkdir()
    (module_dir / package / "__init__.py").write_text("")
    (module_dir / package / "registry.py").write_text("STATE = []\n")
    importlib.invalidate_caches()
    importlib.import_module(package)  # imported before the scope: stays
    m = probe_manager()
    try:
        scope_id = m.create_scope("imports a submodule")
        first = importlib.import_module(f"{package}.registry")
        first.STATE.append("import-time state")
        m.destroy_scope(scope_id)
        assert not hasattr(sys.modules[package], "registry")
        second = vars(__import__(package, fromlist=["registry"]))["registry"]
        assert second is not first
        assert second.STATE == []
    finally:
        for name in [name for name in sys.modules if name.startswith(package)]:
            del sys.modules[name]


def test_project_root_selects_modules_by_file(
    data_dir: Path, module_dir: Path, make_module: Callable[[str], str]
) -> None:
    """Without patterns, modules whose file lies in the project are the ones dropped."""
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data_dir, project_root=module_dir
    )
    m.initialize_test_mode()
    try:
        scope_id = m.create_scope("by file")
        name = make_module("")
        importlib.import_module(name)
        import colorsys  # stdlib, imported during the scope: never dropped

        m.destroy_scope(scope_id)
        assert name not in sys.modules
        assert colorsys.__name__ in sys.modules
    finally:
        m.emergency_cleanup()


def test_scope_option_isolate_modules_false_keeps_modules(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    m = probe_manager()
    scope_id = m.create_scope("keep modules", isolate_modules=False)
    name = make_module("")
    importlib.import_module(name)
    m.destroy_scope(scope_id)
    assert name in sys.modules


def test_a_module_imported_after_another_was_removed_is_dropped(
    data_dir: Path, make_module: Callable[[str], str]
) -> None:
    """As many modules at the end of the scope as at its start does not mean nothing was
    imported: this test removes one module and imports another."""
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data_dir, module_patterns=["isoprobe_*"]
    )
    earlier, later = make_module(""), make_module("")
    importlib.import_module(earlier)
    m.initialize_test_mode()
    try:
        scope_id = m.create_scope("swap modules")
        del sys.modules[earlier]
        importlib.import_module(later)
        assert m.destroy_scope(scope_id)
        assert later not in sys.modules
    finally:
        m.emergency_cleanup()


def test_isolation_core_is_never_dropped(data_dir: Path) -> None:
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data_dir, module_patterns=["lib", "lib.*"]
    )
    m.initialize_test_mode()
    try:
        m.clear_module_cache(frozenset())
        for name in ("lib", "lib.database", "lib.migrate", "lib.isolation_manager"):
            assert name in sys.modules
    finally:
        m.emergency_cleanup()


def test_stdlib_and_third_party_are_never_dropped(data_dir: Path) -> None:
    """Even a pattern that names them does not drop the stdlib or installed packages."""
    names = ("colorsys", "sqlite_fts4")  # stdlib; installed with sqlite-utils
    modules = {name: importlib.import_module(name) for name in names}
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data_dir, module_patterns=list(names)
    )
    m.initialize_test_mode()
    try:
        m.clear_module_cache(frozenset())
        for name, module in modules.items():
            assert sys.modules.get(name) is module
    finally:
        m.emergency_cleanup()
        for name, module in modules.items():
            sys.modules.setdefault(name, module)


def test_module_global_holding_the_client_is_reported(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    """The root cause of CLIENT_CLOSED, named by module and attribute."""
    m = probe_manager()
    name = make_module("CACHED_CLIENT = None\nASYNC_CLIENT = None\nOTHER = 1\n")
    module = importlib.import_module(name)
    scope_id = m.create_scope("caches the client")
    client = m.get_scoped_database_client(scope_id)
    vars(module)["CACHED_CLIENT"] = client
    vars(module)["ASYNC_CLIENT"] = AsyncDatabaseClient(client)

    with pytest.warns(IsolationWarning) as record:
        m.destroy_scope(scope_id)

    messages = [str(w.message) for w in record]
    assert any(f"{name}.CACHED_CLIENT" in message for message in messages)
    assert any(f"{name}.ASYNC_CLIENT" in message for message in messages)
    assert not any(f"{name}.OTHER" in message for message in messages)
    assert f"{name}.CACHED_CLIENT" in m.stale_bindings
    assert any(scope_id in message for message in messages)
    with pytest.raises(ClientClosedError):
        client.execute("SELECT 1")


@pytest.mark.parametrize("defer", [False, True], ids=["at once", "deferred"])
def test_a_client_kept_by_a_module_the_patterns_do_not_drop_is_reported(
    data_dir: Path, module_dir: Path, make_module: Callable[[str], str], defer: bool
) -> None:
    """The module patterns say which modules are dropped, not which are searched: a
    project module they leave in place keeps its globals, the client too, into the next
    test (patterns matching no module, ``["-"]``, as ADOPTING.md suggests)."""
    m = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR,
        data_dir=data_dir,
        module_patterns=["-"],
        project_root=module_dir,
        defer_binding_scan=defer,
    )
    m.initialize_test_mode()
    try:
        name = make_module("CACHED = None\n")
        module = importlib.import_module(name)
        scope_id = m.create_scope("caches the client")
        vars(module)["CACHED"] = m.get_scoped_database_client(scope_id)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            m.destroy_scope(scope_id)
        m.deferred_stale_bindings()
        assert m.stale_bindings == [f"{name}.CACHED"]
        assert sys.modules[name] is module  # not dropped
    finally:
        m.emergency_cleanup()


LAZY_PROXY = """
class LazyProxy:  # as lazy-object-proxy's: asking its class runs its factory
    @property
    def __class__(self):
        raise KeyError("PAYMENTS_API_KEY")


API_KEY = LazyProxy()


"""


def test_a_client_kept_in_a_class_attribute_or_a_registry_is_named(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    """One level inside a module's globals: a class of the module, a dict, a list; not in
    a table of data, and without running a lazy proxy's code."""
    m = probe_manager()
    name = make_module(
        LAZY_PROXY + "class Repository:\n    client = None\n\n\nREGISTRY = {}\nPOOL = []\n"
    )
    module = importlib.import_module(name)
    scope_id = m.create_scope("keeps the client inside globals")
    client = m.get_scoped_database_client(scope_id)
    module.Repository.client = client
    module.REGISTRY["orders"] = AsyncDatabaseClient(client)
    module.POOL.append(client)
    vars(module)["ROWS"] = [*range(SEARCHED_ITEMS), client]  # data, not searched
    with pytest.warns(IsolationWarning) as record:
        m.destroy_scope(scope_id)
    messages = [str(warning.message) for warning in record]
    assert any(f"{name}.Repository.client still holds the" in message for message in messages)
    assert sorted(m.stale_bindings) == [
        f"{name}.POOL[0]",
        f"{name}.REGISTRY['orders']",
        f"{name}.Repository.client",
    ]


@pytest.mark.parametrize("defer", [False, True], ids=["now", "deferred"])
def test_a_module_imported_during_the_test_holding_the_client_is_named(
    probe_manager: ProbeManager, make_module: Callable[[str], str], defer: bool
) -> None:
    """The classic import-time ``CLIENT = get_database_client()``: the module is dropped at
    scope end, but named first (a module imported earlier may still hold it)."""
    m = probe_manager(defer_binding_scan=defer)
    handover = importlib.import_module(make_module("CLIENT = None\n"))
    scope_id = m.create_scope("imports a module that keeps the client")
    vars(handover)["CLIENT"] = m.get_scoped_database_client(scope_id)
    name = make_module(f"from {handover.__name__} import CLIENT\n")
    importlib.import_module(name)
    with pytest.warns(IsolationWarning):  # for the handover module too
        m.destroy_scope(scope_id)
    assert f"{name}.CLIENT" in m.stale_bindings
    assert name not in sys.modules


def test_deferred_scan_names_an_earlier_module_holding_the_client_when_asked(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    """With ``defer_binding_scan`` a module imported before the scope is searched when
    ``deferred_stale_bindings()`` runs (the plugin: once pytest lets go of the test)."""
    m = probe_manager(defer_binding_scan=True)
    module = importlib.import_module(make_module("CLIENT = None\n"))
    scope_id = m.create_scope("keeps the client")
    vars(module)["CLIENT"] = m.get_scoped_database_client(scope_id)
    assert isolation_warnings(lambda: m.destroy_scope(scope_id)) == []
    assert m.stale_bindings == []

    (message,) = m.deferred_stale_bindings()
    assert re.search(rf"{module.__name__}\.CLIENT .*{scope_id}", message), message
    assert m.stale_bindings == [f"{module.__name__}.CLIENT"]
    assert m.deferred_stale_bindings() == []  # each ended scope is searched once
    assert m.stale_bindings == [f"{module.__name__}.CLIENT"]


def test_a_stale_binding_raised_as_an_error_still_ends_the_scope(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    """With filterwarnings "error" the warning fails the caller, after the scope is gone
    and the modules it imported are dropped, not instead."""
    m = probe_manager()
    scope_id = m.create_scope("imports a module that keeps the client")
    name = make_module("CLIENT = None\n")
    vars(importlib.import_module(name))["CLIENT"] = m.get_scoped_database_client(scope_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IsolationWarning)
        with pytest.raises(IsolationWarning, match=rf"{name}\.CLIENT"):
            m.destroy_scope(scope_id)
    assert name not in sys.modules
    assert m.active_scopes == {}
    assert m.performance_metrics["scopes_destroyed"] == 1


def test_complete_test_puts_everything_back_before_a_stale_binding_error(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    """The test's environment is restored and its other leaks recorded and closed first."""
    m = probe_manager()
    url_before = os.environ.get("DATABASE_URL")
    m.ensure_test_isolation("keeps its client, forgets a scope")
    name = make_module("CLIENT = None\n")
    vars(importlib.import_module(name))["CLIENT"] = m.get_scoped_database_client()
    m.create_scope("forgotten")
    with warnings.catch_warnings():
        warnings.simplefilter("error", IsolationWarning)
        with pytest.raises(IsolationWarning, match=rf"{name}\.CLIENT"):
            m.complete_test()
    assert os.environ.get("DATABASE_URL") == url_before
    assert m.active_scopes == {}
    assert [leak.kind for leak in m.leaks] == ["stale_binding", "scope"]
    with pytest.raises(DatabaseAccessBlockedError):
        database.get_database_client()


def test_no_warning_when_nothing_holds_the_client(
    probe_manager: ProbeManager, make_module: Callable[[str], str]
) -> None:
    m = probe_manager()
    importlib.import_module(make_module("CLIENT = None\n"))
    scope_id = m.create_scope("clean")
    m.get_scoped_database_client(scope_id).execute("SELECT 1")
    assert isolation_warnings(lambda: m.destroy_scope(scope_id)) == []
    assert m.stale_bindings == []


# --- the developer's database ------------------------------------------------------------


class _BytesPath(os.PathLike[bytes]):
    """A path-like object whose path is bytes, as os.PathLike allows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return bytes(self.path)


def test_a_refused_database_is_refused_under_every_spelling_and_others_open(
    tmp_path: Path,
) -> None:
    own = tmp_path / "data" / "app.db"
    own.parent.mkdir()
    elsewhere = tmp_path / "other.db"
    spellings: list[str | bytes | os.PathLike[str] | os.PathLike[bytes]] = [
        str(own),
        f"file:{own}",
        f"file:{own.parent}/%61pp.db?mode=rwc",
        own,
        bytes(own),
        _BytesPath(own),
    ]
    connection_tracking.refuse_files([str(own)], "it is the developer's")
    try:
        for spelling in spellings:
            with pytest.raises(database.DatabaseAccessBlockedError, match="the developer's"):
                sqlite3.connect(spelling, uri=True)
        others: list[str | os.PathLike[bytes]] = [str(elsewhere), _BytesPath(elsewhere)]
        for other in [*others, ":memory:", "file::memory:"]:
            sqlite3.connect(other, uri=True).close()
    finally:
        connection_tracking.refuse_files([], "")
    assert not own.exists()
    sqlite3.connect(own).close()  # lifted


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_keeping_a_failed_tests_database_is_no_other_database_it_opened(
    manager: TestIsolationManager, tmp_path: Path, strategy: Strategy
) -> None:
    """The kept copy is the isolation's own file, not a database the test opened besides
    its own: no warning about the application writing to its real database."""
    manager.scratch_dirs.clear()  # the kept copy is under tmp_path, a scratch directory
    manager.ensure_test_isolation("failed", strategy=strategy)
    said = isolation_warnings(
        lambda: manager.complete_test(keep_database=tmp_path / "kept" / "failed.db")
    )
    assert (tmp_path / "kept" / "failed.db").is_file()
    assert said == []


def test_an_in_memory_database_is_kept_after_the_test_closed_its_client(
    manager: TestIsolationManager, tmp_path: Path
) -> None:
    """The scope's own connection still holds the database: the kept copy has the rows."""
    manager.ensure_test_isolation("failed", strategy="memory")
    client = manager.get_scoped_database_client()
    client.execute("INSERT INTO logs (level, message) VALUES ('error', 'kept')")
    client.close()
    manager.complete_test(keep_database=tmp_path / "kept.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "kept.db")) as kept:
        assert kept.execute("SELECT message FROM logs").fetchall() == [("kept",)]


def test_a_scope_interrupted_while_its_database_is_kept_still_closes_and_deletes_it(
    probe_manager: ProbeManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_module: Callable[[str], str],
) -> None:
    """A timeout while saving a failed test's database (a large one) leaves no open
    connection, no file and none of the test's modules behind."""
    manager = probe_manager()
    scope_id = manager.ensure_test_isolation("failed", strategy="file")
    client = manager.get_scoped_database_client()
    database_path = manager.active_scopes[scope_id].database_path
    assert database_path is not None
    assert database_path.exists()
    module = make_module("")
    importlib.import_module(module)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scope_databases, "keep_database", interrupted)
    with pytest.raises(KeyboardInterrupt):
        manager.complete_test(keep_database=tmp_path / "kept.db")
    assert client.closed
    assert not database_path.exists()
    assert module not in sys.modules


def test_a_reset_hook_failing_as_a_scope_cannot_be_made_is_noted_on_its_error(
    tmp_path: Path,
) -> None:
    """The scope's error is raised, and the hook's failure said with it, not lost."""

    def reset() -> None:
        raise RuntimeError("the pool would not close")

    manager = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data", reset_hooks=[reset]
    )
    manager.initialize_test_mode()
    try:
        with pytest.raises(ValueError, match="strategy must be") as raised:
            manager.ensure_test_isolation("bad options", strategy="disk")
        notes = raised.value.__notes__
        assert len(notes) == 1
        assert "the database reset hook failed" in notes[0]
        assert "the pool would not close" in notes[0]
    finally:
        manager.shutdown()


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "warned"])
def test_a_database_of_the_project_the_test_would_write_besides_its_own(
    tmp_path: Path, refuse: bool
) -> None:
    """Opened by the project's code (this test): refused before SQLite makes the file; or,
    where the manager does not refuse other databases, opened, and named in a warning at
    the test's end."""
    manager = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data", refuse_other_databases=refuse
    )
    manager.initialize_test_mode()
    manager.scratch_dirs.clear()  # tmp_path stands for a directory of the application's
    elsewhere = tmp_path / "app.db"
    try:
        manager.ensure_test_isolation("writes elsewhere")
        if refuse:
            with pytest.raises(DatabaseAccessBlockedError, match="it is not the database of"):
                sqlite3.connect(elsewhere)
            assert not elsewhere.exists()
        else:
            sqlite3.connect(elsewhere).close()
        said = isolation_warnings(manager.complete_test)
        assert any(f"opened {elsewhere}" in message for message in said) is not refuse
    finally:
        manager.shutdown()


@pytest.mark.parametrize("strategy", ["file", "memory"])
def test_a_database_of_an_earlier_test_is_refused_as_such(
    manager: TestIsolationManager, strategy: Strategy
) -> None:
    """Its URL kept past its test (a wider fixture, a module global): the refusal says so,
    rather than that the code reads another setting than DATABASE_URL (in memory, a new
    empty database would open). A scope that outlives its test is no earlier test's."""
    manager.scratch_dirs.clear()  # the run's directory, under tmp_path, is not scratch
    manager.ensure_test_isolation("first", strategy=strategy)
    kept = os.environ["DATABASE_URL"]
    outliving = manager.create_scope("outliving", strategy=strategy, auto_cleanup=False)
    manager.complete_test()
    manager.ensure_test_isolation("second", strategy=strategy)
    sqlite3.connect(manager.active_scopes[outliving].database_url, uri=True).close()
    with pytest.raises(DatabaseAccessBlockedError, match="the database of an earlier test"):
        sqlite3.connect(kept, uri=True)
    assert isolation_warnings(manager.complete_test) == []


def test_a_database_the_project_allows_is_neither_refused_nor_warned_of(
    manager: TestIsolationManager, tmp_path: Path
) -> None:
    """A cache of the project's, named by a glob pattern; a file beside it is refused."""
    manager.scratch_dirs.clear()  # tmp_path stands for a directory of the application's
    manager.allowed_databases.append(str(tmp_path.resolve() / "cache" / "*.sqlite"))
    (tmp_path / "cache").mkdir()
    manager.ensure_test_isolation("uses a cache")
    sqlite3.connect(tmp_path / "cache" / "http.sqlite").close()
    with pytest.raises(DatabaseAccessBlockedError, match="isolation_allowed_databases"):
        sqlite3.connect(tmp_path / "cache" / "http.db")
    assert isolation_warnings(manager.complete_test) == []


def test_an_immutable_uri_is_read_only_only_over_a_file_that_exists(
    manager: TestIsolationManager, tmp_path: Path
) -> None:
    """Over a missing file, ``immutable=1`` (without ``mode=ro``) makes it: refused."""
    manager.scratch_dirs.clear()  # tmp_path stands for a directory of the application's
    reference, missing = tmp_path / "reference.db", tmp_path / "missing.db"
    sqlite3.connect(reference).close()
    manager.ensure_test_isolation("reads reference data")
    sqlite3.connect(f"file:{reference}?immutable=1", uri=True).close()
    with pytest.raises(DatabaseAccessBlockedError, match="it is not the database of"):
        sqlite3.connect(f"file:{missing}?immutable=1", uri=True)
    assert not missing.exists()
    manager.complete_test()
