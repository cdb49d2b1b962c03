"""Where test databases come from: a cached migrated template and fast copies of it.

Migrations run once per schema, not once per run: the template is cached under
``data/.isolation/templates/`` keyed by a hash of the migration files (and the SQLite
version), rebuilt when that changes or the cached file fails its checks, under a file
lock so parallel processes never build it twice at once. Each process copies it into its
own run directory ``<runs>/<pid>-<random>/``, and every scope gets a copy of that: a real
file, or a named in-memory database (:func:`memory_url`). The runs directory is
``data/.isolation/``, or one in RAM (see :func:`runs_root`).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import IO, Literal, TypeVar, get_args
from urllib.parse import quote

from . import migrate
from .connection_tracking import untracked
from .database import DatabaseClient, delete_database_files
from .database_config import Engine, is_disk_refusal
from .statement_alarm import ALARM

try:
    import fcntl
except ImportError:  # Windows: the atomic rename below still keeps the cache consistent
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("isolation")

Strategy = Literal["file", "memory"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
T = TypeVar("T")
RUNS_DIR_NAME = ".isolation"
# Bump when the way templates are built changes, so cached ones are rebuilt.
TEMPLATE_FORMAT = "1"
TEMPLATE_PRAGMAS: Mapping[str, str] = {"journal_mode": "WAL", "foreign_keys": "ON"}
# What each test's database runs with. Journal mode (WAL), foreign keys and the busy
# timeout are as in production because they change behaviour, not just speed. A copy
# inherits WAL from the template's header and the busy timeout from connect(), so only
# the per-connection settings are set again. Test databases are deleted after their
# test, so durability buys nothing: synchronous=OFF skips fsync.
SCOPE_PRAGMAS: Mapping[str, str] = {"synchronous": "OFF", "foreign_keys": "ON"}
# An in-memory database never syncs, so it only gets foreign keys: setting synchronous
# there would read the schema of the still empty database before the copy, for nothing.
MEMORY_PRAGMAS: Mapping[str, str] = {"foreign_keys": "ON"}

# Named in-memory databases that other connections can open (the memdb VFS).
MEMDB_SQLITE = (3, 36, 0)
# What making a run directory raises when another process removed ``runs`` meanwhile.
_RUNS_VANISHED = (FileNotFoundError, FileExistsError)
# What telling a process a signal raises when it has no such process (OverflowError: no
# pid is that big).
_NO_SUCH_PROCESS = (ProcessLookupError, OverflowError)
# What listing ``runs`` raises when there is none, or its last run just removed it.
_NO_RUNS = (FileNotFoundError, NotADirectoryError)
# How a copy of the template is created: a new file only, never one that exists.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)

# A RAM filesystem for throwaway databases, used when it has this much room.
SHM_ROOT = Path("/dev/shm")
# What decides where the test databases go, as an error opening one names it.
TEST_DATABASES_SOURCE = "the isolation_data_dir and isolation_use_dev_shm settings"
SHM_MIN_FREE = 1 << 30

_run_dirs: dict[tuple[Path, int], Path] = {}
# This process's hold on each of its run directories, for as long as it uses them.
_holds: dict[Path, IO[bytes]] = {}
# In every run directory: the file its process holds a lock on while it runs.
ALIVE_FILE = ".alive"
# A run directory's name until its alive file is held; left only by a process killed in
# those microseconds, and deleted once this old.
NEW_RUN_PREFIX = ".new-"
ABANDONED_NEW_RUN_S = 3600.0
_templates: dict[tuple[Path, Path, int], Template] = {}
_lock = threading.Lock()


def runs_root(data_dir: Path, *, use_shm: bool = False) -> Path:
    """Where the run directories of the project whose data is in ``data_dir`` go.

    ``<data>/.isolation``; with ``use_shm``, a private directory in ``/dev/shm`` instead
    (a RAM filesystem on Linux: no journaling, so each file test is about 0.2 ms faster)
    when it exists with at least 1 GiB free and this process may write there.
    """
    if use_shm and SHM_ROOT.is_dir() and shutil.disk_usage(SHM_ROOT).free >= SHM_MIN_FREE:
        runs = _shm_runs(data_dir)
        if _ours_alone(runs) and _may_make_runs_in(runs):
            return runs
    return data_dir / RUNS_DIR_NAME


def _may_make_runs_in(runs: Path, attempts: int = 3) -> bool:
    """Whether this process may make its run directory in ``runs``: a sandbox may forbid
    writing to /dev/shm whatever its modes and ``os.access`` say (a read-only mount,
    Landlock), so one is made and removed again, and ``runs`` with it if it was empty."""
    for _ in range(attempts):  # another run's end may remove ``runs`` between the mkdirs
        probe = runs / f"{NEW_RUN_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            runs.mkdir(mode=0o700, exist_ok=True)
            probe.mkdir()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        probe.rmdir()
        with suppress(OSError):  # not empty: other runs of the project are in it
            runs.rmdir()
        return True
    return False


def _shm_runs(data_dir: Path) -> Path:
    project = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return SHM_ROOT / f"{_shm_prefix()}{project}"


def _shm_prefix() -> str:
    return f"isolation-{os.getuid()}-"


def all_runs_roots(data_dir: Path) -> list[Path]:
    """Every place :func:`runs_root` may have put the project's run directories, whatever
    ``use_shm`` says now and however full ``/dev/shm`` is: where a killed run's are looked
    for."""
    on_disk = data_dir / RUNS_DIR_NAME
    if not SHM_ROOT.is_dir():  # no /dev/shm (Windows, macOS): never used
        return [on_disk]
    shm = _shm_runs(data_dir)
    return [on_disk, *([shm] if _ours_alone(shm) else [])]


def users_shm_roots() -> list[Path]:
    """This user's run roots in ``/dev/shm``, of every project directory: a killed run of
    a project since moved or deleted has no later run of its own to delete its databases,
    which would hold RAM until the machine restarts."""
    if not SHM_ROOT.is_dir():
        return []
    return [
        path for path in SHM_ROOT.glob(f"{_shm_prefix()}*") if path.is_dir() and _ours_alone(path)
    ]


def _ours_alone(path: Path) -> bool:
    """Absent, or a real directory of this user (never one another user set up first)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return True
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def run_directory(runs: Path) -> Path:
    """This process's directory for test databases: ``<runs>/<pid>-<random>``."""
    key = (runs, os.getpid())
    with _lock:
        if key not in _run_dirs:
            _run_dirs[key] = _make_run_directory(runs)
        return _run_dirs[key]


def _make_run_directory(runs: Path, attempts: int = 1000) -> Path:
    """Made under a name no run has (``.new-<pid>-<random>``) and renamed once its alive
    file is held: another process, maybe in a PID namespace where our pid means nothing,
    never finds it unheld under its run's name and deletes it as a killed run's.

    Another process's session end removes ``runs`` once it is empty, possibly between
    our two mkdirs: try again (a few microseconds each; even processes that do nothing
    but start and end sessions in a loop never needed 50 tries)."""
    attempt = 1
    while True:
        path = runs / f"{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _make_held_directory(path)
        except _RUNS_VANISHED:
            if attempt == attempts:
                raise
            attempt += 1
            continue
        return path


def _make_held_directory(path: Path) -> None:
    """Make the run directory ``path``, held (see :func:`_hold`) before it has its name."""
    new = path if fcntl is None else path.with_name(f"{NEW_RUN_PREFIX}{path.name}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new.mkdir()
    hold = _hold(new)
    if hold is not None:
        try:
            new.rename(path)
        except BaseException:
            hold.close()
            raise
        old = _holds.pop(path, None)
        _holds[path] = hold
        if old is not None:
            old.close()


def restore_run_directory(path: Path) -> None:
    """Make this process's run directory ``path`` again, held as when it was first made,
    if it went during the run (a test removed ``data/``): a directory without its hold
    would be judged by its pid alone, and deleted by a run in another PID namespace."""
    with _lock:
        if not path.is_dir():
            _make_held_directory(path)


def _hold(path: Path) -> IO[bytes] | None:
    """Lock the run directory's alive file for as long as this process uses it: other
    processes tell from it that the run lives, even one whose pid they cannot see (in
    another PID namespace: a container sharing the project's data directory)."""
    if fcntl is None:
        return None
    handle = open(path / ALIVE_FILE, "wb")  # noqa: SIM115 (held until the run ends)
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


@atexit.register
def _let_go_of_all() -> None:
    """At exit, the holds of a process that never ended its session (a script that made
    a manager and no ``shutdown()``): the lock goes with the process either way."""
    with _lock:
        holds = list(_holds.values())
        _holds.clear()
    for handle in holds:
        handle.close()


def _held(path: Path) -> bool | None:
    """Whether a live process holds the run directory ``path`` (see :func:`_hold`); None
    when that cannot be told: no alive file (a run from before there was one, or one
    killed as it began) or no ``flock`` (Windows)."""
    if fcntl is None:
        return None
    try:
        with open(path / ALIVE_FILE, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    return False


def remove_run_directory(runs: Path) -> None:
    """Delete this process's test databases and forget its templates (end of session)."""
    with _lock:
        path = _run_dirs.pop((runs, os.getpid()), None)
        forgotten = [_templates.pop(key) for key in list(_templates) if key[0] == runs]
        hold = _holds.pop(path, None) if path is not None else None
    for template in forgotten:
        template.close()
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        if hold is not None:
            hold.close()
        with suppress(OSError):  # not empty: another process's run, or the template cache
            runs.rmdir()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run. On Windows, ``os.kill(pid, 0)`` would send
    Ctrl-C to that process group: every pid counts as alive there, and nothing is deleted."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except _NO_SUCH_PROCESS:
        return False
    except OSError:  # e.g. not ours to signal: alive
        return True
    return True


def _live_runs(runs: Path) -> Iterator[tuple[Path, bool]]:
    """Each run directory of another process in ``runs``, and whether that process lives.

    Its hold on the directory decides where it has one: its pid may be another PID
    namespace's (in a container, pytest is often pid 1 in every run) or reused since.
    Without one, whether its pid lives here."""
    ours = tuple(_run_dirs.values())  # one step, no lock: run_directory may hold it
    try:
        paths = list(runs.iterdir())
    except _NO_RUNS:
        paths = []
    for path in paths:
        if path.name.startswith(NEW_RUN_PREFIX):  # being made: never a live run's to take
            if _age_s(path) > ABANDONED_NEW_RUN_S:
                yield path, False
            continue
        pid, _, _ = path.name.partition("-")
        if pid.isdigit() and path not in ours:
            held = _held(path)
            yield path, _pid_alive(int(pid)) if held is None else held


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def oldest_live_run(roots: Iterable[Path]) -> float | None:
    """When the oldest live run of another process in ``roots`` began (None: there is
    none; 0.0: one whose start is unknown): what that run kept is newer."""
    began = [_began(path) for runs in roots for path, alive in list(_live_runs(runs)) if alive]
    return min(began, default=None)


def _began(path: Path) -> float:
    """When the run of the directory ``path`` began: its alive file is made then and never
    written again (the directory's own times change with every test's database)."""
    try:
        return (path / ALIVE_FILE).stat().st_mtime
    except OSError:
        return 0.0


def remove_stale_runs(runs: Path) -> list[Path]:
    """Delete run directories whose process is gone (a killed run), and ``runs`` itself if
    that empties it; return them."""
    removed = []
    for path, alive in list(_live_runs(runs)):
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        with suppress(OSError):  # not empty: a live run's, or the template cache
            runs.rmdir()
    return removed


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _template_key(migrations_dir: Path) -> str:
    source = f"{TEMPLATE_FORMAT}\0{sqlite3.sqlite_version}\0"
    source += migrate.migrations_fingerprint(migrations_dir)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def file_url(path: Path) -> str:
    """The ``file:`` URI of ``path``, percent-encoded: a ``%``, ``?`` or ``#`` in a directory
    name is part of the path, never the start of a query sending SQLite to another file."""
    return f"file:{quote(str(path))}"


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Open a template without locks and without creating -wal/-shm files beside it."""
    return sqlite3.connect(f"{file_url(path)}?immutable=1", uri=True)


def _is_valid_template(path: Path, expected: list[str]) -> bool:
    """A cached template is usable if SQLite finds it sound and it has every migration."""
    if not path.is_file():
        return False
    try:
        with closing(_open_read_only(path)) as conn:
            if conn.execute("PRAGMA quick_check").fetchone() != ("ok",):
                return False
            applied = migrate.applied_migrations(conn)
    except sqlite3.Error:
        return False
    return applied == expected


class TemplateWriteError(OSError):
    """The template could not be written whole: the disk is full, or failing."""


def _build_template(path: Path, migrations_dir: Path) -> Path:
    """Migrate a new file beside ``path``, and return it; it goes in the cache as ``path``
    only once it is checked whole: a close that cannot copy the WAL back (a full disk)
    raises nothing, and would leave an empty file there."""
    partial = path.with_name(f"{path.stem}-{secrets.token_hex(4)}.partial")
    client: DatabaseClient | None = None
    try:
        client = DatabaseClient(str(partial), owner="the template build", pragmas=TEMPLATE_PRAGMAS)
        migrate.apply_migrations(client.db, migrations_dir)
        client.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the file, now
    except BaseException as error:
        # A failed build leaves nothing behind.
        discard_database(partial, client.close if client is not None else lambda: True)
        refused = _disk_refused(error, path)
        if refused is None:
            raise
        raise refused from error
    client.close()
    return partial


def _disk_refused(error: BaseException, path: Path) -> TemplateWriteError | None:
    """A clear error for a build the disk refused (the migrations are not at fault), or
    None for any other failure."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, sqlite3.Error) and is_disk_refusal(cause):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    free = shutil.disk_usage(path.parent).free
    return TemplateWriteError(
        f"cannot write the template database {path}: {cause} ({free} bytes free there; "
        "is the disk full?)"
    )


def template_lock(data_dir: Path) -> Path:
    """The file lock held while a template is built in the cache of ``data_dir``."""
    return data_dir / RUNS_DIR_NAME / "templates" / ".lock"


def cached_template(migrations_dir: Path, data_dir: Path) -> Path:
    """The migrated template for these migrations, built only when missing or unsound.

    A sound cache is used without a lock, or a write (a read-only data directory will do).
    Otherwise the build runs under a file lock, which also clears what other templates
    and builds killed half-way left behind: no other build can be running then.
    """
    lock = template_lock(data_dir)
    cache_dir = lock.parent
    path, expected = _cache_entry(cache_dir, migrations_dir)
    if _is_valid_template(path, expected) and not any(cache_dir.glob("*.partial*")):
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(lock):
        path = _built_template(cache_dir, migrations_dir)
        for stale in [*cache_dir.glob("*.db"), *cache_dir.glob("*.partial*")]:
            if stale != path and not _may_be_building(stale):
                with suppress(OSError):  # open in another process (Windows): next time
                    _remove_cache_entry(stale)
    return path


def _may_be_building(path: Path) -> bool:
    """Without ``flock`` (Windows) the lock keeps no other build out: a partial file less
    than an hour old may be one that another process is still writing."""
    return fcntl is None and ".partial" in path.name and _age_s(path) < ABANDONED_NEW_RUN_S


def _cache_entry(cache_dir: Path, migrations_dir: Path) -> tuple[Path, list[str]]:
    """Where the template of the migrations as they are now is cached, and the names of
    the migrations it must have."""
    key = _template_key(migrations_dir)
    return cache_dir / f"{key}.db", [path.stem for path in migrate.migration_files(migrations_dir)]


def _built_template(cache_dir: Path, migrations_dir: Path, attempts: int = 3) -> Path:
    """The cached template of the migrations as they are now, built if it is missing or
    unsound. A build runs on a copy of the files and is cached under that copy's hash, so
    a migration saved meanwhile (an editor, a branch checked out) never gets in; files
    that changed during the build, or a build that failed on a file half-saved, are
    built again."""
    for _ in range(attempts):
        # In the cache, where a build killed half-way leaves it with the other .partial files.
        with tempfile.TemporaryDirectory(".partial", "migrations-", cache_dir) as copy:
            snapshot = _copy_migrations(migrations_dir, Path(copy))
            path, expected = _cache_entry(cache_dir, snapshot)
            try:
                if not _is_valid_template(path, expected):
                    _build_into_cache(path, snapshot, expected)
            except migrate.MigrationError:
                if _template_key(migrations_dir) == path.stem:
                    raise  # the migration as it is now fails
                continue
        if _template_key(migrations_dir) == path.stem:
            return path
    raise migrate.MigrationsChangedError(
        f"the migrations in {migrations_dir} changed {attempts} times while the template "
        "database was built from them: run again once they are saved"
    )


def _copy_migrations(migrations_dir: Path, directory: Path) -> Path:
    """Copy the migration files into ``directory``, and return it."""
    for file in migrate.migration_files(migrations_dir):
        shutil.copyfile(file, directory / file.name)
    return directory


def _build_into_cache(path: Path, migrations_dir: Path, expected: list[str]) -> None:
    """Build the template of ``migrations_dir`` and put it in the cache as ``path``, whole."""
    logger.debug("building template %s", path)
    _remove_cache_entry(path)
    partial = _build_template(path, migrations_dir)
    if not _is_valid_template(partial, expected):
        delete_database_files(partial)
        raise TemplateWriteError(f"the template database {path} could not be written whole")
    os.replace(partial, path)


def _remove_cache_entry(path: Path) -> None:
    """Remove a file of the template cache, or whatever took its name there (a directory)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Template:
    """This process's copy of the migrated template, read into memory once when needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: bytes | None = None
        self._in_memory: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    @property
    def data(self) -> bytes:
        """The template file's bytes: writing them is the cheapest copy (3 system calls)."""
        if self._data is None:
            self._data = self.path.read_bytes()
        return self._data

    def copy_to(self, path: Path) -> None:
        """Write a copy of the template to the new file ``path``: never over an existing
        file, and never half a copy (a failed write removes it)."""
        descriptor = os.open(path, _NEW_FILE, 0o666)
        try:
            remaining = memoryview(self.data)
            while remaining:
                remaining = remaining[os.write(descriptor, remaining) :]
        except BaseException:
            os.close(descriptor)
            path.unlink(missing_ok=True)
            raise
        os.close(descriptor)

    @property
    def in_memory(self) -> sqlite3.Connection:
        """The template in a private in-memory database, the source of in-memory copies;
        marked as a rollback-journal database (memory has no WAL). Built on first use."""
        conn = self._in_memory
        if conn is not None:  # every memory test after the first: no lock, no tracking
            return conn
        with self._lock, untracked():
            if self._in_memory is None:
                with closing(_open_read_only(self.path)) as file:
                    image = bytearray(file.serialize())
                image[18:20] = b"\x01\x01"
                conn = sqlite3.connect(":memory:", check_same_thread=False)
                conn.deserialize(bytes(image))
                self._in_memory = conn
            return self._in_memory

    def close(self) -> None:
        """Close the in-memory source, if it was opened."""
        with self._lock:
            if self._in_memory is not None:
                self._in_memory.close()
                self._in_memory = None

    def copy_into(self, client: DatabaseClient) -> None:
        """Fill ``client``'s new, empty in-memory database with the template."""
        with self._lock:  # one backup at a time reads the shared source
            client.restore_from(self.in_memory)

    def fill(self, conn: sqlite3.Connection) -> None:
        """Fill the new, empty in-memory database of ``conn`` with the template."""
        with self._lock:
            self.in_memory.backup(conn)


def template_for(migrations_dir: Path, data_dir: Path, runs: Path) -> Template:
    """This process's template: copied from the cache once, then reused by every scope."""
    key = (runs, migrations_dir, os.getpid())
    with _lock:
        template = _templates.get(key)
    if template is None:
        path = _copy_of_cached_template(migrations_dir, data_dir, run_directory(runs))
        with _lock:
            template = _templates.setdefault(key, Template(path))
    return template


def _copy_of_cached_template(
    migrations_dir: Path, data_dir: Path, directory: Path, attempts: int = 3
) -> Path:
    """Copy the cached template into ``directory``. A run on other migrations sharing the
    cache replaces its template by theirs; one that does it between our finding the
    template and copying it makes us find (or build) it again."""
    attempt = 1
    while True:
        cached = cached_template(migrations_dir, data_dir)
        path = directory / f"template-{cached.stem}.db"
        try:
            shutil.copyfile(cached, path)
        except FileNotFoundError:
            if attempt == attempts or not directory.is_dir():
                raise
            attempt += 1
            continue
        return path


def memory_url(name: str) -> str:
    """The URI of the in-memory database ``name``: every connection of this process that
    opens it shares one database, which lives until the last of them closes."""
    return f"file:/{quote(name)}?vfs=memdb"


def check_strategy(strategy: str, engine: Engine) -> None:
    """Raise ValueError, saying what to use instead, if ``strategy`` cannot run here."""
    if strategy != "memory":
        return
    if engine != "sqlite3":
        raise ValueError(
            "the memory strategy needs the sqlite3 engine (libsql cannot copy a database "
            "into memory): use the file strategy with DATABASE_DRIVER=libsql"
        )
    if sqlite3.sqlite_version_info < MEMDB_SQLITE:
        raise ValueError(
            f"the memory strategy needs SQLite {'.'.join(map(str, MEMDB_SQLITE))} or newer "
            f"for named in-memory databases; this Python has {sqlite3.sqlite_version}: "
            "use the file strategy"
        )


class DatabaseFactory:
    """Makes a fresh copy of the template for each scope, and opens it.

    Everything happens on the test's own thread: preparing copies in a background thread
    was measured slower overall, since it competes with the tests for the GIL.
    """

    def __init__(
        self, template: Template, strategy: Strategy, directory: Path, engine: Engine = "sqlite3"
    ) -> None:
        check_strategy(strategy, engine)
        self.template = template
        self.strategy = strategy
        self.engine = engine
        self.directory = directory
        self._numbers = itertools.count()

    def new_database(self) -> Path | None:
        """Copy the template to a new file (the file strategy); None for the memory one,
        whose database exists while a connection has it open (see :meth:`hold_in_memory`)."""
        if self.strategy == "memory":
            return None
        path = self.directory / f"db-{next(self._numbers)}-{secrets.token_hex(2)}.db"
        try:
            self.template.copy_to(path)
        except FileNotFoundError:  # the directory went during the run (a test removed data/)
            restore_run_directory(self.directory)
            self.template.copy_to(path)
        return path

    def hold_in_memory(self, url: str) -> sqlite3.Connection:
        """Make the in-memory database ``url`` from the template; return the connection
        that holds it. It lives until that connection closes, whatever its clients do: a
        test may close its client, or reset the application's, and connect again."""
        with untracked():
            holder = sqlite3.connect(url, uri=True, check_same_thread=False)
        try:
            self.template.fill(holder)
        except BaseException:
            holder.close()
            raise
        return holder

    def connect(self, path: Path | None, url: str, owner: str) -> DatabaseClient:
        """A client on the file ``path``, or on the in-memory database at ``url``."""
        with untracked():
            if path is None:
                client = DatabaseClient(url, owner=owner, pragmas=MEMORY_PRAGMAS)
            else:
                client = DatabaseClient(
                    str(path),
                    owner=owner,
                    pragmas=SCOPE_PRAGMAS,
                    engine=self.engine,
                    source=TEST_DATABASES_SOURCE,
                )
        client.stop_statements_on(ALARM)  # a test's timeout stops its statement
        return client


def keep_database(
    client: DatabaseClient | None,
    path: Path | None,
    destination: Path,
    timeout: float,
    holder: sqlite3.Connection | None = None,
) -> Path | None:
    """Save a test's database to ``destination`` for a post-mortem; return where it went
    (None when there is nothing to save: a file the test deleted).

    A file is read by a connection of its own, which sees what is committed in the WAL
    too and never waits for a client another thread still holds. An in-memory database is
    read through its open client, which gets ``timeout`` seconds to be free (a connection
    of its own would wait as long: without WAL, an open write transaction blocks readers),
    or else through the ``holder`` that keeps it alive.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.unlink(missing_ok=True)
    with untracked():  # the isolation's own copy: no connection of the test's
        if path is not None and path.exists():
            with (
                closing(sqlite3.connect(path)) as source,
                closing(sqlite3.connect(destination)) as target,
            ):
                source.backup(target)
        elif client is not None and not client.closed:
            client.backup(destination, timeout=timeout)
        elif holder is not None:
            with closing(sqlite3.connect(destination)) as target:
                holder.backup(target)
        else:
            return None
    return destination


def discard_database(path: Path | None, close: Callable[[], T]) -> T:
    """Close a test's database with ``close`` and delete its files; return what ``close``
    returned.

    The files go first where open files can be deleted (POSIX): SQLite then finds the
    database gone and skips the checkpoint at close, which would copy the test's WAL back
    into a file about to be deleted. Windows cannot delete an open file, so it closes first.
    """
    if os.name == "nt":
        closed = close()
        delete_database_files(path)
        return closed
    delete_database_files(path)
    return close()
