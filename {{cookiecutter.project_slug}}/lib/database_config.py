"""Where the database is and which engine opens it, as the environment says.

``DATABASE_URL``, ``DATABASE_DRIVER``, ``TURSO_DATABASE_URL`` and ``TURSO_AUTH_TOKEN`` are
interpreted here. A value we cannot use, or a database SQLite cannot open, is a
:class:`DatabaseConfigError` that names the setting and says what to set instead.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_DATABASE_URL = "file:./data/app.db"
Engine = Literal["sqlite3", "libsql"]
ENGINES: tuple[Engine, ...] = ("sqlite3", "libsql")
REMOTE_SCHEMES = frozenset({"libsql", "http", "https", "ws", "wss"})
# Remote schemes that libsql-python opens as a local file of that name: refused.
_FILE_TO_LIBSQL = frozenset({"ws", "wss"})


class DatabaseConfigError(ValueError):
    """A database setting such as ``DATABASE_URL`` has a value we cannot use."""


def is_remote_url(value: str) -> bool:
    """Whether ``value`` names a remote libSQL/Turso database rather than a local file."""
    scheme, separator, _ = value.partition("://")
    return bool(separator) and scheme.lower() in REMOTE_SCHEMES


def shown_url(value: str) -> str:
    """The URL ``value`` as a message may show it: without its query (a token may be
    there) and without the user and password before its host."""
    head = value.partition("?")[0].partition("#")[0]
    scheme, separator, rest = head.partition("://")
    if not separator:
        return head
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def local_database_file(path: str) -> Path | None:
    """The file that the SQLite ``path`` names, or None for ``:memory:``, an SQLite URI
    (``file:...?...``) and a remote URL: what may need its directory created first."""
    if path == ":memory:" or path.startswith("file:") or is_remote_url(path):
        return None
    return Path(path)


def parse_database_url(url: str, variable: str = "DATABASE_URL") -> str:
    """Return the SQLite path (or ``:memory:``) that ``url`` names; explain a bad value.

    A remote libSQL URL (``libsql://``, ``https://``, ...) is returned as it is, and so is
    a ``file:`` URL with a query (``?mode=ro``, ``?vfs=memdb``): SQLite opens it as a URI.
    """
    value = url.strip()
    if not value:
        raise DatabaseConfigError(
            f"{variable} is set but empty: unset it to use the default ({DEFAULT_DATABASE_URL}), "
            "or set it to a database URL such as file:./data/app.db, :memory: or libsql://..."
        )
    if value == ":memory:":
        return value
    scheme, path = ("file:", value[5:]) if value.startswith("file:") else ("", value)
    if re.match(r"~[^/\\]*[/\\]", path):  # ~/app.db, ~user/app.db: a home directory
        name, question, query = path.partition("?")
        written_out = f"{scheme}{os.path.expanduser(name)}{question}{query}"
        raise DatabaseConfigError(
            f"{variable}={value!r} starts with ~, which only a shell expands: SQLite would "
            f"make a directory named {name.partition('/')[0]} here. Write the path out "
            f"({written_out})"
        )
    # A scheme, with or without "//" (sqlite:data/app.db); one letter is a Windows drive.
    scheme_match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):(//)?", value)
    if value.startswith("file:"):
        parts = urlsplit(value)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path:
            raise DatabaseConfigError(
                f"{variable}={shown_url(value)!r} is not a local SQLite file URL: "
                "use file:./relative/path.db or file:///absolute/path.db"
            )
        return value if parts.query else path
    if scheme_match:
        scheme, slashes = scheme_match.group(1).lower(), scheme_match.group(2)
        if scheme in REMOTE_SCHEMES:
            if slashes:
                return check_remote_url(value, variable)
            rest = value[len(scheme) + 1 :].partition("?")[0]  # never the query: tokens
            rest = rest.rpartition("@")[2]  # nor a password
            raise DatabaseConfigError(
                f"{variable}={scheme}:{rest}...: a {scheme} URL needs '//' after the scheme, "
                f"as in {scheme}://{rest}"
            )
        if scheme == "file":  # FILE:./app.db: SQLite reads only a lowercase file: as a URL
            raise DatabaseConfigError(
                f"{variable}={value!r}: write the scheme in lowercase (file:{value[5:]}), "
                "as SQLite reads only that as a file URL"
            )
        shown = f"{scheme}://{urlsplit(value).hostname or ''}" if slashes else f"{scheme}:"
        raise DatabaseConfigError(
            f"{variable}={shown}... uses the unsupported scheme {scheme!r}: use a SQLite path "
            "such as file:./data/app.db, a plain path, or :memory:"
        )
    if "?" in value:  # SQLite would make a file whose name ends in the query
        path, _, query = value.partition("?")
        raise DatabaseConfigError(
            f"{variable}={value!r} is a plain path with a query, which SQLite takes as part of "
            f"the file name: write it as a file URL (file:{path}?{query}) for the query to count"
        )
    return value


def check_remote_url(value: str, variable: str) -> str:
    """``value``, a remote URL (from ``variable``), if libsql can reach it: it names a host
    (libsql would try to reach none), and its scheme is not ws:// or wss://, which
    libsql-python opens as a local file of that name."""
    scheme = value.partition(":")[0]
    host = urlsplit(value).hostname
    if scheme.lower() in _FILE_TO_LIBSQL:
        raise DatabaseConfigError(
            f"{variable}={shown_url(value)!r}: libsql opens a {scheme}:// URL as a local file, "
            f"not a remote database: use the database's libsql:// or https:// URL, as in "
            f"libsql://{host or '<database>-<organization>.turso.io'}"
        )
    if not host:
        raise DatabaseConfigError(
            f"{variable}={shown_url(value)!r} names no host: set it to the URL of the "
            f"database, as in {scheme}://<database>-<organization>.turso.io"
        )
    return value


def remote_hint(path: str, source: str | None, sync_url: str | None = None) -> str:
    """What to say when the remote database ``path`` (from the setting ``source``), or the
    ``sync_url`` an embedded replica syncs from, cannot be reached: the settings to check.
    No query nor password is shown."""
    source = source or "the path"
    if sync_url is not None:
        sync_source = "TURSO_DATABASE_URL" if source == "DATABASE_URL" else "sync_url"
        where = (
            f"the embedded replica {path!r} ({source}) could not sync from "
            f"{shown_url(sync_url)} ({sync_source})"
        )
        check = sync_source
    else:
        shown = shown_url(path)
        where = f"the remote libSQL database {shown} ({source}) could not be reached"
        check = source
    return (
        f"{where}: check that {check} is the database's libsql:// or https:// URL, that "
        "TURSO_AUTH_TOKEN holds a token for it (turso db tokens create <database>), and that "
        "this machine reaches the network"
    )


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where to connect and with which engine, as the environment says."""

    path: str
    engine: Engine = "sqlite3"
    sync_url: str | None = None
    auth_token: str | None = None

    @property
    def remote(self) -> bool:
        """Whether the target talks to Turso (remote or embedded replica): no local pragmas."""
        return is_remote_url(self.path) or self.sync_url is not None


def database_driver(environ: Mapping[str, str] = os.environ) -> Engine:
    """The engine ``DATABASE_DRIVER`` asks for local files (``sqlite3`` when unset)."""
    driver = environ.get("DATABASE_DRIVER")
    if driver is None:
        return "sqlite3"
    for engine in ENGINES:
        if driver.strip().lower() == engine:
            return engine
    raise DatabaseConfigError(
        f"DATABASE_DRIVER={driver!r} is not one of {', '.join(ENGINES)}: set it to one of "
        "them, or unset it to use sqlite3"
    )


def database_target(environ: Mapping[str, str] = os.environ) -> DatabaseTarget:
    """Read ``DATABASE_URL``, ``DATABASE_DRIVER``, ``TURSO_DATABASE_URL``, ``TURSO_AUTH_TOKEN``.

    A ``libsql://`` URL or ``TURSO_DATABASE_URL`` selects the libsql engine; with both a
    local ``DATABASE_URL`` and ``TURSO_DATABASE_URL``, the local file is an embedded
    replica synced from Turso. ``DATABASE_DRIVER=libsql`` uses libsql for local files too.
    """
    database_driver(environ)  # a bad DATABASE_DRIVER is an error whatever the URL
    token = environ.get("TURSO_AUTH_TOKEN") or None
    turso = environ.get("TURSO_DATABASE_URL")
    url = environ.get("DATABASE_URL")
    if turso:
        if not is_remote_url(turso):
            raise DatabaseConfigError(
                f"TURSO_DATABASE_URL={shown_url(turso)!r} must be a libsql:// or "
                "https:// URL of a Turso database"
            )
        check_remote_url(turso, "TURSO_DATABASE_URL")
        local = parse_database_url(url) if url is not None else None  # "" is an error
        if local is None or is_remote_url(local):
            return DatabaseTarget(turso, "libsql", auth_token=token)
        return DatabaseTarget(local, "libsql", sync_url=turso, auth_token=token)
    return url_target(DEFAULT_DATABASE_URL if url is None else url, environ)  # "" is an error


def url_target(
    url: str, environ: Mapping[str, str] = os.environ, variable: str = "DATABASE_URL"
) -> DatabaseTarget:
    """The target of ``url`` alone (named ``variable`` in errors): ``DATABASE_DRIVER`` and
    ``TURSO_AUTH_TOKEN`` apply, ``TURSO_DATABASE_URL`` does not (a local file given in code
    never becomes a replica of a Turso database)."""
    path = parse_database_url(url, variable)
    token = environ.get("TURSO_AUTH_TOKEN") or None
    if is_remote_url(path):
        return DatabaseTarget(path, "libsql", auth_token=token)
    return DatabaseTarget(path, database_driver(environ))


def create_database_directory(path: str, source: str = "DATABASE_URL") -> None:
    """Create the directory the local file ``path`` (from ``source``) needs, if it names
    one; a :class:`DatabaseConfigError` says why it cannot be made."""
    file = local_database_file(path)
    if file is None:
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatabaseConfigError(
            f"cannot create the directory of the SQLite database {str(file)!r} (from "
            f"{source}): {error}; create it yourself, or point {source} elsewhere"
        ) from error


def is_read_only_uri(path: str) -> bool:
    """Whether ``path`` is an SQLite URI opened read-only (``mode=ro``, ``immutable=1``):
    such a connection cannot change the journal mode, which writes to the file."""
    if not path.startswith("file:") or ("mode=" not in path and "immutable=" not in path):
        return False  # the per-test URLs (?vfs=memdb) stop here: no parsing on that path
    query = path.partition("?")[2].partition("#")[0]
    return any(
        (key == "mode" and value == "ro") or (key == "immutable" and _uri_true(value))
        for key, value in parse_qsl(query, keep_blank_values=True)
    )


def _uri_true(value: str) -> bool:
    """SQLite's reading of a boolean URI parameter (``1``, ``yes``, ``true``, ``on``)."""
    return value.lower() in ("yes", "true", "on") or (value.isdigit() and int(value) != 0)


def open_error(path: str, source: str | None, error: sqlite3.Error) -> DatabaseConfigError:
    """The :class:`DatabaseConfigError` for a local database that SQLite could not open or
    set up: it names the database (and ``source``, the setting it came from) and the fix."""
    named = f"{path!r}" + (f" (from {source})" if source else "")
    hint = _open_hint(path, source or "the path", error)
    return DatabaseConfigError(f"cannot open the SQLite database {named}: {error}; {hint}")


def is_disk_refusal(error: sqlite3.Error) -> bool:
    """A write the disk refused: it is full, or failing (SQLITE_FULL, SQLITE_IOERR; told by
    SQLite's message where no code comes with it, as from libsql)."""
    name = getattr(error, "sqlite_errorname", None)
    if name:
        return bool(name.startswith(("SQLITE_FULL", "SQLITE_IOERR")))
    text = str(error).lower()
    return "disk i/o error" in text or "database or disk is full" in text


def _open_hint(path: str, subject: str, error: sqlite3.Error) -> str:
    """What to do about ``error``, said in terms of ``subject`` (what the user sets)."""
    name = getattr(error, "sqlite_errorname", None) or ""
    text = str(error).lower()
    if name == "SQLITE_NOTADB" or "not a database" in text:
        return (
            f"the file is not an SQLite database: point {subject} at a database file, or move "
            "this file away to start a new database there"
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return _cannot_open_hint(path, subject)
    if is_disk_refusal(error):
        return (
            "the filesystem that holds it may be full (a RAM one such as /dev/shm fills up "
            f"too) or failing: make room there, or point {subject} elsewhere"
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return (
            "the file or its directory is read-only: make them writable, or open it "
            f"read-only by setting {subject} to a URL such as file:/path/app.db?mode=ro"
        )
    return f"check that {subject} names an SQLite database file this process can open"


def _cannot_open_hint(path: str, subject: str) -> str:
    """Why SQLite could not open the file ``path`` names, found by looking at it."""
    file = Path(unquote(urlsplit(path).path) if path.startswith("file:") else path).absolute()
    if file.is_dir():
        return f"it is a directory: point {subject} at a file, such as {str(file / 'app.db')!r}"
    if not file.parent.is_dir():
        return (
            f"its directory {str(file.parent)!r} does not exist (a file: URL is opened as it "
            f"is, no directory is made): create it, or point {subject} elsewhere"
        )
    if not file.exists() and is_read_only_uri(path):
        return f"{str(file)!r} does not exist and a read-only URL never creates it: fix {subject}"
    return f"check that this process may read and write {str(file)!r} and its directory"
