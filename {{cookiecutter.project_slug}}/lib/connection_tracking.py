"""Record every SQLite connection opened during a test, with the ``file:line`` that opened it.

While a :class:`Recording` is active, each new ``sqlite3`` connection is remembered with
its caller: an audit hook (``sqlite3.connect/handle``) sees them all, however ``connect``
was imported or called, ``sqlite3.Connection(...)`` and factories included.
``libsql.connect`` is wrapped (libsql is imported for it, where installed). When the test
ends, the ones still open and held by the code are given back: ``lib.isolation_manager``
reports those to the test's own database as connection leaks, where they were opened.
While :func:`refuse_files` names files, both refuse to open them (the developer's own
database, during a test session); a recording given :class:`OtherDatabases` refuses the
project's code any other database file to write but the test's own and scratch files.
The audit hook, which Python cannot remove, does nothing once neither is needed; the
libsql wrapper is removed.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import importlib.util
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from .database import DatabaseAccessBlockedError, caller_location
from .database_config import is_read_only_uri

_original_libsql_connect: Any = None
_audit_hook_added = False
_recordings: list[Recording] = []
_refused: tuple[frozenset[str], str] = (frozenset(), "")  # paths (real, as given), and why
_local = threading.local()
_lock = threading.Lock()
# Test tools that keep SQLite files of their own while tests run (coverage's data with
# dynamic contexts, pytest-testmon's): never the application's database.
_TEST_TOOLS = tuple(f"{os.sep}{name}{os.sep}" for name in ("coverage", "testmon"))
# A remote database (libsql's): no file of this machine.
REMOTE_URL = re.compile(r"(?:libsql|https?|wss?)://", re.I)


@dataclass(eq=False, frozen=True)
class TrackedConnection:
    """A connection, where it was opened, and its database (see :func:`database_key`)."""

    connection: Any
    location: str
    database: str | None

    @property
    def is_open(self) -> bool:
        """Whether the connection is still open: a leak if its test has ended."""
        if isinstance(self.connection, TrackedLibsqlConnection):
            return not self.connection.closed
        try:  # sqlite3's own attribute, which raises once the connection is closed
            sqlite3.Connection.total_changes.__get__(self.connection)
        except sqlite3.ProgrammingError:
            return False
        return True


class TrackedLibsqlConnection:
    """A libsql connection that remembers being closed (asking libsql itself would panic)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.closed = False

    def close(self) -> None:
        """Close the connection, and remember it."""
        self.closed = True
        self._connection.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _record(connection: Any, database: object) -> None:
    suspended: list[Any] | None = getattr(_local, "suspended", None)
    if suspended is not None:
        suspended.append(connection)
    elif recordings := list(_recordings):  # a copy: a test may end meanwhile, in its thread
        # The project's own line (a test's, through SQLAlchemy say), not the library's.
        location = recordings[0].project_caller() or caller_location()
        tracked = TrackedConnection(connection, location, database_key(database))
        writes = not (isinstance(database, str) and is_read_only_uri(database))
        for recording in recordings:
            recording.add(tracked, writes=writes)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Every audited event of the process comes here: only sqlite3's two matter, one
    with the database's name, then one with the connection."""
    __tracebackhide__ = True
    if event == "sqlite3.connect":
        _refuse_a_refused_file(args[0])  # raising here, the connection is never opened
        if _recordings:
            _refuse_another_database(args[0])
            _local.opening = args[0]
    elif event == "sqlite3.connect/handle" and _recordings:
        _record(args[0], getattr(_local, "opening", None))


def database_key(database: object) -> str | None:
    """What every spelling of one database has in common: the real path of its file, or
    ``memory:`` and the name of a named in-memory one (``file:/name?vfs=memdb``), never
    the path of a file; None for a private in-memory database, which nothing else can
    open."""
    if not isinstance(database, str | bytes | os.PathLike):
        return None
    name = os.fsdecode(database)
    path = database_path(name)
    if path is None:
        memory = name.startswith("file:") and unquote(urlsplit(name).path)
        return f"memory:{memory}" if memory and memory != ":memory:" else None
    return os.path.realpath(path)


def _refuse_a_refused_file(database: object) -> None:
    __tracebackhide__ = True
    paths, reason = _refused
    if paths and _file_of(database, paths) in paths:
        raise DatabaseAccessBlockedError(f"refused to open {database!r}: {reason}")


def _file_of(database: object, among: frozenset[str]) -> str | None:
    """The real path of the file that ``sqlite3.connect(database)`` opens, if its name is
    that of one of the paths ``among`` (resolving a path takes system calls: a test's
    own database, named otherwise, costs none)."""
    if not isinstance(database, str | bytes | os.PathLike):
        return None
    name = os.fsdecode(database)
    decoded = unquote(name)  # a URI's %61pp.db is app.db; costs nothing without a %
    if not any(os.path.basename(path) in decoded for path in among):  # no parsing: most
        return None
    path = database_path(name)
    if path is None or not any(each.endswith(os.sep + os.path.basename(path)) for each in among):
        return None
    return os.path.realpath(path)


def database_path(name: str) -> str | None:
    """The file that ``sqlite3.connect(name)`` opens: a ``file:`` URI's path, decoded (and
    without ``uri=True`` a file named so is alike), or ``name``; None for a database in
    memory or a temporary one."""
    if name.startswith("file:"):
        parts = urlsplit(name)
        if "vfs=memdb" in parts.query or "mode=memory" in parts.query:
            return None
        name = unquote(parts.path)
    return None if name in ("", ":memory:") else name


def refuse_files(paths: Iterable[str], reason: str) -> None:
    """From now on ``sqlite3.connect`` (and ``libsql.connect``) raise
    :class:`DatabaseAccessBlockedError` (with ``reason``) for these files; an empty
    ``paths`` lifts that."""
    global _refused
    with _lock:
        # Each as given too: a symbolic link's name is what code opens.
        named = [
            function(path) for path in paths for function in (os.path.realpath, os.path.abspath)
        ]
        _refused = (frozenset(named), reason)
        if _refused[0]:
            _install()
        else:
            _uninstall_if_unused()


def _tracking_libsql_connect(*args: Any, **kwargs: Any) -> Any:
    database = args[0] if args else kwargs.get("database", "")
    _refuse_a_refused_file(database)
    if _recordings:
        _refuse_another_database(database)
    connection = _original_libsql_connect(*args, **kwargs)
    if not _recordings or getattr(_local, "suspended", None) is not None:
        return connection
    tracked = TrackedLibsqlConnection(connection)
    _record(tracked, database)
    return tracked


@dataclass(frozen=True)
class OtherDatabases:
    """What the thread running a test may open to write besides its own databases
    (``own``, the URLs of its scopes, a list that grows with them) and those of the scopes
    alive now (``live``: one may outlive its test): scratch files, under a ``scratch``
    directory nearer than the ``project`` root (see :meth:`Recording.other_files`).
    ``allowed``: glob patterns of files the project lets tests write (a cache of its own).
    ``runs`` and ``memory_names``: the directories of the run's test databases and the
    key prefix of its in-memory ones, whose earlier tests' databases are named as such."""

    test_name: str
    own: list[str]
    live: Callable[[], Iterable[str]]
    scratch: list[str]
    project: str
    allowed: list[str]
    runs: list[str]
    memory_names: str
    thread: threading.Thread

    def refusal(self, name: str, path: str | None) -> str | None:
        """Why the test's thread may not open ``name`` (the file ``path``, None in memory)
        to write; None if it may."""
        key = self._key_of_another(name, path)
        if key is None:
            return None
        if path is None:  # in memory: only an earlier test's is refused (its rows are gone)
            return self._an_earlier_tests() if self._is_an_earlier_tests(key, path) else None
        # Before the scratch files: a URL's escapes can move its path out of the project.
        if path in {form for url in self.own for form in _spellings_as_a_path(url)}:
            return (
                f"{self.test_name} opened the path of its DATABASE_URL as a file name (an "
                "SQLite URI, file:...): open the URL whole, with "
                "sqlite3.connect(os.environ['DATABASE_URL'], uri=True)"
            )
        if _is_scratch(key, self.scratch, self.project) or _is_allowed(key, self.allowed):
            return None
        if self._is_an_earlier_tests(key, path):
            return self._an_earlier_tests()
        return (
            f"it is not the database of {self.test_name}, which would write to it: if it "
            "is your application's, the code that opened it reads another setting than "
            "DATABASE_URL, or read DATABASE_URL once, before the session set it (unset, it "
            "fell back to a default of its own): make it read DATABASE_URL when it "
            "connects. A file the test only "
            "reads (reference data): open it read-only, sqlite3.connect("
            f"'file:{path}?mode=ro', uri=True); one it makes: put it under tmp_path; one "
            "the project lets tests write (a cache): name it in isolation_allowed_databases"
        )

    def refusal_in_another_thread(self, name: str, path: str | None) -> str | None:
        """Why a thread other than the test's may not open ``name``: only the database of
        a test that has ended is refused there (a server's thread may serve other
        databases), which that thread can only have from a DATABASE_URL it kept; opened,
        it would be made again, empty, and written to."""
        key = self._key_of_another(name, path)
        if key is None or not self._is_an_earlier_tests(key, path):
            return None
        return (
            f"it is the database of a test that has ended, and this thread "
            f"({threading.current_thread().name!r}) kept its DATABASE_URL while "
            f"{self.test_name} runs: read DATABASE_URL when connecting, and let no thread "
            "outlive the test that started it"
        )

    def _key_of_another(self, name: str, path: str | None) -> str | None:
        """The :func:`database_key` of ``name``, or None for one of the test's own or of a
        scope alive now."""
        key = database_key(name) if path is None else os.path.realpath(path)
        if key is None or key in {database_key(url) for url in [*self.own, *self.live()]}:
            return None
        return key

    def _is_an_earlier_tests(self, key: str, path: str | None) -> bool:
        if path is None:
            return key.startswith(self.memory_names)
        return any(key.startswith(_directory(root)) for root in self.runs)

    def _an_earlier_tests(self) -> str:
        return (
            f"it is the database of an earlier test, not of {self.test_name}: something "
            "kept the DATABASE_URL of that test (a fixture wider than a test, a module "
            "global); read DATABASE_URL when connecting"
        )


def _opens_read_only(name: str, path: str | None) -> bool:
    """Whether ``name`` opens its file read-only: ``mode=ro``, or ``immutable=1`` over a
    file that exists (over a missing one, SQLite makes it)."""
    return is_read_only_uri(name) and ("mode=ro" in name or path is None or os.path.exists(path))


def _spellings_as_a_path(url: str) -> tuple[str, str]:
    """``url`` taken for a file name: without its ``file:``, and its path alone."""
    return url.removeprefix("file:"), unquote(urlsplit(url).path)


def _refuse_another_database(database: object) -> None:
    """Raise :class:`DatabaseAccessBlockedError`, before it is opened, for a database the
    project's code would write to that the test's :class:`OtherDatabases` refuses: on the
    test's own thread, any other than its own; on another thread (a server's started by a
    wider fixture, say), only an earlier test's, the others being warned of at the test's
    end."""
    __tracebackhide__ = True
    if getattr(_local, "suspended", None) is not None:
        return
    for recording in list(_recordings):
        others = recording.others
        if others is None or database in others.own:  # the test's own: no system call
            continue
        if not isinstance(database, str | bytes | os.PathLike):
            continue
        name = os.fsdecode(database)
        path = database_path(name)
        if REMOTE_URL.match(name) or _opens_read_only(name, path):
            continue
        if threading.current_thread() is others.thread:
            reason = others.refusal(name, path)
        else:
            reason = others.refusal_in_another_thread(name, path)
        if reason is not None and recording.project_caller() is not None:
            raise DatabaseAccessBlockedError(f"refused to open {name!r}: {reason}")


@contextmanager
def untracked() -> Iterator[list[Any]]:
    """Connections opened by this thread meanwhile are the isolation core's own, or a wider
    fixture's, not a test's: no recording gets them. The list it gives fills with the
    sqlite3 connections opened while a recording is on."""
    previous = getattr(_local, "suspended", None)
    opened: list[Any] = []
    _local.suspended = opened
    try:
        yield opened
    finally:
        _local.suspended = previous


class Recording:
    """The connections opened since :func:`record_connections` returned it."""

    def __init__(
        self,
        is_project_file: Callable[[str], bool] | None = None,
        others: OtherDatabases | None = None,
    ) -> None:
        self.opened: list[TrackedConnection] = []
        # Each database the project's code opened to write: where it first did.
        self.written: dict[str, str] = {}
        self.others = others
        self._is_project_file = is_project_file
        self._search_at = PRUNE_EVERY

    def project_caller(self) -> str | None:
        """``file:line`` of the project's code that is opening a connection (none for a
        test tool's own file)."""
        if self._is_project_file is None:
            return caller_location()
        return _project_caller(self._is_project_file)

    def add(self, tracked: TrackedConnection, *, writes: bool = True) -> None:
        """Remember ``tracked``; now and then, first, forget those closed or dropped
        meanwhile (not ``tracked``, whose connection is still being opened). ``writes``:
        not opened read-only."""
        if len(self.opened) >= self._search_at:
            self.opened = self.still_open()
            self._search_at = len(self.opened) + PRUNE_EVERY
        self.opened.append(tracked)
        if writes and tracked.database is not None and tracked.database not in self.written:
            where = self.project_caller() if self._is_project_file else tracked.location
            if where is not None:  # not a tool's own file (coverage's data file)
                self.written[tracked.database] = where

    def other_files(
        self,
        own: Iterable[object],
        scratch: Iterable[str],
        project: str,
        allowed: Iterable[str] = (),
    ) -> dict[str, str]:
        """The database files the project's code opened to write meanwhile, with where it
        first did, other than the ``own`` databases (as :func:`database_key` takes them),
        files under the ``scratch`` directories (a test's temporary files) and those the
        ``allowed`` glob patterns match. Of a scratch directory and the ``project`` root,
        the nearer one decides: a checkout under ``/tmp`` holds no scratch files, a
        ``--basetemp`` inside the project does, and a project that is the temporary
        directory itself holds them."""
        others = self.written.keys() - {database_key(database) for database in own}
        scratch, allowed = list(scratch), list(allowed)
        return {
            path: self.written[path]
            for path in sorted(others)
            if not _is_scratch(path, scratch, project)
            and not _is_allowed(path, allowed)
            and os.path.isfile(path)  # not an in-memory database's name
        }

    def still_open(self) -> list[TrackedConnection]:
        """The recorded connections still open and held by their code. One that only the
        recordings hold is closed now, as the garbage collector would have closed it once
        the code let go of it (a loop of ``connect(url).execute(...)`` must not run out of
        files, nor report a leak)."""
        return [tracked for tracked in self.opened if tracked.is_open and not _dropped(tracked)]

    def stop(self) -> list[TrackedConnection]:
        """Stop recording; return the connections that are still open (the leaks), and
        hold no other: those the code let go of are the garbage collector's again."""
        with _lock:
            if self in _recordings:
                _recordings.remove(self)
            _uninstall_if_unused()
        still_open, self.opened = self.still_open(), []
        return still_open


@functools.lru_cache(maxsize=64)
def _directory(path: str) -> str:
    """``path`` resolved, with a separator at its end (a run's few roots, resolved once)."""
    return os.path.join(os.path.realpath(path), "")


def _is_scratch(path: str, scratch: Iterable[str], project: str) -> bool:
    """Whether ``path`` lies under one of the ``scratch`` directories, nearer than under
    the ``project`` root."""
    roots = {_directory(project): False} | {_directory(root): True for root in scratch}
    real = os.path.realpath(path)
    under = [root for root in roots if real.startswith(root)]
    return roots[max(under, key=len)] if under else False


def _is_allowed(path: str, patterns: Iterable[str]) -> bool:
    """Whether the real ``path`` matches one of the absolute ``patterns`` (fnmatch's: its
    ``*`` matches across directories too)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _project_caller(is_project_file: Callable[[str], bool]) -> str | None:
    """``file:line`` of the nearest caller in the project's own code (through a library
    such as SQLAlchemy), if any; none for a test tool's own file (coverage's data)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if any(tool in filename for tool in _TEST_TOOLS):
            return None
        if is_project_file(filename):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _references(tracked: TrackedConnection) -> int:
    return sys.getrefcount(tracked.connection)


def _references_of_a_dropped_connection() -> int:
    """What :func:`_references` counts for a sqlite3 connection only its record holds (a
    connection refers to itself: its statement cache)."""
    tracked = TrackedConnection(sqlite3.Connection(":memory:"), "", None)
    try:
        return _references(tracked)
    finally:
        tracked.connection.close()


_ONLY_TRACKED = _references_of_a_dropped_connection()
# How many recorded connections between two searches for those closed or dropped.
PRUNE_EVERY = 100


def _dropped(tracked: TrackedConnection) -> bool:
    """Whether the code that opened a plain sqlite3 connection let go of it (only the
    recordings hold it): then it is closed, as the garbage collector would have; one of
    another thread, which only that thread may close, is left to the garbage collector."""
    if type(tracked.connection) is not sqlite3.Connection or _references(tracked) > _ONLY_TRACKED:
        return False
    with suppress(sqlite3.ProgrammingError):
        tracked.connection.close()
    return True


def _install() -> None:
    global _original_libsql_connect, _audit_hook_added
    if not _audit_hook_added:
        sys.addaudithook(_audit)
        _audit_hook_added = True
    libsql: Any = sys.modules.get("libsql") or _import_libsql()
    if libsql is not None and _original_libsql_connect is None:
        _original_libsql_connect = libsql.connect
        libsql.connect = _tracking_libsql_connect


@functools.cache
def _import_libsql() -> Any:
    """libsql, imported now where it is installed (a few ms, once): code that imported it
    later, inside a test, would find its ``connect`` not wrapped. None where it is not."""
    if importlib.util.find_spec("libsql") is None:
        return None
    try:
        return importlib.import_module("libsql")
    except ImportError:  # installed, but it cannot load here: nobody can connect with it
        return None


def _uninstall_if_unused() -> None:
    if not _recordings and not _refused[0]:
        _uninstall()


def _uninstall() -> None:
    global _original_libsql_connect
    libsql: Any = sys.modules.get("libsql")
    if libsql is not None and _original_libsql_connect is not None:
        libsql.connect = _original_libsql_connect
    _original_libsql_connect = None


def record_connections(
    is_project_file: Callable[[str], bool] | None = None, others: OtherDatabases | None = None
) -> Recording:
    """Start recording the connections opened from now on; ``is_project_file`` tells the
    project's own code, which alone :attr:`Recording.written` counts and ``others``
    refuses."""
    recording = Recording(is_project_file, others)
    with _lock:
        _recordings.append(recording)
        _install()
    return recording
