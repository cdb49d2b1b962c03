"""The isolation plugin's settings: its command-line options and ini settings, each read
and checked once, when pytest configures the plugin.

Each is read from ``[tool.pytest.ini_options]`` (or another pytest configuration file),
from the rootdir; a value that cannot be used is a ``pytest.UsageError`` that names the
setting and says what to write instead.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lib import database
from lib.isolation_manager import TestIsolationManager
from lib.scope_databases import STRATEGIES, check_strategy, runs_root

__all__ = [
    "DEFAULT_TEST_PATH",
    "add_options",
    "chosen_strategy",
    "data_directory",
    "database_engine",
    "database_reset_hooks",
    "ini_flag",
    "isolated_test_paths",
    "manager_from_settings",
    "unquoted",
    "where_set",
]

DEFAULT_TEST_PATH = "tests/integration"


def add_options(parser: pytest.Parser) -> None:
    """The plugin's command-line options and ini settings."""
    group = parser.getgroup("isolation", "per-test database isolation")
    group.addoption(
        "--isolation-strategy",
        type=str.lower,  # any case, as the variable and the ini setting
        choices=STRATEGIES,
        default=None,
        help="file: a SQLite file per test (default); memory: an in-memory copy per test. "
        "Also the ini setting isolation_strategy and the ISOLATION_STRATEGY variable.",
    )
    group.addoption(
        "--isolation-keep-failed",
        action="store_true",
        help="keep the database of each failed test (under .isolation/kept/ in the "
        "isolation_data_dir) and print its path; the next run removes them",
    )
    parser.addini("isolation_strategy", "default database strategy per test", default="file")
    parser.addini(
        "isolation_test_paths",
        "directories whose tests each run in their own database scope",
        type="linelist",
        default=None,  # unset: DEFAULT_TEST_PATH, which may be missing
    )
    parser.addini("isolation_migrations_dir", "the migration SQL files", default="migrations")
    parser.addini("isolation_data_dir", "where test databases are made", default="data")
    parser.addini(
        "isolation_module_patterns",
        "fnmatch patterns of the modules dropped after each test (default: the project's)",
        type="linelist",
        default=[],
    )
    parser.addini(
        "isolation_use_dev_shm",
        "make test databases in /dev/shm (RAM) when it has room, not under the data dir",
        type="bool",
        default=True,
    )
    parser.addini(
        "isolation_refuse_other_databases",
        "refuse a test's code any database file to write but its own and temporary files "
        "(false: a warning at the test's end)",
        type="bool",
        default=True,
    )
    parser.addini(
        "isolation_allowed_databases",
        "glob patterns (from the rootdir) of database files tests may write besides their "
        "own, neither refused nor warned of (a cache of the project's)",
        type="linelist",
        default=[],
    )
    parser.addini(
        "isolation_database_module",
        "module[:function] whose database singleton is reset when DATABASE_URL changes",
        default=database.__name__,
    )


def chosen_strategy(config: pytest.Config) -> str:
    """The option wins over the variable, the variable over the ini setting (whose default
    is ``file``); a value in any case is taken, as ``DATABASE_DRIVER`` is, and an empty
    one is refused."""
    option = config.getoption("isolation_strategy")
    if option is not None:  # one of STRATEGIES: pytest checks its choices
        return str(option)
    variable = os.environ.get("ISOLATION_STRATEGY")
    source, value = (
        ("ISOLATION_STRATEGY", variable)
        if variable is not None
        else ("the isolation_strategy setting", str(config.getini("isolation_strategy")))
    )
    strategy = value.strip().lower()
    if strategy not in STRATEGIES:
        raise pytest.UsageError(f"{source} is {value!r}, not one of {', '.join(STRATEGIES)}")
    return strategy


def database_reset_hooks(spec: str) -> list[Callable[[], object]]:
    """The reset function named by ``isolation_database_module`` (none for ``lib.database``,
    which the manager points at each test's database directly)."""
    module_name, _, function = spec.partition(":")
    if module_name == database.__name__:
        return []
    try:
        reset: Callable[[], object] = getattr(
            importlib.import_module(module_name), function or "reset_database_instance"
        )
    except (ImportError, AttributeError) as error:
        raise pytest.UsageError(
            f"isolation_database_module = {spec!r} cannot be used: {error}. Name a module "
            "with a reset_database_instance() function, or module:function."
        ) from error
    except Exception as error:  # the module itself failed at import (DATABASE_URL is :memory:)
        raise pytest.UsageError(
            f"isolation_database_module = {spec!r} cannot be used: importing it raised "
            f"{error!r} at the session's start, where DATABASE_URL is "
            f"{os.environ.get('DATABASE_URL')!r} and TURSO_* are unset. Give it what it needs "
            "in the test environment, or let it read its settings when it connects"
        ) from error
    return [reset]


def database_engine(strategy: str) -> database.Engine:
    """``DATABASE_DRIVER=libsql`` runs every test's database on the libsql engine (never
    with the memory strategy, which the engine and SQLite must both support)."""
    try:
        driver = database.database_driver()
    except database.DatabaseConfigError as error:
        raise pytest.UsageError(str(error)) from error
    try:
        check_strategy(strategy, driver)
    except ValueError as error:
        raise pytest.UsageError(f"isolation strategy: {error}") from error
    if driver == "libsql":
        try:
            importlib.import_module("libsql")  # one clear error now, not one per test
        except ImportError as error:
            raise pytest.UsageError(
                "DATABASE_DRIVER=libsql needs the libsql package: pip install libsql, "
                "or unset DATABASE_DRIVER"
            ) from error
    return driver


def manager_from_settings(config: pytest.Config, strategy: str) -> TestIsolationManager:
    """The manager the settings describe, for the ``strategy`` the run uses."""
    patterns = config.getini("isolation_module_patterns")
    data_dir = data_directory(config)
    manager = TestIsolationManager(
        migrations_dir=Path(
            config.rootpath,
            unquoted("isolation_migrations_dir", config.getini("isolation_migrations_dir")),
        ),
        data_dir=data_dir,
        runs_dir=runs_root(data_dir, use_shm=ini_flag(config, "isolation_use_dev_shm")),
        module_patterns=patterns or None,
        project_root=config.rootpath,
        engine=database_engine(strategy),
        defer_binding_scan=True,  # see the plugin's pytest_runtest_logfinish
        refuse_other_databases=ini_flag(config, "isolation_refuse_other_databases"),
    )
    manager.allowed_databases += [
        os.path.join(
            os.path.realpath(config.rootpath), unquoted("isolation_allowed_databases", pattern)
        )
        for pattern in config.getini("isolation_allowed_databases")
    ]
    # Where pytest puts tmp_path when told to (--basetemp, as tox does): scratch files.
    for scratch in (config.option.basetemp, os.environ.get("PYTEST_DEBUG_TEMPROOT")):
        if scratch:
            manager.scratch_dirs.append(str(Path(config.invocation_params.dir, scratch)))
    return manager


def isolated_test_paths(config: pytest.Config) -> list[Path]:
    """The ``isolation_test_paths``. One that is not a directory is refused, but for the
    default, unset (a project with no integration tests yet): it would isolate nothing,
    without a word, and the tests meant to be isolated would run on no database at all."""
    entries: list[str] | None = config.getini("isolation_test_paths")
    if entries is None:
        return [Path(config.rootpath, DEFAULT_TEST_PATH).resolve()]
    paths = [Path(config.rootpath, unquoted("isolation_test_paths", entry)) for entry in entries]
    for entry, path in zip(entries, paths, strict=True):
        if path.is_dir():
            continue
        several = " (several paths go one per line; in an ini file, indented under the name)"
        raise pytest.UsageError(
            f"isolation_test_paths: {entry!r} is not a directory under {config.rootpath}, "
            "so no test in it would be isolated. Name the directories of your integration "
            f"tests{several if ' ' in entry else ''}"
        )
    return [path.resolve() for path in paths]


def data_directory(config: pytest.Config) -> Path:
    """Where the template cache and test databases go; a path that is not UTF-8 is
    refused, as SQLite's file names and URIs refuse it."""
    path = Path(
        config.rootpath, unquoted("isolation_data_dir", config.getini("isolation_data_dir"))
    )
    try:
        str(path).encode()
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode(errors="replace")
        raise pytest.UsageError(
            f"isolation_data_dir: {shown} is not a UTF-8 path, which SQLite's file names "
            "and URIs need: set isolation_data_dir to a directory whose path is"
        ) from None
    return path


def unquoted(name: str, value: str) -> str:
    """The path setting ``name``'s ``value``, refused in quotes: an ini file keeps them
    (a directory named ``"data"``), as pyproject.toml does not."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        empty = " (for an empty value, nothing after the =)" if len(value) == 2 else ""
        raise pytest.UsageError(
            f"{name} = {value}: write it without quotes{empty}; in an ini file (pytest.ini, "
            "setup.cfg, tox.ini) a value is taken as written, quotes and all"
        )
    return value


def ini_flag(config: pytest.Config, name: str) -> bool:
    """The true/false setting ``name``; a value pytest cannot read is an error naming it
    (pytest's own names only the value: ``invalid truth value '"false"'``)."""
    try:
        return bool(config.getini(name))
    except (ValueError, pytest.UsageError) as error:  # pytest 9 raises a UsageError
        raise pytest.UsageError(
            f"{name}: {error}: write true or false, without quotes in an ini file"
        ) from None


def where_set(config: pytest.Config, name: str) -> str:
    """Where the ini setting ``name`` was made: a ``-o``, which wins over any file, or the
    one configuration file pytest read."""
    if any(entry.partition("=")[0].strip() == name for entry in config.option.override_ini or ()):
        return "set with -o, on the command line or in PYTEST_ADDOPTS"
    return f"in {config.inipath}" if config.inipath else "in pytest's configuration"
