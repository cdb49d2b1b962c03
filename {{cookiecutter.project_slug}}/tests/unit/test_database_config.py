"""Reading the database settings: every spelling we accept, and errors naming the variable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lib.database_config import (
    DEFAULT_DATABASE_URL,
    DatabaseConfigError,
    DatabaseTarget,
    database_target,
    is_remote_url,
    local_database_file,
    open_error,
    parse_database_url,
    remote_hint,
    url_target,
)
from lib.scope_databases import TEST_DATABASES_SOURCE


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:./data/app.db", "data/app.db"),
        ("file:data/app.db", "data/app.db"),
        ("file:///abs/x.db", "/abs/x.db"),
        ("./data/app.db", "data/app.db"),
        ("/abs/y.db", "/abs/y.db"),
    ],
)
def test_parse_database_url_accepts_file_forms(url: str, expected: str) -> None:
    """Every documented spelling of a local file resolves to the same path."""
    assert Path(parse_database_url(url)).resolve() == Path(expected).resolve()


def test_parse_database_url_accepts_memory() -> None:
    assert parse_database_url(":memory:") == ":memory:"


@pytest.mark.parametrize("url", ["file:/shared?vfs=memdb", "file:./data/app.db?mode=ro"])
def test_parse_database_url_keeps_sqlite_uris_whole(url: str) -> None:
    """A query is SQLite's (``vfs=memdb``, ``mode=ro``): dropping it would open a file
    named after the path instead, such as ``/shared``."""
    assert parse_database_url(url) == url
    assert local_database_file(parse_database_url(url)) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [("data/app.db", Path("data/app.db")), (":memory:", None), ("libsql://x.turso.io", None)],
)
def test_local_database_file(path: str, expected: Path | None) -> None:
    assert local_database_file(path) == expected


@pytest.mark.parametrize(
    "url", ["", "   ", "postgres://x", "mysql://user@host/db", "sqlite:data/app.db", "libsql:db"]
)
def test_parse_database_url_rejects_bad_values_naming_the_variable(url: str) -> None:
    """A bad URL is a configuration error that says which variable to fix."""
    with pytest.raises(DatabaseConfigError, match="DATABASE_URL"):
        parse_database_url(url)


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("libsql:db.turso.io", "as in libsql://db.turso.io"),
        ("https:db.turso.io?authToken=secret", "as in https://db.turso.io"),
        ("./data/app.db?mode=ro", "(file:./data/app.db?mode=ro)"),
        ("~/app.db", f"Write the path out ({Path.home() / 'app.db'})"),
        ("file:~/app.db?mode=ro", f"Write the path out (file:{Path.home() / 'app.db'}?mode=ro)"),
    ],
)
def test_parse_database_url_says_how_to_write_a_misspelt_url(url: str, fix: str) -> None:
    """A remote URL without ``//`` is not an unsupported scheme, a plain path with a query
    would be a file whose name ends in the query, and ``~``, which no shell expanded, a
    directory named so: the error gives the spelling."""
    with pytest.raises(DatabaseConfigError, match="DATABASE_URL") as excinfo:
        parse_database_url(url)
    assert fix in str(excinfo.value)
    assert "secret" not in str(excinfo.value)


def test_a_file_whose_name_starts_with_a_tilde_is_a_path() -> None:
    assert parse_database_url("~app.db") == "~app.db"


def test_a_windows_drive_is_a_path_not_a_scheme() -> None:
    assert parse_database_url(r"C:\data\app.db") == r"C:\data\app.db"


def test_parse_database_url_names_a_custom_variable() -> None:
    with pytest.raises(DatabaseConfigError, match="TURSO_DATABASE_URL"):
        parse_database_url("postgres://x", variable="TURSO_DATABASE_URL")


def test_parse_database_url_keeps_remote_libsql_urls() -> None:
    """A remote libSQL URL is not a path: it is handed to the libsql engine as it is."""
    assert parse_database_url("libsql://example.turso.io") == "libsql://example.turso.io"
    assert is_remote_url("https://example.turso.io")
    assert not is_remote_url("file:./data/app.db")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, DatabaseTarget("./data/app.db")),
        ({"DATABASE_DRIVER": "libsql"}, DatabaseTarget("./data/app.db", "libsql")),
        ({"DATABASE_DRIVER": " LibSQL "}, DatabaseTarget("./data/app.db", "libsql")),
        (
            {"DATABASE_URL": "libsql://db.turso.io", "TURSO_AUTH_TOKEN": "t"},
            DatabaseTarget("libsql://db.turso.io", "libsql", auth_token="t"),
        ),
        (
            {"TURSO_DATABASE_URL": "libsql://db.turso.io"},
            DatabaseTarget("libsql://db.turso.io", "libsql"),
        ),
        (
            {"DATABASE_URL": "file:replica.db", "TURSO_DATABASE_URL": "libsql://db.turso.io"},
            DatabaseTarget("replica.db", "libsql", sync_url="libsql://db.turso.io"),
        ),
    ],
)
def test_database_target_reads_the_environment(
    environ: dict[str, str], expected: DatabaseTarget
) -> None:
    """libsql:// or TURSO_DATABASE_URL pick libsql; a local file plus Turso is a replica."""
    assert database_target(environ) == expected


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_DRIVER": "postgres"}, "DATABASE_DRIVER"),
        ({"DATABASE_DRIVER": ""}, "DATABASE_DRIVER=.. is not one of sqlite3, libsql: set it"),
        ({"DATABASE_URL": "", "TURSO_DATABASE_URL": "libsql://db"}, "DATABASE_URL is set but"),
        ({"TURSO_DATABASE_URL": "./local.db"}, "TURSO_DATABASE_URL"),
        ({"DATABASE_URL": "mysql://db"}, "DATABASE_URL"),
    ],
)
def test_database_target_names_the_bad_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(DatabaseConfigError, match=variable):
        database_target(environ)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": "libsql://"}, "DATABASE_URL='libsql://' names no host"),
        ({"DATABASE_URL": "https://?authToken=t"}, "DATABASE_URL='https://' names no host"),
        ({"TURSO_DATABASE_URL": "libsql://"}, "TURSO_DATABASE_URL='libsql://' names no host"),
    ],
)
def test_a_remote_url_without_a_host_is_refused_naming_the_variable(
    environ: dict[str, str], variable: str
) -> None:
    """libsql would try to reach no host, and fail with a DNS error naming nothing."""
    with pytest.raises(DatabaseConfigError, match=variable) as raised:
        database_target(environ)
    assert "authToken" not in str(raised.value)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": "wss://db-org.turso.io"}, "DATABASE_URL"),
        ({"DATABASE_URL": "ws://127.0.0.1:8080?authToken=t"}, "DATABASE_URL"),
        ({"TURSO_DATABASE_URL": "WSS://db-org.turso.io"}, "TURSO_DATABASE_URL"),
    ],
)
def test_a_websocket_url_is_refused_saying_what_to_use(
    environ: dict[str, str], variable: str
) -> None:
    """libsql-python would open it as a local file of that name."""
    with pytest.raises(
        DatabaseConfigError, match=rf"^{variable}=.*libsql:// or https://"
    ) as raised:
        database_target(environ)
    assert "authToken" not in str(raised.value)


@pytest.mark.parametrize(
    "environ",
    [
        {"DATABASE_URL": "https://user:SECRETPW@"},
        {"DATABASE_URL": "wss://user:SECRETPW@db.turso.io"},
        {"DATABASE_URL": "libsql:user:SECRETPW@db.turso.io"},
        {"DATABASE_URL": "file://user:SECRETPW@host/app.db"},
        {"TURSO_DATABASE_URL": "libsql://user:SECRETPW@"},
    ],
)
def test_a_password_in_a_url_is_never_shown(environ: dict[str, str]) -> None:
    with pytest.raises(DatabaseConfigError) as raised:
        database_target(environ)
    assert "SECRETPW" not in str(raised.value)
    hint = remote_hint("https://user:SECRETPW@db.turso.io/x?authToken=t", "DATABASE_URL")
    assert "https://db.turso.io/x (DATABASE_URL)" in hint
    replica = remote_hint("./r.db", "DATABASE_URL", "libsql://u:SECRETPW@db.turso.io")
    assert "could not sync from libsql://db.turso.io (TURSO_DATABASE_URL)" in replica


def test_the_remote_hint_names_the_settings_to_check_and_never_a_token() -> None:
    direct = remote_hint("libsql://db.turso.io?authToken=secret", "TURSO_DATABASE_URL")
    assert direct.startswith(
        "the remote libSQL database libsql://db.turso.io (TURSO_DATABASE_URL) could not be "
        "reached: check that TURSO_DATABASE_URL is"
    )
    assert "TURSO_AUTH_TOKEN" in direct
    assert "secret" not in direct
    replica = remote_hint("./replica.db", "DATABASE_URL", "libsql://db.turso.io?authToken=secret")
    assert "'./replica.db' (DATABASE_URL) could not sync from libsql://db.turso.io" in replica
    assert "check that TURSO_DATABASE_URL is" in replica
    assert "secret" not in replica


@pytest.mark.parametrize("url", ["", "   "])
def test_an_empty_database_url_is_an_error_not_the_default(url: str) -> None:
    """Set but empty is a mistake (a blank line in .env), never a silent fallback."""
    with pytest.raises(DatabaseConfigError, match="DATABASE_URL") as excinfo:
        database_target({"DATABASE_URL": url})
    assert "unset it" in str(excinfo.value)
    assert DEFAULT_DATABASE_URL in str(excinfo.value)


def test_url_target_reads_one_url_without_turso_replicas() -> None:
    environ = {"TURSO_DATABASE_URL": "libsql://db.turso.io", "DATABASE_DRIVER": "libsql"}
    assert url_target("file:local.db", environ) == DatabaseTarget("local.db", "libsql")
    assert url_target("libsql://other.turso.io", {"TURSO_AUTH_TOKEN": "t"}) == DatabaseTarget(
        "libsql://other.turso.io", "libsql", auth_token="t"
    )
    with pytest.raises(DatabaseConfigError, match=r"^settings\.url="):
        url_target("mysql://db", {}, variable="settings.url")


def test_an_uppercase_file_scheme_is_told_to_be_lowercase() -> None:
    with pytest.raises(DatabaseConfigError, match=r"write the scheme in lowercase \(file:./x.db\)"):
        parse_database_url("FILE:./x.db")


@pytest.mark.parametrize("message", ["disk I/O error", "database or disk is full"])
def test_a_test_database_that_cannot_be_written_points_at_a_full_filesystem(
    message: str,
) -> None:
    """/dev/shm filling up mid-run shows as SQLite's disk I/O error: the error says where
    to look, and which settings move the test databases."""
    error = open_error(
        "/dev/shm/isolation-1/db-7.db", TEST_DATABASES_SOURCE, sqlite3.OperationalError(message)
    )
    assert "may be full" in str(error)
    assert "isolation_use_dev_shm" in str(error)
