"""Developer tasks: ``nox`` runs lint, typecheck, unit and integration.

``nox -s integration -- -k orders -x`` passes everything after ``--`` on to pytest; a
path there (``nox -s unit -- tests/unit/test_orders.py``) runs those tests alone.
The project is not installed as a package: pytest finds ``lib`` through
``pythonpath = ["."]`` in pyproject.toml.
"""

from __future__ import annotations

import os

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "unit", "integration"]
# uv installs packages without compiling their bytecode (pip compiles it). Where Python
# may not write it either (PYTHONDONTWRITEBYTECODE=1, common in containers and CI), every
# pytest process and xdist worker would compile pytest and what it imports again on start.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = "{{ cookiecutter.python_version }}"


def _install_test_deps(session: nox.Session) -> None:
    """Install the runtime dependencies, the optional extras and the ``test`` group."""
    session.install(*PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        session.install(*extra)
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"))


def _pytest_args(session: nox.Session, tests: str) -> list[str]:
    """The arguments after ``--``, run in ``tests`` unless they name tests of their own.

    pytest itself tells paths from option values: ``testpaths`` is where it looks when
    its arguments name no tests.
    """
    return ["-o", f"testpaths={tests}", *session.posargs]


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Run the unit tests (no database); with no arguments, on every core (``-n auto``):
    many of them run pytest in a child process."""
    _install_test_deps(session)
    workers = [] if session.posargs else ["-n", "auto"]
    session.run("pytest", *workers, *_pytest_args(session, "tests/unit"))


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Run the integration tests, each against its own fresh, migrated database."""
    _install_test_deps(session)
    session.run("pytest", *_pytest_args(session, "tests/integration"))
{%- if cookiecutter.turso == 'yes' %}


@nox.session(python=PYTHON)
def integration_libsql(session: nox.Session) -> None:
    """Run the integration tests on the libSQL engine (``DATABASE_DRIVER=libsql``)."""
    _install_test_deps(session)
    env = {"DATABASE_DRIVER": "libsql"}
    session.run("pytest", *_pytest_args(session, "tests/integration"), env=env)
{%- endif %}


@nox.session(python=PYTHON)
def durations(session: nox.Session) -> None:
    """Refresh ``.test_durations``, the timings pytest-split uses to balance CI shards."""
    _install_test_deps(session)
    session.run(
        "pytest",
        "tests/integration",
        "--store-durations",
        "--clean-durations",
        "--durations-path",
        ".test_durations",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Measure the per-test cost of isolation (``nox -s bench -- --quick`` for a smoke run)."""
    _install_test_deps(session)
    session.install("psutil>=5.9")
    session.run("python", "-m", "bench.isolation_bench", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type check lib, tests and this file with mypy (strict, see pyproject.toml)."""
    session.install(*PYPROJECT["project"]["dependencies"])
    session.install(*nox.project.dependency_groups(PYPROJECT, "dev"))
    session.run("mypy", *session.posargs)
