"""Test isolation: every test gets its own scope with a fresh, migrated database.

Migrations build a template database once, cached across runs until they change; each
process reads it once, and each scope gets a copy of it (a real file, or a named in-memory
database held open until the scope ends), its own tracked clients, and while it is the
current test's scope, ``DATABASE_URL`` and the ``lib.database`` singleton point at it.
Ending the scope closes its clients (with a timeout), deletes its files, drops project
modules imported meanwhile and names module globals still holding its clients.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableSet, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from . import database, migrate, scope_databases, thread_tracking
from .connection_tracking import (
    OtherDatabases,
    Recording,
    TrackedConnection,
    database_key,
    record_connections,
)
from .database import DatabaseClient, DatabaseService
from .database_config import Engine
from .project_modules import ProjectModules, drop_modules
from .scope_databases import RUNS_DIR_NAME, STRATEGIES, DatabaseFactory, Strategy, Template
from .stale_bindings import globals_holding, stale_warning

__all__ = [
    "RUNS_DIR_NAME",
    "IsolationError",
    "IsolationScope",
    "IsolationWarning",
    "Leak",
    "ScopeNotFoundError",
    "ScopeOptions",
    "TestIsolationManager",
    "get_test_isolation_manager",
    "install_test_isolation_manager",
]

logger = logging.getLogger("isolation")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
# An in-memory test database is named so, with its scope's id (file:/isolation-test_...).
MEMORY_NAME_PREFIX = "isolation-"


class OpenClients(MutableSet[DatabaseClient]):
    """The open clients among those added: one closed anywhere (by its test, say) leaves
    the set by itself, so ``client in registry`` and ``len`` are never stale."""

    def __init__(self) -> None:
        self._clients: set[DatabaseClient] = set()

    def __contains__(self, client: object) -> bool:
        return client in self._clients and not getattr(client, "closed", True)

    def __iter__(self) -> Iterator[DatabaseClient]:
        return iter([client for client in self._clients if not client.closed])

    def __len__(self) -> int:
        return sum(not client.closed for client in self._clients)

    def add(self, client: DatabaseClient) -> None:
        """Track ``client`` until it closes, or until it is discarded."""
        self._clients.add(client)

    def discard(self, client: DatabaseClient) -> None:
        """Stop tracking ``client``."""
        self._clients.discard(client)

    def clear(self) -> None:
        """Stop tracking every client."""
        self._clients.clear()


class IsolationWarning(UserWarning):
    """Something a test left behind that would break a later test."""


class ScopeNotFoundError(LookupError):
    """No active scope has the given id."""


class IsolationError(RuntimeError):
    """A test asked for its database where it has none."""


@dataclass(frozen=True)
class ScopeOptions:
    """``auto_cleanup=False``: a scope made during a test may outlive it (not a leak)."""

    isolate_modules: bool = True
    track_connections: bool = True
    auto_cleanup: bool = True
    connection_timeout: float = 5.0
    strategy: Strategy = "file"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            allowed = " or ".join(map(repr, STRATEGIES))
            raise ValueError(f"strategy must be {allowed}, not {self.strategy!r}")

    @classmethod
    def of(cls, options: dict[str, Any]) -> ScopeOptions:
        """The options of ``create_scope(**options)``; a name that is not one is a TypeError
        listing those there are."""
        try:
            return cls(**options)
        except TypeError:
            names = [option.name for option in fields(cls)]
            unknown = sorted(options.keys() - set(names))
            if not unknown:
                raise
            raise TypeError(
                f"unknown scope option {', '.join(unknown)}: the options are {', '.join(names)}"
            ) from None


@dataclass(eq=False)
class IsolationScope:
    """One test's database and everything opened on it."""

    id: str
    test_name: str
    options: ScopeOptions
    database_path: Path | None
    module_snapshot: frozenset[str]
    connections: set[DatabaseClient] = field(default_factory=set)
    client: DatabaseClient | None = None
    # In memory: the connection that keeps the database alive until the scope ends.
    holder: sqlite3.Connection | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def owner(self) -> str:
        """How errors name the scope, e.g. a stale client's ``ClientClosedError``."""
        return f"scope {self.id} (test {self.test_name})"

    @cached_property
    def database_url(self) -> str:
        """The file's ``file:`` URI, or in memory a named database that any connection of
        this process can open."""
        if self.database_path is None:
            return scope_databases.memory_url(f"{MEMORY_NAME_PREFIX}{self.id}")
        return scope_databases.file_url(self.database_path)

    @property
    def duration(self) -> float:
        """Milliseconds since the scope was created."""
        return (time.perf_counter() - self.started) * 1000


@dataclass(frozen=True)
class Leak:
    """Something a test left behind: a scope, an open connection, a running thread or a
    stale module global."""

    kind: Literal["scope", "connection", "thread", "stale_binding"]
    test: str
    detail: str


@dataclass(frozen=True)
class _DeferredScan:
    """The clients of an ended scope, to look for in module globals later if still alive."""

    clients: tuple[weakref.ref[DatabaseClient], ...]
    test_name: str
    owner: str


@dataclass
class _TestContext:
    """What a test changed while it runs, and what to put back afterwards."""

    test_name: str
    saved_url: str | None
    saved_service: DatabaseService | None
    saved_block: str | None
    scopes_before: frozenset[str]
    threads_before: frozenset[threading.Thread]
    thread: threading.Thread  # the test's own, which runs it
    recording: Recording | None
    scope_id: str | None = None
    database_urls: list[str] = field(default_factory=list)  # of the scopes made meanwhile
    threads_refused: bool = False  # the threads it left running were looked at


class TestIsolationManager:
    """Creates, tracks and destroys per-test database scopes."""

    __test__ = False

    def __init__(
        self,
        *,
        migrations_dir: Path | None = None,
        data_dir: Path | None = None,
        module_patterns: Iterable[str] | None = None,
        project_root: Path = PROJECT_ROOT,
        reset_hooks: Sequence[Callable[[], object]] = (),
        engine: Engine = "sqlite3",
        runs_dir: Path | None = None,
        defer_binding_scan: bool = False,
        refuse_other_databases: bool = True,
    ) -> None:
        """``module_patterns``: fnmatch patterns of module names to isolate (default: every
        module whose file lies in ``project_root``; the globals of those are searched for a
        test's clients all the same). ``reset_hooks``: called
        whenever ``DATABASE_URL`` changes around a test, so another database module's
        singleton reconnects (e.g. an existing app's ``reset_database_instance``).
        ``engine``: how scopes connect to their databases (``libsql`` needs the file
        strategy). ``runs_dir``: where each process's directory of test databases goes
        (default ``<data_dir>/.isolation``; see ``scope_databases.runs_root``).
        ``defer_binding_scan``: when a scope ends, look for its clients only in the modules
        imported during it (dropped next); the other modules are searched when
        :meth:`deferred_stale_bindings` is called (the ended scopes wait until then), and
        only for a client still alive then. The pytest plugin calls it once pytest has let
        go of each test's fixtures (``pytest_runtest_logfinish``), so a test whose clients
        were all freed costs no search of the project's module globals.
        ``refuse_other_databases``: a test's connections (with ``track_connections``) may
        not open to write any database file but its own and scratch files (under
        :attr:`scratch_dirs`): its application code reading another setting than
        ``DATABASE_URL`` would write to a real database. False: a warning at its end."""
        self.migrations_dir = (migrations_dir or migrate.MIGRATIONS_DIR).resolve()
        self.data_dir = (data_dir or DEFAULT_DATA_DIR).resolve()
        self.runs_dir = runs_dir or self.data_dir / RUNS_DIR_NAME
        self.project_root = project_root.resolve()
        self.modules = ProjectModules(self.project_root, module_patterns)
        # Searched for the clients a test left in globals: the modules dropped, and every
        # other module of the project, which keeps its globals from test to test.
        self.searched_modules = (
            self.modules
            if module_patterns is None
            else ProjectModules(self.project_root, module_patterns, and_root=True)
        )
        self.reset_hooks = tuple(reset_hooks)
        self.engine = engine
        self.defer_binding_scan = defer_binding_scan
        self.refuse_other_databases = refuse_other_databases
        self.active_scopes: dict[str, IsolationScope] = {}
        self.global_connection_registry = OpenClients()
        self.performance_metrics: dict[str, float] = {
            "scopes_created": 0,
            "scopes_destroyed": 0,
            "connections_created": 0,
            "connections_closed": 0,
            "average_cleanup_time": 0.0,
            "emergency_cleanups": 0,
            "modules_cleared": 0,
        }
        self.leaks: list[Leak] = []
        self.kept_databases: list[Path] = []
        self.is_test_mode = False
        self._factories: dict[Strategy, DatabaseFactory] = {}
        self._baseline_modules: frozenset[str] = frozenset(sys.modules)
        self._context: _TestContext | None = None
        self._deferred_scans: list[_DeferredScan] = []
        self._failed_resets: list[str] = []
        self._other_databases_seen: set[str] = set()  # warned about once a session
        # Where a test's scratch files go: a database there is never the application's,
        # unless it is in the project (a checkout under /tmp).
        self.scratch_dirs: list[str] = [tempfile.gettempdir()]
        # Glob patterns (absolute) of database files the project lets its tests write.
        self.allowed_databases: list[str] = []
        self._allowed_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._lock = threading.RLock()

    @property
    def stale_bindings(self) -> list[str]:
        """``module.attribute`` of every global found holding a client after its scope ended."""
        return [leak.detail for leak in self.leaks if leak.kind == "stale_binding"]

    @property
    def current_test_id(self) -> str | None:
        """The id of the current test's scope, if it has one."""
        return self._context.scope_id if self._context else None

    def initialize_test_mode(self, *, build_template: bool = True) -> None:
        """Enter test mode; with ``build_template``, :meth:`prepare_template` now, so that
        the first test is not slower (without, the first scope prepares it)."""
        self.is_test_mode = True
        self._baseline_modules = self.capture_module_snapshot()
        if build_template:
            self.prepare_template()

    def prepare_template(self) -> None:
        """Forget killed runs' files, and build (or check) the cached migrated template."""
        self._remove_stale_runs()
        self._template()

    def _remove_stale_runs(self) -> None:
        """Delete what killed runs of this project left, in RAM and on disk, and what
        killed runs of this user's other projects left in RAM."""
        roots = {
            self.runs_dir,
            *scope_databases.all_runs_roots(self.data_dir),
            *scope_databases.users_shm_roots(),
        }
        for runs in roots:
            scope_databases.remove_stale_runs(runs)

    def _template(self) -> Template:
        return scope_databases.template_for(self.migrations_dir, self.data_dir, self.runs_dir)

    def _factory(self, strategy: Strategy) -> DatabaseFactory:
        factory = self._factories.get(strategy)
        if factory is None:
            directory = scope_databases.run_directory(self.runs_dir)
            factory = DatabaseFactory(self._template(), strategy, directory, self.engine)
            self._factories[strategy] = factory
        return factory

    # -- scopes -------------------------------------------------------------------------

    def create_scope(self, test_name: str, **options: Any) -> str:
        """Create a scope whose database exists at once; it is not made current."""
        scope_options = ScopeOptions.of(options)
        scope_id = f"test_{time.time_ns() // 1_000_000}_{secrets.token_hex(4)}"
        with self._lock:
            factory = self._factory(scope_options.strategy)
            path = factory.new_database()
            scope = IsolationScope(
                id=scope_id,
                test_name=test_name,
                options=scope_options,
                database_path=path,
                module_snapshot=self.capture_module_snapshot()
                if scope_options.isolate_modules
                else frozenset(),
            )
            if path is None:
                scope.holder = factory.hold_in_memory(scope.database_url)
            self.active_scopes[scope_id] = scope
            if self._context is not None:
                self._context.database_urls.append(scope.database_url)
            self.performance_metrics["scopes_created"] += 1
        logger.debug("scope created: %s for %s at %s", scope_id, test_name, scope.database_url)
        return scope_id

    def _scope(self, scope_id: str | None) -> IsolationScope:
        if scope_id is None:
            context = self._context
            if context is None:
                raise IsolationError(
                    "no test scope is current: only integration tests have a database "
                    "(put the test under the isolation_test_paths, tests/integration/ by "
                    "default, or mark it @pytest.mark.isolated)"
                )
            if context.scope_id is None:
                raise IsolationError(
                    f"test {context.test_name} has no database any more: emergency cleanup "
                    "or destroy_scope() ended its scope earlier in the test"
                )
            scope_id = context.scope_id
        try:
            return self.active_scopes[scope_id]
        except KeyError:
            raise ScopeNotFoundError(
                f"no active test scope has the id {scope_id!r}: it ended (with its test, or "
                "destroy_scope()) or never existed; without an id, get_scoped_database_client() "
                "gives the current test's"
            ) from None

    def get_scoped_database_client(self, scope_id: str | None = None) -> DatabaseClient:
        """The scope's client (the current test's when ``scope_id`` is None): the same one
        until it is closed, then a new one on the same database."""
        with self._lock:
            scope = self._scope(scope_id)
            if scope.client is not None and not scope.client.closed:
                return scope.client
            return self._open_client(scope)

    def _open_client(self, scope: IsolationScope) -> DatabaseClient:
        factory = self._factory(scope.options.strategy)
        client = factory.connect(scope.database_path, scope.database_url, scope.owner)
        scope.client = client
        scope.connections.add(client)
        if scope.options.track_connections:
            self.global_connection_registry.add(client)
            self.performance_metrics["connections_created"] += 1
        return client

    def destroy_scope(self, scope_id: str) -> bool:
        """Delete the scope's database, close its clients, drop its modules.

        Returns False if the scope is unknown or a client did not close cleanly; the scope
        is gone either way.
        """
        closed_cleanly, stale = self._end_scope(scope_id)
        _warn(stale)
        return closed_cleanly

    def _end_scope(self, scope_id: str, keep_as: Path | None = None) -> tuple[bool, list[str]]:
        """:meth:`destroy_scope`'s work, first saving the database to ``keep_as`` if given
        (a failed test's, for a post-mortem); the warnings about stale bindings are
        returned, to be given once the caller has cleaned up everything (filterwarnings may
        make them errors)."""
        started = time.perf_counter()
        with self._lock:
            scope = self.active_scopes.pop(scope_id, None)
            if scope is None:
                logger.warning("scope %s not found for destruction", scope_id)
                return False, []
            if self._context is not None and self._context.scope_id == scope_id:
                self._point_at_nothing(f"the scope of test {scope.test_name} was destroyed")
        try:
            if keep_as is not None:
                self._keep(scope, keep_as)
        except BaseException:  # interrupted while keeping it (a timeout): the rest goes
            self._discard(scope)
            self._forget_modules(scope)
            raise
        closed_cleanly = self._discard(scope)
        stale = self._forget_modules(scope)
        scope.connections.clear()
        scope.client = None
        elapsed = (time.perf_counter() - started) * 1000
        with self._lock:
            metrics = self.performance_metrics
            metrics["scopes_destroyed"] += 1
            count = metrics["scopes_destroyed"]
            metrics["average_cleanup_time"] += (elapsed - metrics["average_cleanup_time"]) / count
        logger.debug("scope destroyed: %s (%.2f ms)", scope_id, elapsed)
        return closed_cleanly, [stale_warning(binding, scope.owner) for binding in stale]

    def _discard(self, scope: IsolationScope) -> bool:
        """Close the scope's connections and delete its database; return whether they
        closed cleanly."""
        try:
            return scope_databases.discard_database(
                scope.database_path, lambda: self._close_connections(scope)
            )
        except BaseException:  # interrupted (a timeout): the test's modules go all the same
            self._forget_modules(scope)
            raise

    def _forget_modules(self, scope: IsolationScope) -> list[str]:
        """Drop the project modules imported during the scope; return the globals found
        holding its clients (looked for first: such a module may hold one too)."""
        if not scope.options.isolate_modules:
            return []
        imported = self.modules.imported_since(scope.module_snapshot)
        stale = self._look_for_stale_bindings(scope, imported)
        self._drop_modules(imported)
        return stale

    def _keep(self, scope: IsolationScope, destination: Path) -> None:
        try:
            kept = scope_databases.keep_database(
                scope.client,
                scope.database_path,
                destination,
                scope.options.connection_timeout,
                scope.holder,
            )
            if kept is not None:
                self.kept_databases.append(kept)
                logger.debug("database of %s kept at %s", scope.test_name, kept)
        except Exception as error:  # keeping is best effort, never a reason to fail cleanup
            logger.warning("could not keep the database of %s: %r", scope.test_name, error)

    def _close_connections(self, scope: IsolationScope) -> bool:
        """Close the scope's clients, then what holds its in-memory database."""
        try:
            return self._close_clients(scope)
        finally:
            if scope.holder is not None:
                scope.holder.close()

    def _close_clients(self, scope: IsolationScope) -> bool:
        closed_cleanly = True
        reason = "when that scope ended"
        for client in list(scope.connections):
            try:
                closed = client.close(scope.options.connection_timeout, reason=reason)
            except Exception as error:  # a close that raises must not break the suite
                logger.warning("closing %r raised %r", client, error)
                closed = False
            self.global_connection_registry.discard(client)
            if closed and scope.options.track_connections:
                self.performance_metrics["connections_closed"] += 1
            if not closed:
                timeout = scope.options.connection_timeout
                self._leak(
                    "connection",
                    scope.test_name,
                    f"{client!r} was still in use in another thread {timeout}s after its scope "
                    "ended: it closes when that thread lets go",
                )
            closed_cleanly = closed_cleanly and closed
        return closed_cleanly

    # -- the current test ---------------------------------------------------------------

    def ensure_test_isolation(self, test_name: str, **options: Any) -> str:
        """Give ``test_name`` a new scope and point ``DATABASE_URL`` and the singleton at it."""
        with self._lock:
            if self._context is not None:
                self.complete_test()
            self._failed_resets.clear()
            thread_tracking.watch_thread_starts()  # until shutdown()
            urls: list[str] = []  # the test's own databases, as its scopes are made
            recording = None
            if options.get("track_connections", True):
                others = self._other_databases(test_name, urls)
                recording = record_connections(self.modules.is_project_file, others)
            self._context = _TestContext(
                test_name=test_name,
                database_urls=urls,
                saved_url=os.environ.get("DATABASE_URL"),
                saved_service=database.swap_database_service(None),
                saved_block=database.block_database_access(None),
                scopes_before=frozenset(self.active_scopes),
                threads_before=thread_tracking.running_threads(),
                thread=threading.current_thread(),
                recording=recording,
            )
            try:
                scope_id = self.create_scope(test_name, **options)
            except BaseException as error:  # bad options, a full disk: no database
                context, self._context = self._context, None
                self._stop_recording_and_restore(context)
                try:
                    self._raise_failed_resets()
                except IsolationError as failed:  # a reset hook failed on the way back
                    error.add_note(str(failed))
                raise
            self._point_at(scope_id)
        self._raise_failed_resets()
        return scope_id

    def _other_databases(self, test_name: str, own: list[str]) -> OtherDatabases | None:
        """What the test's thread is refused besides its ``own`` databases (none when the
        manager does not refuse other databases)."""
        if not self.refuse_other_databases:
            return None
        return OtherDatabases(
            test_name,
            own,
            self._live_urls,
            self.scratch_dirs,
            str(self.project_root),
            self.allowed_databases,
            [str(self.runs_dir)],
            f"memory:/{MEMORY_NAME_PREFIX}",
            threading.current_thread(),
        )

    def _live_urls(self) -> list[str]:
        """The URLs of the scopes alive now (one may outlive its test)."""
        return [scope.database_url for scope in list(self.active_scopes.values())]

    def complete_test(self, *, keep_database: Path | None = None) -> bool:
        """Destroy the current test's scope, put back what the test changed, record leaks.

        ``keep_database``: save the test's database there first (for a failed test).
        """
        with self._lock:
            context, self._context = self._context, None
        if context is None:
            return True
        cleaned = True
        warned: list[str] = []  # IsolationWarnings, given last
        scope_id, context.scope_id = context.scope_id, None
        try:
            # First, while the scope is open: a thread still inside a transaction now would
            # die of the scope's close, its error landing in whichever test runs next.
            self._refuse_threads_left_running(context)
            if scope_id is not None:
                cleaned, warned = self._end_scope(scope_id, keep_database)
        except BaseException:  # interrupted (a timeout): put back what the test changed
            if scope_id is not None:
                ended = "its end was interrupted, so its connections may still be open"
                self._leak("scope", context.test_name, f"{scope_id} ({ended})")
            if not context.threads_refused:  # without waiting, this time
                self._refuse_threads_left_running(context, grace=0.0)
            self._stop_recording_and_restore(context)
            raise
        still_open = self._stop_recording_and_restore(context)
        warned += self._clean_up_leaks(context, still_open)
        warned += self._other_databases_opened(context)
        _warn(warned)  # last: filterwarnings may make them errors
        self._raise_failed_resets()
        return cleaned

    def _stop_recording_and_restore(self, context: _TestContext) -> list[TrackedConnection]:
        """Stop recording the test's connections (what the reset hooks open for the next
        test is not its leak) and put back what the test changed; return the connections
        still open."""
        still_open = context.recording.stop() if context.recording is not None else []
        self._restore(context)
        return still_open

    def _clean_up_leaks(
        self, context: _TestContext, still_open: list[TrackedConnection]
    ) -> list[str]:
        """Record and close what the test left open: scopes it created, and of the
        connections it opened (``still_open`` when it ended) those to the database of one
        of its scopes still open after them.
        Returns the warnings about stale bindings of the scopes it ended."""
        test = context.test_name
        stale = []
        for scope_id in self.active_scopes.keys() - context.scopes_before:
            leaked = self.active_scopes[scope_id]
            if not leaked.options.auto_cleanup:
                continue
            self._leak("scope", context.test_name, f"{leaked.id} ({leaked.test_name})")
            stale += self._end_scope(scope_id)[1]
        # Resolved only now, when there is a connection to compare: it takes system calls.
        databases = {database_key(url) for url in context.database_urls} if still_open else {}
        for tracked in still_open:
            if tracked.database not in databases or not tracked.is_open:
                continue  # closed, or to another database (reference data): not the test's
            detail = f"opened at {tracked.location}"
            client = database.client_of(tracked.connection)
            try:
                if client is not None:  # a DatabaseClient of the test's own
                    client.close(0, reason="as a connection leak", where=f"the end of {test}")
                else:
                    tracked.connection.close()
            except sqlite3.ProgrammingError:  # opened in another thread: only it may close it
                detail += " (in another thread, which must close it)"
            self._leak("connection", context.test_name, detail + self._leak_hint(tracked))
        return stale

    def _leak_hint(self, tracked: TrackedConnection) -> str:
        """What to do about a connection a test left open, by the module that opened it."""
        if not self.reset_hooks:
            return (
                "; if that module keeps your application's connection, name it in "
                "isolation_database_module so that it reconnects for each test"
            )
        if os.path.realpath(tracked.location.rpartition(":")[0]) in self._reset_files:
            return (
                "; isolation_database_module names that module, and its reset did not close "
                "the connection: make the reset close it, not only forget it (an lru_cache's "
                "cache_clear() does not close what it cached), or close what still holds it "
                "(an SQLAlchemy session left open keeps its connection out of the pool that "
                "engine.dispose() closes)"
            )
        return ""

    @cached_property
    def _reset_files(self) -> set[str]:
        """The files of the modules whose reset hooks run."""
        modules = [sys.modules.get(getattr(hook, "__module__", "")) for hook in self.reset_hooks]
        files = [getattr(module, "__file__", None) for module in modules]
        return {os.path.realpath(file) for file in files if file}

    def _other_databases_opened(self, context: _TestContext) -> list[str]:
        """Warnings about the database files the test opened besides its own, each once a
        session: an application module that reads another setting than ``DATABASE_URL``
        writes into its real database while its tests pass."""
        if context.recording is None or not context.recording.written:
            return []
        others = context.recording.other_files(
            [*context.database_urls, *self._live_urls()],
            self.scratch_dirs,
            str(self.project_root),
            self.allowed_databases,
        )
        messages = []
        for path in sorted(others.keys() - self._other_databases_seen):
            self._other_databases_seen.add(path)
            messages.append(
                f"{context.test_name} opened {path} (at {others[path]}), a database that is "
                "not its own: if it is your application's, the code that opened it reads "
                "another setting than DATABASE_URL, and the test wrote to your real "
                "database; make it read DATABASE_URL when it connects. A file tests only "
                "read (reference data) is fine: filter this warning out"
            )
        return messages

    def allow_threads(self, threads: Iterable[threading.Thread]) -> None:
        """Threads that a wider fixture started while a test ran: they serve every test (a
        server), and are not that test's to stop."""
        self._allowed_threads.update(threads)

    def _refuse_threads_left_running(
        self, context: _TestContext, grace: float = thread_tracking.GRACE_SECONDS
    ) -> None:
        """A thread of the project's code that the test's thread started and left running
        (``grace`` seconds after the test) would use whichever test's database comes next:
        a leak, refused the database from now on."""
        left = thread_tracking.left_running(
            context.threads_before,
            context.thread,
            self._allowed_threads,
            self.modules.is_project_file,
            grace,
        )
        context.threads_refused = True
        for thread in left:
            running = thread_tracking.describe(thread)
            database.refuse_thread(
                thread,
                f"{running} was started by {context.test_name} and kept running after it; "
                "the database it would get now is another test's",
            )
            self._leak(
                "thread",
                context.test_name,
                f"{running} still runs after the test, and is refused the database from now "
                "on: stop and join it before the test ends (in a fixture's teardown), or "
                "start it in a session-scoped fixture if it serves every test",
            )

    def _leak(
        self,
        kind: Literal["scope", "connection", "thread", "stale_binding"],
        test: str,
        detail: str,
    ) -> None:
        self.leaks.append(Leak(kind, test, detail))
        logger.warning("%s leak in %s: %s", kind, test, detail)

    def _point_at(self, scope_id: str) -> None:
        assert self._context is not None
        self._context.scope_id = scope_id
        scope = self.active_scopes[scope_id]
        os.environ["DATABASE_URL"] = scope.database_url

        def scope_client() -> DatabaseClient:
            try:
                return self.get_scoped_database_client(scope_id)
            except ScopeNotFoundError:  # a service kept past its test (a wider fixture)
                raise database.ClientClosedError(
                    f"CLIENT_CLOSED: this database service belonged to {scope.owner}, whose "
                    "database is gone. A service lives only as long as its test: call "
                    "get_database_service() where it is used instead of keeping it (in a "
                    "fixture wider than the test, or a variable)."
                ) from None

        self._install_service(
            DatabaseService(client_factory=scope_client), self._context.saved_service
        )

    def _point_at_nothing(self, reason: str) -> None:
        assert self._context is not None
        self._context.scope_id = None
        os.environ["DATABASE_URL"] = ":memory:"
        self._install_service(None, self._context.saved_service)
        database.block_database_access(f"{reason}: it has no database for the rest of the test")

    def _install_service(
        self, service: DatabaseService | None, saved: DatabaseService | None
    ) -> None:
        """Make ``service`` the singleton, closing one the test left there (never ``saved``,
        the one from before the test), and let other database modules reconnect."""
        replaced = database.swap_database_service(service)
        if replaced is not None and replaced is not saved:
            replaced.reset_for_testing()
        self._run_reset_hooks()

    def reset_database_modules(self) -> None:
        """Call the reset hooks now, as when ``DATABASE_URL`` changes around a test (at the
        session's start: connections made at import go); IsolationError if one fails."""
        self._run_reset_hooks()
        self._raise_failed_resets(had="yours, from before the session")

    def _run_reset_hooks(self) -> None:
        """Call every reset hook; one that raises fails the test (see
        :meth:`_raise_failed_resets`), after the others and the cleanup have run."""
        for reset in self.reset_hooks:
            try:
                reset()
            except Exception as error:
                name = (
                    f"{getattr(reset, '__module__', '?')}:{getattr(reset, '__qualname__', reset)}"
                )
                url = os.environ.get("DATABASE_URL")
                self._failed_resets.append(f"{name} raised {error!r} (DATABASE_URL was {url!r})")

    def _raise_failed_resets(self, had: str = "the previous test's") -> None:
        """IsolationError for the reset hooks that failed since the last call; ``had``:
        whose database their connections may still point at."""
        failures, self._failed_resets = self._failed_resets, []
        if failures:
            raise IsolationError(
                f"the database reset hook failed: {'; '.join(failures)}. The connection it "
                f"should drop may still point at the database it had ({had}): make the hook "
                "forget its connection even when closing it fails (try/finally), and close "
                "connections in the thread that opened them (or open them with "
                "check_same_thread=False). A hook that connects again opens DATABASE_URL "
                "as an SQLite URI, sqlite3.connect(url, uri=True), which SQLAlchemy's "
                "create_engine() does not take (see 'With SQLAlchemy' in ADOPTING.md)"
            )

    def _restore(self, context: _TestContext) -> None:
        if context.saved_url is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = context.saved_url
        database.block_database_access(context.saved_block)
        self._install_service(context.saved_service, context.saved_service)

    # -- modules ------------------------------------------------------------------------

    def capture_module_snapshot(self) -> frozenset[str]:
        """The names of the modules imported so far."""
        return self.modules.snapshot()

    def clear_module_cache(self, snapshot: frozenset[str] | None = None) -> int:
        """Drop project modules imported since ``snapshot`` (default: test-mode start)."""
        baseline = self._baseline_modules if snapshot is None else snapshot
        return self._drop_modules(self.modules.imported_since(baseline))

    def _drop_modules(self, dropped: list[str]) -> int:
        drop_modules(dropped)
        self.performance_metrics["modules_cleared"] += len(dropped)
        if dropped:
            logger.debug("modules cleared: %s", ", ".join(sorted(dropped)))
        return len(dropped)

    def _look_for_stale_bindings(self, scope: IsolationScope, imported: list[str]) -> list[str]:
        """The module globals that still hold the scope's clients: in every project module,
        or with ``defer_binding_scan`` in those ``imported`` during the scope, the rest
        later."""
        if not scope.connections:
            return []
        if not self.defer_binding_scan:
            modules = self.searched_modules.current()
            return self._stale_bindings_in(modules, scope.connections, scope.test_name, inside=True)
        clients = tuple(weakref.ref(client) for client in scope.connections)
        with self._lock:
            self._deferred_scans.append(_DeferredScan(clients, scope.test_name, scope.owner))
        return self._stale_bindings_in(imported, scope.connections, scope.test_name)

    def deferred_stale_bindings(self) -> list[str]:
        """Search every project module for the clients of the scopes ended since the last
        call that are still alive (see ``defer_binding_scan``): something holds them.
        Returns the warnings about the globals found, recorded in :attr:`leaks`, not given:
        the caller decides how (the plugin, after a test's reports, never raises them)."""
        with self._lock:
            deferred, self._deferred_scans = self._deferred_scans, []
        stale = []
        for scan in deferred:
            alive = [client for ref in scan.clients if (client := ref()) is not None]
            if alive:
                modules = self.searched_modules.current()
                found = self._stale_bindings_in(modules, alive, scan.test_name, inside=True)
                stale += [stale_warning(binding, scan.owner) for binding in found]
        return stale

    def _stale_bindings_in(
        self,
        modules: list[str],
        clients: Iterable[DatabaseClient],
        test_name: str,
        *,
        inside: bool = False,
    ) -> list[str]:
        """Record as leaks of ``test_name`` and return the globals of ``modules`` that hold
        one of ``clients`` (see :func:`~lib.stale_bindings.globals_holding`)."""
        found = globals_holding(modules, clients, inside=inside)
        for where in found:
            self._leak("stale_binding", test_name, where)
        return found

    # -- failure handling and reporting -------------------------------------------------

    def emergency_cleanup(self, scope_id: str | None = None) -> bool:
        """Close everything and delete every scope file (also a killed run's); stay usable.

        With ``scope_id``, only that scope is ended, as :meth:`destroy_scope` does (counted
        as an emergency cleanup all the same)."""
        self.performance_metrics["emergency_cleanups"] += 1
        if scope_id is not None:
            return self.destroy_scope(scope_id)
        ended = [self._end_scope(active) for active in list(self.active_scopes)]
        cleaned = all(closed for closed, _ in ended)
        for client in list(self.global_connection_registry):
            cleaned = client.close(timeout=1.0) and cleaned
        self.global_connection_registry.clear()
        self._remove_stale_runs()
        logger.debug("emergency cleanup done (clean: %s)", cleaned)
        _warn([warning for _, stale in ended for warning in stale])
        return cleaned

    def shutdown(self) -> bool:
        """End of session: clean up whatever scopes are left, then delete this process's
        directory of test databases and its copy of the template (a later scope makes new
        ones), so that nothing of the session stays behind."""
        try:  # also clients whose close was cut short (a timeout), in no scope any more
            left = self.active_scopes or self.global_connection_registry
            return self.emergency_cleanup() if left else True
        finally:
            thread_tracking.stop_watching_thread_starts()
            self._factories.clear()
            scope_databases.remove_run_directory(self.runs_dir)

    @property
    def active_connection_count(self) -> int:
        """Tracked clients still open."""
        with self._lock:
            return len(self.global_connection_registry)

    def get_stats(self) -> dict[str, Any]:
        """A snapshot of scopes and connections, for assertions and reports."""
        with self._lock:
            scopes = list(self.active_scopes.values())
        return {
            "is_test_mode": self.is_test_mode,
            "current_test_id": self.current_test_id,
            "active_scope_count": len(scopes),
            "active_connection_count": self.active_connection_count,
            "scopes": [
                {
                    "id": scope.id,
                    "test_name": scope.test_name,
                    "connection_count": sum(not c.closed for c in scope.connections),
                    "duration": scope.duration,
                    "migration_completed": True,  # every scope copies the migrated template
                    "database_path": str(scope.database_path) if scope.database_path else None,
                    "strategy": scope.options.strategy,
                }
                for scope in scopes
            ],
            "performance_metrics": dict(self.performance_metrics),
        }


def _warn(messages: list[str]) -> None:
    """Each message as an IsolationWarning, from the caller's caller."""
    for message in messages:
        warnings.warn(message, IsolationWarning, stacklevel=3)


_manager: TestIsolationManager | None = None
_manager_lock = threading.Lock()


def install_test_isolation_manager(
    manager: TestIsolationManager | None,
) -> TestIsolationManager | None:
    """Make ``manager`` the process-wide one (None: a default one on next use); return the old."""
    global _manager
    with _manager_lock:
        previous, _manager = _manager, manager
    return previous


def get_test_isolation_manager() -> TestIsolationManager:
    """The process-wide manager the pytest plugin uses."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = TestIsolationManager()
        return _manager
