"""The pytest plugin: every integration test runs in its own isolated database scope.

At session start the environment is made safe (local SQLite only, no ``TURSO_*``
variables, the process-wide database blocked outside test scopes); once the tests to run
include an isolated one, the migrated template is built (under xdist, by the main
process at the start). Each test under ``tests/integration/`` (or marked
``@pytest.mark.isolated``) gets a scope before its fixtures are set up and loses it
after they are torn down. At session end everything is cleaned up and restored.

Where things live is set by ini settings (``[tool.pytest.ini_options]``, read by
``tests.isolation_settings``), so the plugin can be adopted by an existing repository:
``isolation_migrations_dir``, ``isolation_data_dir``, ``isolation_module_patterns``,
``isolation_test_paths`` and ``isolation_database_module`` (another module whose
``reset_database_instance()`` is called whenever ``DATABASE_URL`` changes, so its own
connection follows the test).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from lib import database
from lib.connection_tracking import (
    Recording,
    TrackedConnection,
    database_key,
    database_path,
    record_connections,
    refuse_files,
    untracked,
)
from lib.database import AsyncDatabaseClient, DatabaseClient
from lib.isolation_manager import (
    RUNS_DIR_NAME,
    IsolationError,
    IsolationWarning,
    TestIsolationManager,
    get_test_isolation_manager,
    install_test_isolation_manager,
)
from lib.migrate import MigrationError, MigrationsChangedError, MigrationsDirectoryError
from lib.scope_databases import (
    all_runs_roots,
    oldest_live_run,
    template_lock,
)
from lib.stale_bindings import closed_clients_held, closed_connections_held
from lib.statement_alarm import ALARM
from lib.thread_tracking import running_threads
from tests import isolation_settings as settings

__all__ = [
    "async_db",
    "db",
    "get_db_client",
    "get_isolation_stats",
    "get_test_isolation_manager",
    "is_isolated",
    "isolation_manager",
]

DEBUG_LOGGERS = ("isolation", "database")
# SQLAlchemy's SQLite URL (sqlite:///app.db, sqlite:////abs/app.db; sqlite:// in memory),
# which code of yours may read before the session, though this project does not.
SQLALCHEMY_SQLITE_URL = r"sqlite(?:\+\w+)?://(?:/([^?]*))?(?:\?.*)?"
NO_REMOTE = (
    "tests never touch a remote database: the integration session runs on local SQLite "
    "files only (unset TURSO_DATABASE_URL / use a local DATABASE_URL in the test)"
)
OUTSIDE_SCOPE = (
    "the database is only available inside an isolated test: ask for it inside the test "
    "function (the `db` fixture or get_db_client()), or inside the application function "
    "that uses it, never at import time or in a unit test (a test that needs a database "
    "goes under the isolation_test_paths, tests/integration/ by default, or is marked "
    "@pytest.mark.isolated)"
)
# After how long preparing the template database is said on the terminal.
PREPARING_NOTICE_SECONDS = 2.0
# How long before pytest-timeout fires the test database's statements are interrupted: so
# that the statement's error fails the test first, with time left to report it (an alarm
# firing while pytest makes the report is an INTERNALERROR).
ALARM_MARGIN_SECONDS = 2.0
# How many of the connection leaks closed so far a closed connection's failure names.
SHOWN_LEAKS = 5
_environment = pytest.MonkeyPatch()
_strategy_key = pytest.StashKey[str]()
_failed_key = pytest.StashKey[bool]()
_failure_key = pytest.StashKey[BaseException | None]()
_isolated_key = pytest.StashKey[bool]()
_test_paths_key = pytest.StashKey[list[Path]]()
_marked_key = pytest.StashKey[bool]()  # a test deselected from this run is marked isolated
_debug_loggers_key = pytest.StashKey[list[str]]()  # live at DEBUG, set by DEBUG=...
_session_open_key = pytest.StashKey[bool]()  # started, and not yet ended
_collecting_key = pytest.StashKey[Recording | None]()  # the connections opened at import
_kept_from_import_key = pytest.StashKey[list[TrackedConnection]]()  # those still held then
# The developer's own database (path, DATABASE_URL), refused during the session.
_own_database_key = pytest.StashKey[tuple[str, str] | None]()
_OWN_DATABASE = "isolation_own_database"  # its key in an xdist worker's workerinput


def get_db_client() -> DatabaseClient:
    """The current test's client: the same object for every call within one test."""
    return get_test_isolation_manager().get_scoped_database_client()


def is_isolated(item: pytest.Item) -> bool:
    """Whether ``item`` runs in its own database scope (decided once, at collection)."""
    return item.stash.get(_isolated_key, False)


def get_isolation_stats() -> dict[str, Any]:
    """Active scopes and connections right now (see ``TestIsolationManager.get_stats``)."""
    return get_test_isolation_manager().get_stats()


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """From the plugin's registration on (by the root conftest.py, before any other
    conftest.py is imported), the application's database is refused as during the
    session: a conftest.py that imports the application, run before the session starts
    when pytest is given a path below it, never reaches the developer's database.

    The block is lifted when pytest lets go of its config, however the run ended: a run
    stopped before its session (a usage error in ``pytest.main()`` in a script) leaves
    the process's database as free as the plugin found it."""
    if plugin is sys.modules[__name__]:
        database.block_database_access(OUTSIDE_SCOPE)
        config = manager.get_plugin("pytestconfig")
        if isinstance(config, pytest.Config):
            config.add_cleanup(_lift_block)


def _lift_block() -> None:
    database.block_database_access(None)
    install_test_isolation_manager(None)


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def configure_debug_logging(value: str) -> list[str]:
    """``DEBUG=isolation,database`` (or ``*``) shows those loggers' flow live; the names
    in any case, with or without spaces after the commas."""
    asked = {name.strip().lower() for name in value.split(",")}
    names = [name for name in DEBUG_LOGGERS if name in asked or "*" in asked]
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    return names


class _OnlyTheseLoggers(logging.Filter):
    """Live logging at DEBUG for ``DEBUG=isolation``, without every other library's debug
    lines (httpx, asyncio...): theirs show from WARNING, as without live logging."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in self.names


def pytest_configure(config: pytest.Config) -> None:
    debug_loggers = configure_debug_logging(os.environ.get("DEBUG", ""))
    if debug_loggers and not config.option.log_cli_level:
        config.option.log_cli_level = "DEBUG"
        config.stash[_debug_loggers_key] = debug_loggers
    config.addinivalue_line(
        "markers",
        "isolated: run the test in its own database scope (automatic for tests "
        "under the isolation_test_paths, default tests/integration/)",
    )
    config.addinivalue_line(
        "markers",
        "sqlite3_only: the test uses what only the sqlite3 engine has (client.db, "
        "interrupt, in-memory copies); skipped with DATABASE_DRIVER=libsql",
    )
    strategy = settings.chosen_strategy(config)
    config.stash[_strategy_key] = strategy
    config.stash[_test_paths_key] = settings.isolated_test_paths(config)
    config.stash[_marked_key] = False
    install_test_isolation_manager(settings.manager_from_settings(config, strategy))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Force local SQLite, hide Turso credentials, block the singleton (under xdist, build
    the template too).

    pytest skips ``pytest_sessionfinish`` when this fails, so a failure undoes it here.
    """
    try:
        _start_session(session)
    except BaseException:
        _end_session(session.config)
        raise
    session.config.stash[_session_open_key] = True
    _show_only_debug_loggers(session.config)


def _show_only_debug_loggers(config: pytest.Config) -> None:
    """Filter pytest's live log (set up after ``pytest_configure``) for ``DEBUG=...``."""
    names = config.stash.get(_debug_loggers_key, [])
    live = getattr(config.pluginmanager.get_plugin("logging-plugin"), "log_cli_handler", None)
    if names and live is not None:
        live.addFilter(_OnlyTheseLoggers(names))


def _start_session(session: pytest.Session) -> None:
    _refuse_the_developers_database(session.config)
    for name in [name for name in os.environ if name.startswith("TURSO_")]:
        _environment.delenv(name)
    _environment.setenv("DATABASE_URL", ":memory:")
    database.reset_database_instance()
    database.block_database_access(OUTSIDE_SCOPE)
    database.forbid_remote_databases(NO_REMOTE)
    manager = get_test_isolation_manager()
    # Imported only now: a module that connects at import finds no developer database.
    manager.reset_hooks = tuple(
        settings.database_reset_hooks(session.config.getini("isolation_database_module"))
    )
    try:  # and one that connected before (imported by a conftest.py) lets go now
        manager.reset_database_modules()
    except IsolationError as error:
        raise pytest.UsageError(f"at the session's start, before any test: {error}") from error
    manager.initialize_test_mode(build_template=False)  # built once tests need it
    # Under xdist the main process builds it, before it starts the workers: they find it
    # cached, and a broken migration is one error here, not a crash in every worker.
    if session.config.pluginmanager.has_plugin("dsession"):
        _start_isolating(session.config, manager)
    else:  # this process collects the tests, importing the project's modules
        session.config.stash[_collecting_key] = record_connections(manager.modules.is_project_file)


def _refuse_the_developers_database(config: pytest.Config) -> None:
    """The local database of the developer's ``DATABASE_URL`` (unset: the default) is
    never opened during the session: code that read the variable before the session
    began, at import, would otherwise write there. An xdist worker, started once this
    process changed the variable, is told by it (see :func:`pytest_configure_node`)."""
    workerinput = getattr(config, "workerinput", None)
    own = workerinput.get(_OWN_DATABASE) if workerinput is not None else _own_database(config)
    config.stash[_own_database_key] = own
    if own is not None:
        path, url = own
        refuse_files(
            [path],
            f"it is your own database (DATABASE_URL={url} when the test session began), "
            "which tests never use. Code that read DATABASE_URL before the session, such "
            "as a module that reads it at import and that a conftest.py imports, still has "
            "that value: read DATABASE_URL when connecting instead",
        )


def _own_database(config: pytest.Config) -> tuple[str, str] | None:
    """The absolute path of the local database ``DATABASE_URL`` names now, and the URL."""
    url = os.environ.get("DATABASE_URL", database.DEFAULT_DATABASE_URL)
    try:
        target = database.database_target()
    except database.DatabaseConfigError as error:
        sqlalchemy = re.fullmatch(SQLALCHEMY_SQLITE_URL, url)
        path = database_path(unquote(sqlalchemy[1] or "")) if sqlalchemy else None
        if sqlalchemy is None:
            config.issue_config_time_warning(
                IsolationWarning(
                    f"{error}. So the tests cannot tell which file is your own database, "
                    "to keep them from opening it"
                ),
                stacklevel=2,
            )
    else:
        path = None if target.remote else database_path(target.path)
    return None if path is None else (os.path.abspath(path), url)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: the worker refuses the database this process found in ``DATABASE_URL``."""
    own = node.config.stash.get(_own_database_key, None)
    node.workerinput[_OWN_DATABASE] = list(own) if own is not None else None


def _start_isolating(config: pytest.Config, manager: TestIsolationManager) -> None:
    """What a run that isolates tests does first: forget the databases an earlier run
    kept, and build (or check) the template."""
    if not hasattr(config, "workerinput") and not config.option.collectonly:
        _forget_kept(manager)
    _prepare_template(manager, config)


def _forget_kept(manager: TestIsolationManager) -> None:
    """Delete the databases earlier runs kept, but none that a run still going kept."""
    began = oldest_live_run({manager.runs_dir, *all_runs_roots(manager.data_dir)})
    kept = _kept_directory(manager)
    if began is None:
        shutil.rmtree(kept, ignore_errors=True)
        return
    for path in kept.glob("*.db") if kept.is_dir() else ():
        with suppress(OSError):
            if path.stat().st_mtime < began:
                path.unlink()


def _prepare_template(manager: TestIsolationManager, config: pytest.Config) -> None:
    """Build (or check) the template the isolated tests copy; a problem is one clear error,
    and a wait of more than a few seconds is said on the terminal."""
    notice = threading.Timer(PREPARING_NOTICE_SECONDS, _say_still_preparing, (config, manager))
    notice.daemon = True
    notice.start()
    try:
        manager.prepare_template()
    except MigrationError as error:
        raise pytest.UsageError(
            " ".join(
                [
                    f"cannot build the template database the isolated tests copy: {error}.",
                    *_migrations_hint(error, manager.migrations_dir, config),
                ]
            )
        ) from error
    # A data directory it may not write (the template build's file: DatabaseConfigError),
    # a full disk.
    except (OSError, database.DatabaseConfigError) as error:
        raise pytest.UsageError(
            f"cannot prepare the isolated tests' databases: {error}. The isolation_data_dir "
            f"setting (now {manager.data_dir}) must be a directory this process may write"
        ) from error
    except ModuleNotFoundError as error:  # sqlite-utils, which runs the migrations
        raise pytest.UsageError(
            "cannot build the template database the isolated tests copy: the migrations run "
            f"with {error.name}, which is not installed here. Install the project's "
            "dependencies with the tests' (uv sync --group test; with pip, pip install "
            "sqlite-utils)"
        ) from error
    finally:
        notice.cancel()


def _say_still_preparing(config: pytest.Config, manager: TestIsolationManager) -> None:
    """The run would otherwise wait without a word for another run that is building the
    template (or was stopped while it did: Ctrl-Z)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        lock = template_lock(manager.data_dir)
        reporter.write_line(
            f"isolation: still preparing the template database after "
            f"{PREPARING_NOTICE_SECONDS:.0f}s: its migrations are running, or another run "
            f"is building it and holds {lock} (a run stopped with Ctrl-Z holds it until it "
            "goes on or ends)"
        )


def _migrations_hint(error: MigrationError, directory: Path, config: pytest.Config) -> list[str]:
    """What to do, naming where the setting was made (the error of migrations that kept
    changing says it already)."""
    if isinstance(error, MigrationsChangedError):
        return []
    where = settings.where_set(config, "isolation_migrations_dir")
    if isinstance(error, MigrationsDirectoryError):
        return [f"Set isolation_migrations_dir to the directory of the migrations ({where})."]
    return [f"Fix that migration in {directory} (the isolation_migrations_dir setting, {where})."]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Tests under ``isolation_test_paths`` are marked as they are collected, before any
    selection, so that ``-m isolated`` (or ``-m "not isolated"``) finds them."""
    if any(item.path.is_relative_to(root) for root in item.config.stash[_test_paths_key]):
        item.add_marker(pytest.mark.isolated)


@pytest.hookimpl(trylast=True)  # after other plugins have marked their tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_sqlite3 = pytest.mark.skip(reason="needs the sqlite3 engine, not DATABASE_DRIVER=libsql")
    libsql = get_test_isolation_manager().engine == "libsql"
    for item in items:
        item.stash[_isolated_key] = item.get_closest_marker("isolated") is not None
        if libsql and item.get_closest_marker("sqlite3_only"):
            item.add_marker(needs_sqlite3)


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    """Remember that the project marks tests isolated, though this run deselected them."""
    if any(item.get_closest_marker("isolated") for item in items):
        items[0].config.stash[_marked_key] = True


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the template once the tests to run are known (after every deselection, --lf
    included): unit tests alone, or only collecting, need none, so nothing is written."""
    _note_connections_kept_from_import(session.config)
    isolated = any(map(is_isolated, session.items))
    if isolated and not session.config.option.collectonly:
        _start_isolating(session.config, get_test_isolation_manager())
    elif session.items and not isolated and _isolates_nothing_for_want_of_a_path(session):
        _warn_late(
            f"no test of this run is isolated: isolation_test_paths is unset, so its default, "
            f"{settings.DEFAULT_TEST_PATH}, which is not a directory under "
            f"{session.config.rootpath}, "
            "and no test collected is marked @pytest.mark.isolated. Set isolation_test_paths "
            "to the directories of your integration tests, or mark those tests; a project "
            "that marks them says so with an empty setting (isolation_test_paths = [] in "
            "pyproject.toml, nothing after the = in an ini file), and this warning stops",
            when="found at collection",
        )


def _isolates_nothing_for_want_of_a_path(session: pytest.Session) -> bool:
    """A repository adopting the plugin, whose tests are not in ``tests/integration`` and
    none marked: said once (by the first xdist worker), and not while only collecting."""
    config = session.config
    default = config.getini("isolation_test_paths") is None
    workerinput = getattr(config, "workerinput", {})
    return (
        default
        and not config.stash[_test_paths_key][0].is_dir()
        and not config.stash[_marked_key]
        and not config.option.collectonly
        and workerinput.get("workerid", "gw0") == "gw0"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    if is_isolated(item):
        strategy = item.config.stash[_strategy_key]
        get_test_isolation_manager().ensure_test_isolation(item.nodeid, strategy=strategy)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "setup":  # a new attempt (pytest-rerunfailures runs the item again)
        item.stash[_failed_key] = False
        item.stash[_failure_key] = None
    error = call.excinfo.value if call.excinfo is not None else None
    if error is not None and report.when != "teardown" and is_isolated(item):
        item.stash[_failure_key] = error  # an xfail's too: pytest keeps its traceback
    if report.failed:
        item.stash[_failed_key] = True
        if _is_closed_database_error(error):
            _name_closed_connections(report)
        elif any(map(_is_missing_table_error, _exception_chain(error))):
            _name_connections_kept_from_import(item, report)
        elif isinstance(error, database.ClientClosedError):
            _name_closed_clients(report)
    return report


def _exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, the exceptions it was raised from or while handling, and those of an
    exception group, each once."""
    waiting, seen = [error], set()
    while waiting:
        current = waiting.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        waiting += [current.__cause__, current.__context__]
        waiting += getattr(current, "exceptions", ())


def _note_connections_kept_from_import(config: pytest.Config) -> None:
    """Stop recording the connections opened while the tests were collected; keep where
    the project's code opened those still held (a module global's), in memory: a test
    failing for want of a table is then told why."""
    recording = config.stash.get(_collecting_key, None)
    if recording is None:
        return
    config.stash[_collecting_key] = None
    is_project_file = get_test_isolation_manager().modules.is_project_file
    config.stash[_kept_from_import_key] = [
        tracked
        for tracked in recording.stop()
        if tracked.database is None and is_project_file(tracked.location.rpartition(":")[0])
    ]


def _name_connections_kept_from_import(item: pytest.Item, report: pytest.TestReport) -> None:
    """Those still open now: a reset hook (isolation_database_module) may have closed them."""
    kept = [
        tracked for tracked in item.config.stash.get(_kept_from_import_key, []) if tracked.is_open
    ]
    if kept:
        report.sections.append(
            (
                "isolation: in-memory connections kept since the tests were collected",
                "\n".join(tracked.location for tracked in kept) + f"\n\n{_KEPT_FROM_IMPORT}",
            )
        )


_KEPT_FROM_IMPORT = (
    "Each opened an in-memory database while the tests were collected, when DATABASE_URL "
    "is ':memory:' (outside isolated tests), and something still holds it, a module global "
    "maybe. If it is your application's connection, it is no test's database, which has "
    "the table: connect when the code runs, reading DATABASE_URL then, or name that module "
    "in isolation_database_module (a module with a reset_database_instance() function, or "
    "module:function, that closes it): it is then reset around each isolated test, and "
    "reconnects to the test's database."
)


def _is_missing_table_error(error: BaseException | None) -> bool:
    return isinstance(error, sqlite3.OperationalError) and str(error).startswith("no such table")


def _is_closed_database_error(error: BaseException | None) -> bool:
    return isinstance(error, sqlite3.ProgrammingError) and "closed database" in str(error)


_CLOSED_BY_LEAK_OR_CODE = (
    "it was closed at the end of an earlier test, as a connection that test leaked (its "
    "leak line says so), or by code (a fixture, a test), and the global kept it."
)
_CLOSED_BY_A_RESET = (
    "a reset closed it when DATABASE_URL changed around an isolated test, or "
    f"{_CLOSED_BY_LEAK_OR_CODE} Ask your database module for the connection where it is "
    "used instead of keeping it."
)
_CLOSED_BY_CODE = (
    f"{_CLOSED_BY_LEAK_OR_CODE} If the global is your database module's own connection, "
    "name that module in isolation_database_module (a module with a "
    "reset_database_instance() function, or module:function, that closes it): it is then "
    "reset around each isolated test, and reconnects to its database."
)


def _name_closed_connections(report: pytest.TestReport) -> None:
    """sqlite3 names no connection: name the module globals holding a closed one (a hint,
    so whatever goes wrong finding them leaves the report as it was)."""
    try:
        manager = get_test_isolation_manager()
        held = closed_connections_held(manager.searched_modules.current())
    except Exception:
        return
    if held:
        cause = _CLOSED_BY_A_RESET if manager.reset_hooks else _CLOSED_BY_CODE
        report.sections.append(
            (
                "isolation: closed connections kept in module globals",
                "\n".join(held) + f"\n\nEach holds a closed sqlite3 connection: {cause}",
            )
        )
        return
    leaked = [leak for leak in manager.leaks if leak.kind == "connection"][-SHOWN_LEAKS:]
    if leaked:  # held deeper (a session, a pool): the plugin closed it as a leak, maybe
        report.sections.append(
            (
                "isolation: connections closed as leaks of earlier tests",
                "\n".join(f"{leak.test}: {leak.detail.split(';')[0]}" for leak in leaked)
                + f"\n\n{_CLOSED_AS_A_LEAK}",
            )
        )


_CLOSED_AS_A_LEAK = (
    "The plugin closed each at the end of the test that left it open. If the closed "
    "connection used here is one of them, something kept it from that test (a session, a "
    "pool, an object of a module global): close it in the test that opened it, or ask for "
    "a connection where it is used."
)


def _name_closed_clients(report: pytest.TestReport) -> None:
    """CLIENT_CLOSED names the client's owner: name the module globals that kept it too (a
    hint, so whatever goes wrong finding them leaves the report as it was)."""
    try:
        held = closed_clients_held(get_test_isolation_manager().searched_modules.current())
    except Exception:
        return
    if held:
        report.sections.append(
            (
                "isolation: closed database clients kept in module globals",
                "\n".join(held) + "\n\nEach holds a closed database client, kept from an "
                "earlier test: ask for the client where it is used (get_database_client() at "
                "call time) instead of keeping it.",
            )
        )


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Iterator[Any]:
    """A connection that a session-, module- or class-scoped fixture opens outlives the test
    that first needed it by design: it is not that test's leak, unless it is to that test's
    database, or the fixture returns that test's client (both errors)."""
    if fixturedef.scope == "function":
        return (yield)
    threads = running_threads()
    rows_before = _rows_changed_in_the_tests_database()
    teardown = ExitStack()  # its teardown is the fixture's too: untracked in the same way
    fixturedef.addfinalizer(teardown.close)  # finalizers run last first: this one last
    with untracked() as opened:
        value = yield
    fixturedef.addfinalizer(lambda: teardown.enter_context(untracked()))
    get_test_isolation_manager().allow_threads(running_threads() - threads)  # a server's
    _refuse_a_tests_client(fixturedef, value)
    _refuse_a_connection_to_the_tests_database(fixturedef, opened)
    _warn_of_rows_written(fixturedef, rows_before)
    return value


def _rows_changed_in_the_tests_database() -> tuple[str, int] | None:
    """The current test's owner and the rows its client has changed so far (none before
    the client opens), if there is a current test of the sqlite3 engine."""
    manager = get_test_isolation_manager()
    scope = manager.active_scopes.get(manager.current_test_id or "")
    if scope is None or manager.engine != "sqlite3":
        return None
    changed = 0 if scope.client is None else scope.client.rows_changed
    return None if changed is None else (scope.owner, changed)


def _warn_of_rows_written(
    fixturedef: pytest.FixtureDef[Any], before: tuple[str, int] | None
) -> None:
    """A wider fixture's rows go into the database of the test it was set up in, and go
    with it: every later test using the fixture runs without them, silently."""
    after = _rows_changed_in_the_tests_database()
    if before is None or after is None or after[0] != before[0] or after[1] <= before[1]:
        return
    fixture, per_test = _described(fixturedef)
    warnings.warn(
        IsolationWarning(
            f"{fixture} wrote {after[1] - before[1]} row(s) into the database of {before[0]}, "
            "set up during that test: they go with that test's database, and later tests "
            f"that use the fixture do not see them. {per_test} to give each test its rows"
        ),
        stacklevel=2,
    )


def _refuse_a_tests_client(fixturedef: pytest.FixtureDef[Any], value: object) -> None:
    """A test's own client closes with that test: as the value of a wider fixture it would
    fail the next test that got it, and which test that is changes with order and xdist.
    The error is kept as the fixture's result, so every test using it gets the same."""
    client = value.client if isinstance(value, AsyncDatabaseClient) else value
    if not isinstance(client, DatabaseClient) or not any(
        scope.options.auto_cleanup and client in scope.connections
        for scope in get_test_isolation_manager().active_scopes.values()
    ):
        return  # not a client, or one of a scope allowed to outlive its test
    fixture, per_test = _described(fixturedef)
    _fail_the_fixture(
        fixturedef,
        IsolationError(
            f"{fixture} returned the database client of {client.owner}, which closes when "
            f"that test ends: every later test would get CLIENT_CLOSED. {per_test}, or take "
            "the `db` fixture in the tests that need the database"
        ),
    )


def _refuse_a_connection_to_the_tests_database(
    fixturedef: pytest.FixtureDef[Any], opened: list[Any]
) -> None:
    """A connection that a wider fixture opens to the database of the test it is set up
    in (from ``DATABASE_URL``, maybe through a service of its own) outlives that database:
    every later test would share it, rows and all, with no error anywhere."""
    manager = get_test_isolation_manager()
    scope = manager.active_scopes.get(manager.current_test_id or "")
    if scope is None or not any(_opens(connection, scope.database_url) for connection in opened):
        return
    fixture, per_test = _described(fixturedef)
    _fail_the_fixture(
        fixturedef,
        IsolationError(
            f"{fixture} opened a connection to the database of {scope.owner}, which is "
            "deleted when that test ends: every later test would share it without an error. "
            f"{per_test}, close the connection before it returns (contextlib.closing), or "
            "connect when it is used (get_database_client() at call time)"
        ),
    )


# The fixtures pytest makes of setUpClass and the like, named so by pytest, not the user.
_XUNIT_FIXTURES = {
    "_unittest_setUpClass_fixture_": ("{}.setUpClass", "setUp"),
    "_xunit_setup_class_fixture_": ("{}.setup_class", "setup_method"),
    "_xunit_setup_module_fixture_": ("setup_module of {}", "setup_function"),
}


def _described(fixturedef: pytest.FixtureDef[Any]) -> tuple[str, str]:
    """What the user wrote that pytest set up as ``fixturedef``, and how to make it per
    test: a fixture, or an xunit-style setup (``setUpClass``) that pytest runs as one."""
    for prefix, (written, per_test) in _XUNIT_FIXTURES.items():
        if fixturedef.argname.startswith(prefix):
            name = fixturedef.argname.removeprefix(prefix)
            if hasattr(sys.modules.get(name), "setUpModule"):  # unittest's, run as the same
                written, per_test = "setUpModule of {}", "setUp"
            return written.format(name), f"Do it in {per_test} instead"
    fixture = f"the {fixturedef.scope}-scoped fixture {fixturedef.argname!r}"
    return fixture, "Make the fixture function-scoped"


def _opens(connection: Any, url: str) -> bool:
    """Whether the sqlite3 ``connection`` is on the database of the SQLite URI ``url``."""
    try:
        rows = sqlite3.Connection.execute(connection, "PRAGMA database_list").fetchall()
    except sqlite3.Error:  # closed already, or of another thread: it holds nothing open
        return False
    main = next((file for _, name, file in rows if name == "main"), "")
    if database_path(url) is None:  # in memory: SQLite gives the memdb name as its file
        return main == unquote(urlsplit(url).path)
    return bool(main) and database_key(main) == database_key(url)


def _fail_the_fixture(fixturedef: pytest.FixtureDef[Any], error: IsolationError) -> None:
    """Raise ``error``, kept as the fixture's result so that every test using it gets it."""
    assert fixturedef.cached_result is not None  # set by pytest's own setup
    fixturedef.cached_result = (None, fixturedef.cached_result[1], (error, None))
    raise error


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    failed = item.stash.get(_failed_key, False)
    try:
        return (yield)
    except BaseException:  # a fixture's teardown failed: the test failed
        failed = True
        raise
    finally:
        if is_isolated(item):
            _free_the_failures_locals(item)
            manager = get_test_isolation_manager()
            keep = None
            if failed and item.config.getoption("isolation_keep_failed"):
                keep = _kept_directory(manager) / _kept_name(item.nodeid)
            manager.complete_test(keep_database=keep)


def _free_the_failures_locals(item: pytest.Item) -> None:
    """pytest keeps a failed test's traceback for post-mortem debugging
    (``sys.last_traceback``), and with it the local variables of the test and of what it
    called: clear them, as a passing test's are, so that a connection the test would have
    closed after its failing line is not its leak. ``--pdb`` has had its look by now."""
    failure = item.stash.get(_failure_key, None)
    item.stash[_failure_key] = None
    for error in _exception_chain(failure):
        traceback.clear_frames(error.__traceback__)
        entry = error.__traceback__
        while entry is not None:
            # Before Python 3.13, a frame keeps the copy of its locals that pytest's
            # traceback read: reading them again drops the names that were cleared.
            entry.tb_frame.f_locals  # noqa: B018
            entry = entry.tb_next


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout starts its timer (its own runs after this): a statement of the test's
    database still running a little before it fires is interrupted, so that a runaway
    query fails its test instead of hanging the run (see ``lib.statement_alarm``)."""
    if is_isolated(item):
        ALARM.set(max(settings.timeout / 2, settings.timeout - ALARM_MARGIN_SECONDS))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    ALARM.cancel()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish() -> None:
    """pytest has let go of the test's fixtures: a client of the test's scopes still alive
    now is held elsewhere, maybe in a module global, which is then named. A test whose
    clients were all freed costs no search of the project's module globals."""
    for message in get_test_isolation_manager().deferred_stale_bindings():
        _warn_late(message)


def _warn_late(
    message: str,
    category: type[Warning] = IsolationWarning,
    when: str = "found after the test ended",
) -> None:
    """Warn under the run's own filters; where they make it an error, show it instead: the
    test's reports are made (or no test runs yet), and raised now it would crash the run
    (--isolation-strict fails the run on what the manager recorded)."""
    try:
        warnings.warn(message, category, stacklevel=2)
    except Warning:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.warn(f"{message} ({when}: shown, not raised)", category, stacklevel=2)


def _warned_late(action: Callable[[], object]) -> None:
    """Run ``action``, then give its warnings with :func:`_warn_late`, also when it raised
    after them."""
    found: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as found:
            warnings.simplefilter("always")
            action()
    finally:
        for finding in found:
            _warn_late(str(finding.message), finding.category)


def _kept_directory(manager: TestIsolationManager) -> Path:
    return manager.data_dir / RUNS_DIR_NAME / "kept"


def _kept_name(nodeid: str) -> str:
    """A file name for the test: readable, and unique even where the readable part is not
    (``test_x[a/b]`` and ``test_x[a b]``)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:150]
    return f"{readable}-{hashlib.sha256(nodeid.encode()).hexdigest()[:8]}.db"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[_session_open_key] = False
    _end_session(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    """pytest skips ``pytest_sessionfinish`` when a later plugin's session start fails or
    is interrupted (Ctrl-C while pytest-xdist starts its workers): the session ends here."""
    if config.stash.get(_session_open_key, False):
        config.stash[_session_open_key] = False
        _end_session(config)


def _end_session(config: pytest.Config) -> None:
    """Clean up whatever is left, delete this run's databases, restore the environment."""
    _note_connections_kept_from_import(config)  # the session ended while collecting
    manager = get_test_isolation_manager()
    try:
        _warned_late(manager.complete_test)  # a test the run was interrupted in
    except IsolationError as error:  # its reset hook failed: said, not raised, at the end
        _warn_late(str(error))
    _warned_late(manager.shutdown)
    for message in manager.deferred_stale_bindings():
        _warn_late(message)
    database.block_database_access(None)
    database.forbid_remote_databases(None)
    database.reset_database_instance()
    install_test_isolation_manager(None)
    _environment.undo()
    refuse_files([], "")


@pytest.fixture
def db() -> DatabaseClient:
    """The current test's database client."""
    return get_db_client()


@pytest.fixture
def async_db(db: DatabaseClient) -> AsyncDatabaseClient:
    """The current test's database, for ``async def`` tests."""
    return AsyncDatabaseClient(db)


@pytest.fixture
def isolation_manager() -> TestIsolationManager:
    """The manager that owns every test's scope."""
    return get_test_isolation_manager()
