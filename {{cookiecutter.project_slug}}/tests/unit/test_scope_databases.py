"""The template cache and what the manager records when a test leaves things behind."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils.migrations import Migrations

from lib import database, migrate, scope_databases
from lib.isolation_manager import TestIsolationManager
from lib.scope_databases import RUNS_DIR_NAME, cached_template, remove_run_directory, runs_root
from lib.statement_alarm import StatementAlarm
from tests.unit.disk_limits import BULK_MIGRATION, run_with_file_size_limit
from tests.unit.holding import run_directory_held_by_another_process
from tests.unit.own_schema import MIGRATIONS_DIR

PROJECT_ROOT = migrate.MIGRATIONS_DIR.parent


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A copy of the tests' own migrations that a test may change."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    return directory


def cache_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / RUNS_DIR_NAME / "templates").glob("*.db"))


def test_the_template_is_built_once_and_reused(migrations: Path, tmp_path: Path) -> None:
    first = cached_template(migrations, tmp_path / "data")
    built_at = first.stat().st_mtime_ns
    second = cached_template(migrations, tmp_path / "data")
    assert second == first
    assert second.stat().st_mtime_ns == built_at
    assert cache_files(tmp_path / "data") == [first]


def test_a_session_with_a_cached_template_never_imports_sqlite_utils(
    migrations: Path, tmp_path: Path
) -> None:
    """sqlite-utils takes longer to import than hundreds of tests take to run: a process
    whose template is cached (every xdist worker, most runs) checks it without it. The
    table it reads is the one sqlite-utils' Migrations writes."""
    assert Migrations.migrations_table == migrate.MIGRATIONS_TABLE
    cached_template(migrations, tmp_path / "data")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from lib.isolation_manager import TestIsolationManager

        m = TestIsolationManager(
            migrations_dir=Path({str(migrations)!r}), data_dir=Path({str(tmp_path / "data")!r})
        )
        m.initialize_test_mode()
        for strategy in ("file", "memory"):
            scope_id = m.create_scope("no sqlite-utils", strategy=strategy)
            m.get_scoped_database_client(scope_id).execute("SELECT count(*) FROM users")
            m.destroy_scope(scope_id)
        m.shutdown()
        print("sqlite_utils" in sys.modules)
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "False"


def test_a_changed_migration_rebuilds_the_template(migrations: Path, tmp_path: Path) -> None:
    old = cached_template(migrations, tmp_path / "data")
    (migrations / "0099_refunds.sql").write_text("CREATE TABLE refunds (id INTEGER PRIMARY KEY);")
    new = cached_template(migrations, tmp_path / "data")
    assert new != old
    assert cache_files(tmp_path / "data") == [new]  # the stale one is gone
    with closing(sqlite3.connect(new)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'refunds'").fetchone()


def saved_during_the_build(
    monkeypatch: pytest.MonkeyPatch, edits: list[tuple[Path, str]], *, undone: bool = False
) -> list[str]:
    """Each build of the template finds the next of ``edits`` saved as it runs its
    migrations (an editor saving, a branch checked out), and ``undone`` once they ran;
    returns the migrations each build ran."""
    apply = migrate.apply_migrations
    seen: list[str] = []

    def apply_while_saved(db: Any, directory: Path) -> list[str]:
        path, text = edits.pop(0) if edits else (None, "")
        before = path.read_text() if path is not None and path.exists() else None
        if path is not None:
            path.write_text(text)
        seen.append(",".join(sorted(file.name for file in directory.glob("*.sql"))))
        try:
            return apply(db, directory)
        finally:
            if path is not None and undone and before is not None:
                path.write_text(before)

    monkeypatch.setattr(migrate, "apply_migrations", apply_while_saved)
    return seen


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


def test_a_migration_saved_during_the_build_is_never_cached_under_its_old_text(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is the files' hash before the build; a build that read them after an edit
    would be cached under it, and used again once the edit is undone."""
    last = migrate.migration_files(migrations)[-1]
    before = last.read_text()
    saved_during_the_build(monkeypatch, [(last, before + "\nCREATE TABLE edited (id);\n")])
    template = cached_template(migrations, tmp_path / "data")
    assert "edited" in tables(template)
    assert template.stem == scope_databases._template_key(migrations)
    last.write_text(before)  # undone
    assert "edited" not in tables(cached_template(migrations, tmp_path / "data"))


def test_a_migration_saved_and_undone_during_the_build_is_never_built(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files hash the same before and after such a build (a branch checked out and
    back): only a build from a copy of them is sure to be what their hash says."""
    last = migrate.migration_files(migrations)[-1]
    edited = last.read_text() + "\nCREATE TABLE edited (id);\n"
    saved_during_the_build(monkeypatch, [(last, edited)], undone=True)
    assert "edited" not in tables(cached_template(migrations, tmp_path / "data"))


def test_a_build_that_fails_on_a_half_saved_migration_is_run_again(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = migrate.migration_files(migrations)[-1]
    whole = last.read_text() + "\nCREATE TABLE saved (id);\n"
    last.write_text(whole[: whole.index("(id)")])  # the editor has written half of it
    seen = saved_during_the_build(monkeypatch, [(last, whole)])
    assert "saved" in tables(cached_template(migrations, tmp_path / "data"))
    assert len(seen) == 2


def test_a_migration_added_during_the_build_is_built_too(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = migrations / "0099_refunds.sql"
    seen = saved_during_the_build(monkeypatch, [(added, "CREATE TABLE refunds (id);")])
    template = cached_template(migrations, tmp_path / "data")
    assert "refunds" in tables(template)
    assert len(seen) == 2, "built again, with the file it had not listed"
    assert cache_files(tmp_path / "data") == [template]


def test_migrations_that_keep_changing_are_one_error_that_says_so(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edits = [(migrations / f"009{n}_t.sql", f"CREATE TABLE t{n} (id);") for n in range(5)]
    saved_during_the_build(monkeypatch, edits)
    with pytest.raises(migrate.MigrationsChangedError, match="run again once they are saved"):
        cached_template(migrations, tmp_path / "data")
    assert not list((tmp_path / "data" / RUNS_DIR_NAME / "templates").glob("*.partial*"))


def test_without_flock_a_build_leaves_another_builds_recent_partial_file(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Windows the lock keeps no other process out: a build must not delete the file
    another build is writing. One over an hour old was left by a killed build."""
    monkeypatch.setattr(scope_databases, "fcntl", None)
    cache = tmp_path / "data" / RUNS_DIR_NAME / "templates"
    cache.mkdir(parents=True)
    writing, abandoned = cache / "0123-0badc0de.partial", cache / "0123-0badf00d.partial"
    for path in (writing, abandoned):
        path.write_bytes(b"half a template")
    hours_ago = time.time() - 2 * scope_databases.ABANDONED_NEW_RUN_S
    os.utime(abandoned, (hours_ago, hours_ago))
    template = cached_template(migrations, tmp_path / "data")
    assert sorted(cache.iterdir()) == sorted([template, writing, cache / ".lock"])


def test_a_template_replaced_by_a_run_on_other_migrations_is_found_again(
    migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run sharing the cache builds its own template, which removes ours, between
    our finding it and copying it: we build ours again instead of failing."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    other = tmp_path / "other-migrations"
    shutil.copytree(migrations, other)
    (other / "0099_refunds.sql").write_text("CREATE TABLE refunds (id);")
    find = scope_databases.cached_template
    calls: list[Path] = []

    def found_then_replaced(migrations_dir: Path, data_dir: Path) -> Path:
        path = find(migrations_dir, data_dir)
        if not calls:
            find(other, data_dir)  # the other run's build removes ours
        calls.append(path)
        return path

    monkeypatch.setattr(scope_databases, "cached_template", found_then_replaced)
    try:
        template = scope_databases.template_for(migrations, data, runs)
        assert len(calls) == 2
        assert "refunds" not in tables(template.path)
        assert template.path.read_bytes() == calls[-1].read_bytes()
    finally:
        remove_run_directory(runs)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing a migration", "a directory"])
def test_a_corrupt_or_half_written_cache_is_rebuilt(
    migrations: Path, tmp_path: Path, damage: str
) -> None:
    path = cached_template(migrations, tmp_path / "data")
    if damage == "garbage":
        path.write_bytes(b"not a database at all" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1024])
    elif damage == "a directory":
        path.unlink()
        (path / "inside").mkdir(parents=True)
        (path.with_name("stale.db") / "inside").mkdir(parents=True)
    else:
        with sqlite3.connect(path) as conn:
            conn.execute(  # the last one the template applied
                "DELETE FROM _sqlite_migrations WHERE id = (SELECT max(id) FROM _sqlite_migrations)"
            )
        conn.close()
    rebuilt = cached_template(migrations, tmp_path / "data")
    with sqlite3.connect(rebuilt) as conn:
        names = [name for (name,) in conn.execute("SELECT name FROM _sqlite_migrations")]
    conn.close()
    assert names == [path.stem for path in migrate.migration_files(migrations)]
    assert cache_files(tmp_path / "data") == [rebuilt]


def test_a_copy_of_the_template_is_exact_and_never_overwrites(
    migrations: Path, tmp_path: Path
) -> None:
    template = scope_databases.Template(cached_template(migrations, tmp_path / "data"))
    copy = tmp_path / "copy.db"
    template.copy_to(copy)
    assert copy.read_bytes() == template.path.read_bytes()
    with closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT count(*) FROM logs").fetchone() == (0,)

    taken = tmp_path / "taken.db"
    taken.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        template.copy_to(taken)
    assert taken.read_bytes() == b"someone else's file"


def test_copies_go_on_after_their_directory_was_removed_during_the_run(
    migrations: Path, tmp_path: Path
) -> None:
    """A test that removes the data directory (a CLI's reset, say) leaves the next tests
    their databases, made from the template this process holds in memory."""
    data = tmp_path / "data"
    template = scope_databases.Template(cached_template(migrations, data))
    template.data  # noqa: B018  (read once, as every process does at its first copy)
    factory = scope_databases.DatabaseFactory(template, "file", data / "runs" / "1-abcd")
    (data / "runs" / "1-abcd").mkdir(parents=True)
    assert factory.new_database() is not None
    shutil.rmtree(data)
    copy = factory.new_database()
    assert copy is not None
    assert copy.read_bytes() == template.data


@pytest.mark.skipif(sys.platform == "win32", reason="run directories are held with flock")
def test_a_run_directory_removed_during_the_run_comes_back_held(
    migrations: Path, tmp_path: Path
) -> None:
    """Made again without its hold, another run would judge it by its pid alone: one in
    another PID namespace, where that pid is dead, would delete it under our tests."""
    data = tmp_path / "data"
    runs = data / RUNS_DIR_NAME
    template = scope_databases.template_for(migrations, data, runs)
    directory = scope_databases.run_directory(runs)
    factory = scope_databases.DatabaseFactory(template, "file", directory)
    try:
        template.data  # noqa: B018  (read once, as every process does at its first copy)
        shutil.rmtree(data)
        copy = factory.new_database()
        assert copy is not None
        assert copy.parent == directory
        assert scope_databases._held(directory) is True
        with pytest.MonkeyPatch.context() as out_of_sight:
            out_of_sight.setattr(scope_databases, "_pid_alive", lambda pid: False)
            out_of_sight.setattr(scope_databases, "_run_dirs", {})  # seen from another run
            assert scope_databases.remove_stale_runs(runs) == []
        assert copy.is_file()
    finally:
        remove_run_directory(runs)


def test_the_in_memory_source_is_closed_with_the_run(migrations: Path, tmp_path: Path) -> None:
    """A session's end closes its template's in-memory source: nothing left for the
    garbage collector to warn about."""
    runs = tmp_path / "runs"
    template = scope_databases.template_for(migrations, tmp_path / "data", runs)
    source = template.in_memory
    assert source.execute("SELECT count(*) FROM logs").fetchone() == (0,)
    remove_run_directory(runs)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        source.execute("SELECT 1")


def test_the_memory_strategy_names_the_sqlite_it_needs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Named in-memory databases came with SQLite 3.36: an older one is a clear error."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 35, 5))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.35.5")
    template = scope_databases.Template(tmp_path / "template.db")
    with pytest.raises(ValueError, match=r"SQLite 3\.36\.0 or newer .* has 3\.35\.5: use the file"):
        scope_databases.DatabaseFactory(template, "memory", tmp_path)
    scope_databases.DatabaseFactory(template, "file", tmp_path)  # files need nothing new


def test_a_copy_that_cannot_be_written_whole_leaves_no_file(
    migrations: Path, tmp_path: Path
) -> None:
    """A file size limit stops the copy part-way, as a full disk would: no half copy stays."""
    template = cached_template(migrations, tmp_path / "data")
    copy = tmp_path / "copy.db"
    result = run_with_file_size_limit(
        4096,
        f"""
        from pathlib import Path
        from lib.scope_databases import Template
        try:
            Template(Path({str(template)!r})).copy_to(Path({str(copy)!r}))
        except OSError as error:
            print(error.errno)
        """,
    )
    assert result.returncode == 0, result
    assert result.stdout.strip() == str(errno.EFBIG), result
    assert not copy.exists()


def test_a_template_the_disk_cannot_hold_is_one_clear_error_and_never_cached(
    migrations: Path, tmp_path: Path
) -> None:
    """A file size limit stops the build, as a full disk would: the error says so (not
    "fix that migration"), and no template, half-written or empty, is cached."""
    (migrations / "0099_bulk.sql").write_text(BULK_MIGRATION)
    data_dir = tmp_path / "data"
    result = run_with_file_size_limit(
        200_000,
        f"""
        from pathlib import Path
        from lib.scope_databases import TemplateWriteError, cached_template
        try:
            cached_template(Path({str(migrations)!r}), Path({str(data_dir)!r}))
        except TemplateWriteError as error:
            print(error)
        """,
    )
    assert result.returncode == 0, result
    assert "cannot write the template database" in result.stdout, result
    assert "is the disk full?" in result.stdout
    assert [path.name for path in (data_dir / RUNS_DIR_NAME / "templates").iterdir()] == [".lock"]


@pytest.mark.skipif(sys.platform == "win32", reason="run directories are held with flock")
def test_a_run_directory_held_by_a_process_out_of_sight_is_not_stale(tmp_path: Path) -> None:
    """A run in another PID namespace (a container sharing the data directory) has a pid
    no process has here: its hold on the directory says it lives."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = tmp_path / "runs" / f"{int(gone.stdout)}-0000"
    with run_directory_held_by_another_process(path):
        assert scope_databases.remove_stale_runs(tmp_path / "runs") == []
        assert path.is_dir()
    assert scope_databases.remove_stale_runs(tmp_path / "runs") == [path]


def test_a_thread_still_in_a_transaction_when_its_test_ends_is_that_tests_leak(
    tmp_path: Path,
) -> None:
    """Threads are looked at before the scope closes: one that the close would have made
    fail (its error landing in whichever test ran next) is its own test's leak."""
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("writer test")
    inside, failures = threading.Event(), []

    def write() -> None:
        client = database.get_database_client()
        try:
            with client.transaction() as tx:
                tx.execute("INSERT INTO users (email, name) VALUES ('w@x', 'w')")
                inside.set()
                deadline = time.monotonic() + 30
                while not client.closed and time.monotonic() < deadline:
                    time.sleep(0.001)  # in the transaction until the scope's end closes it
        except database.ClientClosedError as error:
            failures.append(str(error))

    writer = threading.Thread(target=write, name="writer")
    writer.start()
    inside.wait()
    try:
        manager.complete_test()
        assert [(leak.kind, leak.test) for leak in manager.leaks] == [("thread", "writer test")]
        assert "thread 'writer' running" in manager.leaks[0].detail
    finally:
        writer.join()
        manager.shutdown()
    assert len(failures) == 1
    assert "writer test" in failures[0]


class TimeIsUp(BaseException):
    """What a timeout raises in the test's thread."""


def time_is_up(signum: int, frame: object) -> None:
    raise TimeIsUp  # as pytest-timeout's pytest.fail(), not an Exception


def alarm_once_inside(function: str) -> threading.Thread:
    """A thread that sends SIGALRM to the test's thread once that thread runs
    ``function``: a timeout firing there, at no time that depends on the machine's speed."""

    def alarm() -> None:
        main = threading.main_thread().ident
        assert main is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(main)
            while frame is not None and frame.f_code.co_name != function:
                frame = frame.f_back
            if frame is not None:
                signal.pthread_kill(main, signal.SIGALRM)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=alarm, name="alarm")
    thread.start()
    return thread


@pytest.mark.skipif(sys.platform == "win32", reason="a timer signal cuts the end short")
def test_a_test_end_cut_short_by_a_timeout_is_a_scope_leak_and_puts_everything_back(
    tmp_path: Path,
) -> None:
    """pytest-timeout firing while the scope closes (a thread holds its client): the scope
    is reported, the environment and singleton are put back for the next test, and the
    connection whose close it cut short closes once the holder lets go."""
    before = os.environ.get("DATABASE_URL")
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("cut short")
    scope_id = str(manager.current_test_id)
    holding, release = threading.Event(), threading.Event()
    held: list[database.DatabaseClient] = []

    def hold() -> None:
        client = database.get_database_client()
        held.append(client)
        with suppress(database.ClientClosedError), client.transaction():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold, name="holder")
    holder.start()
    holding.wait()

    previous = signal.signal(signal.SIGALRM, time_is_up)
    alarm = alarm_once_inside("_close_connections")  # while the close waits for the holder
    try:
        with pytest.raises(TimeIsUp):
            manager.complete_test()
    finally:
        alarm.join()
        signal.signal(signal.SIGALRM, previous)
        release.set()
        holder.join()
    try:
        assert ("scope", "cut short") in [(leak.kind, leak.test) for leak in manager.leaks]
        assert any(scope_id in leak.detail for leak in manager.leaks if leak.kind == "scope")
        assert os.environ.get("DATABASE_URL") == before
        assert manager.current_test_id is None
        with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
            sqlite3.Connection.execute(held[0]._conn, "SELECT 1")
    finally:
        manager.shutdown()


@pytest.mark.skipif(sys.platform == "win32", reason="a timer signal cuts the end short")
def test_a_timeout_while_threads_are_looked_at_still_refuses_them_the_database(
    tmp_path: Path,
) -> None:
    """The timeout fires while the test's end waits its grace for a thread it started:
    that thread is refused all the same, and never writes into the next test's database."""
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("cut short")
    stop, refused = threading.Event(), []

    def write_until_stopped() -> None:
        while not stop.wait(0.01):
            try:
                database.get_database_client().execute("SELECT 1")
            except (database.ClientClosedError, database.DatabaseAccessBlockedError) as error:
                refused.append(str(error))
                return

    writer = threading.Thread(target=write_until_stopped, name="writer")
    writer.start()

    previous = signal.signal(signal.SIGALRM, time_is_up)
    alarm = alarm_once_inside("left_running")  # while the grace waits for the writer
    try:
        with pytest.raises(TimeIsUp):
            manager.complete_test()
        manager.ensure_test_isolation("the next test")
        writer.join(2)
        assert not writer.is_alive()
        assert refused
        assert "was started by cut short" in refused[0]
        assert ("thread", "cut short") in [(leak.kind, leak.test) for leak in manager.leaks]
    finally:
        alarm.join()
        signal.signal(signal.SIGALRM, previous)
        stop.set()
        writer.join()
        manager.complete_test()
        manager.shutdown()


def test_a_thread_of_the_isolation_core_started_in_a_test_is_not_its_leak(
    tmp_path: Path,
) -> None:
    """The statement alarm's watch thread starts in the first test that pytest-timeout
    times (inside the test with ``func_only``) and serves every test after it."""
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("first timed test")
    try:
        StatementAlarm().set(60)
    finally:
        manager.complete_test()
        manager.shutdown()
    assert manager.leaks == []


def test_parallel_processes_build_the_template_once(migrations: Path, tmp_path: Path) -> None:
    """Four processes start at once on an empty cache: one builds, the others wait and reuse."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        from pathlib import Path
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        from lib.scope_databases import cached_template
        print(cached_template(Path({str(migrations)!r}), Path({str(tmp_path / "data")!r})))
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert len({stdout.strip() for stdout, _ in outputs}) == 1
    builds = sum(stderr.count("building template") for _, stderr in outputs)
    assert builds == 1, outputs
    assert not list((tmp_path / "data").rglob("*.partial"))


def test_a_connection_left_open_is_a_leak_named_by_its_line(tmp_path: Path) -> None:
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("leaky test")
    try:
        leaked = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)  # LEAKED HERE
        closed = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
        closed.close()
        reference = sqlite3.connect(tmp_path / "reference.db")  # not the test's database
    finally:
        manager.complete_test()
    line = next(
        number
        for number, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if text.endswith("# LEAKED HERE")
    )
    assert [(leak.kind, leak.test) for leak in manager.leaks] == [("connection", "leaky test")]
    where, _, hint = manager.leaks[0].detail.partition("; ")
    assert where.endswith(f"test_scope_databases.py:{line}")
    assert "name it in isolation_database_module" in hint  # no database module is reset
    with pytest.raises(sqlite3.ProgrammingError):
        leaked.execute("SELECT 1")  # the leak was closed once reported
    assert reference.execute("SELECT 1").fetchone() == (1,)  # open: its owner's business
    reference.close()
    manager.shutdown()


@pytest.mark.parametrize("reset_module", ["another", "the leak's"])
def test_a_leak_names_the_database_module_setting_only_when_none_is_reset(
    tmp_path: Path, reset_module: str
) -> None:
    """With a database module reset, the leak does not point at the setting, but says
    the reset must close the connection when the leak was opened in the reset's module."""
    reset = tempfile.gettempdir if reset_module == "another" else lambda: None
    manager = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data", reset_hooks=[reset]
    )
    manager.ensure_test_isolation("leaky test")
    leaked = sqlite3.connect(os.environ["DATABASE_URL"], uri=True)
    manager.complete_test()
    manager.shutdown()
    leaked.close()
    assert [leak.kind for leak in manager.leaks] == ["connection"]
    assert "name it in isolation_database_module" not in manager.leaks[0].detail
    said = "isolation_database_module names that module, and its reset did not close"
    assert (said in manager.leaks[0].detail) is (reset_module != "another")


def test_a_connection_left_open_by_another_thread_is_reported_not_fatal(tmp_path: Path) -> None:
    """Only the thread that opened a sqlite3 connection may close it: the leak is reported
    as such, and the cleanup goes on."""
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("threaded test")
    url = os.environ["DATABASE_URL"]
    opened, test_done = threading.Event(), threading.Event()

    def hold_a_connection() -> None:
        connection = sqlite3.connect(url, uri=True)
        opened.set()
        test_done.wait()
        connection.close()  # by its own thread, once the test has seen the leak

    worker = threading.Thread(target=hold_a_connection)
    worker.start()
    opened.wait()
    try:
        assert manager.complete_test() is True
        assert [(leak.kind, leak.test) for leak in manager.leaks] == [
            ("thread", "threaded test"),  # still running, holding it
            ("connection", "threaded test"),
        ]
        assert "(in another thread, which must close it)" in manager.leaks[1].detail
        assert manager.current_test_id is None
    finally:
        test_done.set()
        worker.join()
        manager.shutdown()


RUN_DIRECTORY_LOOP = """
import sys
from pathlib import Path

from lib.scope_databases import remove_run_directory, run_directory

runs = Path(sys.argv[1])
for _ in range(300):
    run_directory(runs)
    remove_run_directory(runs)  # removes runs too once it is empty
"""


def test_processes_starting_and_ending_sessions_at_once_never_collide(tmp_path: Path) -> None:
    """One process removes the shared runs directory while another is making its own
    directory in it: the second tries again instead of failing."""
    command = [sys.executable, "-c", RUN_DIRECTORY_LOOP, str(tmp_path / "runs")]
    env = {"PYTHONPATH": str(PROJECT_ROOT)}
    loops = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    errors = [loop.communicate(timeout=120)[1] for loop in loops]
    assert [loop.returncode for loop in loops] == [0, 0], errors


def test_a_failed_template_build_leaves_no_partial_file(migrations: Path, tmp_path: Path) -> None:
    (migrations / "0099_broken.sql").write_text("CREATE TABLE broken (;")
    for _ in range(2):
        with pytest.raises(migrate.MigrationError):
            cached_template(migrations, tmp_path / "data")
    assert list((tmp_path / "data" / RUNS_DIR_NAME / "templates").iterdir()) == [
        tmp_path / "data" / RUNS_DIR_NAME / "templates" / ".lock"
    ]


def test_a_sound_cache_is_used_without_a_lock_or_any_write(
    migrations: Path, tmp_path: Path
) -> None:
    """So a read-only data directory holding a sound cache will do."""
    path = cached_template(migrations, tmp_path / "data")
    (path.parent / ".lock").unlink()
    assert cached_template(migrations, tmp_path / "data") == path
    assert sorted(path.parent.iterdir()) == [path]


def test_what_a_build_killed_half_way_left_is_cleared_by_the_next_session(
    migrations: Path, tmp_path: Path
) -> None:
    path = cached_template(migrations, tmp_path / "data")
    left = [path.parent / f"{path.stem}-0badf00d.partial{suffix}" for suffix in ("", "-wal")]
    for leftover in left:
        leftover.write_bytes(b"half a build")
    copied = path.parent / "migrations-0badf00d.partial"  # the files it was building from
    copied.mkdir()
    shutil.copy(migrate.migration_files(migrations)[0], copied)
    assert cached_template(migrations, tmp_path / "data") == path
    assert sorted(path.parent.iterdir()) == [path.parent / ".lock", path]


def test_a_forgotten_scope_is_a_leak_unless_it_may_outlive_the_test(tmp_path: Path) -> None:
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=tmp_path / "data")
    manager.ensure_test_isolation("creates scopes")
    forgotten = manager.create_scope("forgotten")
    kept = manager.create_scope("outlives its test", auto_cleanup=False)
    manager.complete_test()
    try:
        assert [(leak.kind, leak.detail) for leak in manager.leaks] == [
            ("scope", f"{forgotten} (forgotten)")
        ]
        assert list(manager.active_scopes) == [kept]
    finally:
        manager.shutdown()
    assert not manager.active_scopes


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /dev/shm with room to spare."""
    directory = tmp_path / "shm"
    directory.mkdir()
    monkeypatch.setattr(scope_databases, "SHM_ROOT", directory)
    monkeypatch.setattr(scope_databases, "SHM_MIN_FREE", 1)
    return directory


def test_runs_go_to_shm_when_asked_and_it_has_room(
    shm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "project" / "data"
    other = tmp_path / "other" / "data"
    in_ram = runs_root(data, use_shm=True)
    assert in_ram.parent == shm
    assert in_ram == runs_root(data, use_shm=True), "the same project always gets the same one"
    assert runs_root(other, use_shm=True) != in_ram, "each project gets its own"
    assert runs_root(data) == data / RUNS_DIR_NAME

    in_ram.symlink_to(tmp_path)  # someone else's trap: never followed
    assert runs_root(data, use_shm=True) == data / RUNS_DIR_NAME
    in_ram.unlink()

    monkeypatch.setattr(scope_databases, "SHM_MIN_FREE", 1 << 62)
    assert runs_root(data, use_shm=True) == data / RUNS_DIR_NAME, "too little room: on disk"
    monkeypatch.setattr(scope_databases, "SHM_ROOT", tmp_path / "missing")
    assert runs_root(data, use_shm=True) == data / RUNS_DIR_NAME, "no /dev/shm: on disk"


def test_scopes_in_a_ram_runs_directory_leave_nothing_behind(shm: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = runs_root(data, use_shm=True)
    runs.mkdir(mode=0o700)
    stale = runs / "999999999-0badc0de"  # a killed run's directory
    stale.mkdir()
    manager = TestIsolationManager(migrations_dir=MIGRATIONS_DIR, data_dir=data, runs_dir=runs)
    manager.initialize_test_mode()
    assert not stale.exists()

    scope = manager.create_scope("in RAM")
    path = manager.active_scopes[scope].database_path
    assert path is not None
    assert path.parent.parent == runs
    assert runs.stat().st_mode & 0o777 == 0o700, "other users cannot read the test databases"
    assert (data / RUNS_DIR_NAME / "templates").is_dir(), "the template cache stays on disk"
    manager.shutdown()
    remove_run_directory(runs)

    assert not runs.exists()
    assert list(shm.iterdir()) == []


def test_a_killed_run_in_ram_is_deleted_even_once_its_project_is_gone(
    shm: Path, tmp_path: Path
) -> None:
    """A project moved or deleted after one of its runs was killed has no later run of its
    own to delete that run's databases in RAM: the next run of another project does."""
    dead = "999999999-0badc0de"  # above any pid_max: no process has it
    gone = runs_root(tmp_path / "deleted" / "data", use_shm=True) / dead
    live = runs_root(tmp_path / "running" / "data", use_shm=True) / f"{os.getppid()}-0badc0de"
    not_mine = shm / f"isolation-{os.getuid() + 1}-0123456789ab" / dead
    not_a_run_root = shm / "something-else" / dead
    for path in (gone, live, not_mine, not_a_run_root):
        path.mkdir(parents=True)
        (path / "db-1-0badc0de.db").write_bytes(b"a test's database")
    data = tmp_path / "project" / "data"
    manager = TestIsolationManager(
        migrations_dir=MIGRATIONS_DIR, data_dir=data, runs_dir=runs_root(data, use_shm=True)
    )
    manager.initialize_test_mode()
    try:
        assert not gone.parent.exists(), "the killed run and its emptied root are deleted"
        assert live.is_dir(), "a live run of another project is left alone"
        assert not_mine.is_dir(), "another user's is left alone"
        assert not_a_run_root.is_dir()
    finally:
        manager.shutdown()


def test_without_dev_shm_only_the_data_directory_holds_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no /dev/shm and no ``os.getuid``: the runs are looked for on disk alone."""
    monkeypatch.setattr(scope_databases, "SHM_ROOT", tmp_path / "missing")
    monkeypatch.delattr(os, "getuid")
    data = tmp_path / "data"
    assert scope_databases.all_runs_roots(data) == [data / RUNS_DIR_NAME]
    assert scope_databases.users_shm_roots() == []


def test_on_windows_no_signal_is_sent_to_tell_a_run_is_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.kill(pid, 0)`` sends Ctrl-C to a process group on Windows: a killed run's
    directory is left there rather than a process interrupted."""

    def kill(pid: int, signal: int) -> None:
        raise AssertionError(f"os.kill({pid}, {signal}) called")

    stale = tmp_path / "runs" / "999999999-0badc0de"
    stale.mkdir(parents=True)
    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.setattr(os, "kill", kill)
    assert scope_databases.remove_stale_runs(tmp_path / "runs") == []
    assert stale.is_dir()


@pytest.mark.skipif(sys.platform == "win32", reason="run directories are held with flock")
@pytest.mark.parametrize("pid", [os.getppid(), os.getpid()], ids=["alive here", "this one"])
def test_a_run_directory_no_process_holds_is_stale_whatever_its_pid(
    pid: int, tmp_path: Path
) -> None:
    """In a container, pytest is often pid 1 in every run: a killed run's pid is one that
    lives on the host, or this very process's in the next run. Its hold decides."""
    path = tmp_path / "runs" / f"{pid}-0badc0de"
    path.mkdir(parents=True)
    (path / scope_databases.ALIVE_FILE).touch()  # held by no one: its run was killed
    assert scope_databases.remove_stale_runs(tmp_path / "runs") == [path]


@pytest.mark.skipif(sys.platform == "win32", reason="run directories are held with flock")
def test_a_new_run_directory_is_held_before_it_has_its_runs_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run starting in another PID namespace cannot see our pid: a run directory not yet
    held would look like a killed run's. It is made under another name, which such a run
    leaves alone, and held before it is renamed."""
    runs = tmp_path / "runs"
    hold = scope_databases._hold
    found_while_made: list[list[Path]] = []

    def another_run_starts_meanwhile(path: Path) -> object:
        with monkeypatch.context() as out_of_sight:
            out_of_sight.setattr(scope_databases, "_pid_alive", lambda pid: False)
            found_while_made.append(scope_databases.remove_stale_runs(runs))
        return hold(path)

    monkeypatch.setattr(scope_databases, "_hold", another_run_starts_meanwhile)
    path = scope_databases.run_directory(runs)
    try:
        assert found_while_made == [[]], "nothing deleted while it was made"
        assert path.name.startswith(f"{os.getpid()}-")
        assert scope_databases._held(path) is True
    finally:
        remove_run_directory(runs)


def test_a_run_directory_named_with_a_pid_no_system_has_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "runs" / f"{2**70}-0badc0de"
    path.mkdir(parents=True)
    assert scope_databases.remove_stale_runs(tmp_path / "runs") == [path]


def test_a_directory_left_half_made_is_deleted_once_it_is_an_hour_old(tmp_path: Path) -> None:
    """A process killed between making its run directory and holding it leaves it under
    its first name: older than any start, it is deleted."""
    runs = tmp_path / "runs"
    old, new = runs / ".new-999999999-0badc0de", runs / ".new-999999999-0badf00d"
    for path in (old, new):
        path.mkdir(parents=True)
    hours_ago = time.time() - 2 * scope_databases.ABANDONED_NEW_RUN_S
    os.utime(old, (hours_ago, hours_ago))
    assert scope_databases.remove_stale_runs(runs) == [old]
    assert new.is_dir()


def test_a_dev_shm_this_process_cannot_write_is_not_used(
    shm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox may forbid writing to /dev/shm whatever its modes say (Landlock): the test
    databases go to the data directory. Finding out leaves nothing behind."""
    data = tmp_path / "data"
    assert runs_root(data, use_shm=True).parent == shm
    assert list(shm.iterdir()) == []
    mkdir = Path.mkdir

    def sandboxed(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.is_relative_to(shm):
            raise PermissionError(13, "Permission denied", str(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", sandboxed)
    assert runs_root(data, use_shm=True) == data / RUNS_DIR_NAME
