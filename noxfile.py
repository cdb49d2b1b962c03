"""The template's own tasks.

``nox -s demo`` bakes a project with the default answers and runs its isolated
integration suite; ``nox -s tests`` bakes projects and checks them; ``nox -s bench``
runs a baked project's benchmark; ``nox -s lint`` checks this repository's Python files
with ruff and mypy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "tests"]
# uv installs packages without compiling their bytecode (pip compiles it). Where Python
# may not write it either (PYTHONDONTWRITEBYTECODE=1, common in containers and CI), every
# pytest process and xdist worker would compile pytest and what it imports again on start.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")

PYTHON = "3.11"
TEST_REQUIREMENTS = [
    "cookiecutter>=2.6",
    "pytest>=8.3",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.6",
    "pytest-asyncio>=1.0",
    "sqlite-utils>=4",
    "ruff>=0.8",
    "mypy>=1.13",
    "nox>=2025.2.9",
    "uv>=0.5",
    "psutil>=5.9",
    # cruft create / check / link against a git copy of this template.
    "cruft>=2.15",
    # The generated CI: pytest-split shards, workflow schema and audit.
    "pytest-split>=0.10",
    "check-jsonschema>=0.33",
    "zizmor>=1.9",
    # The example application (example_app=yes) and its tests.
    "starlette>=0.40",
    "uvicorn>=0.30",
    "httpx>=0.27",
    # The libSQL engine (turso=yes).
    "libsql>=0.1.11",
    # ADOPTING.md's SQLAlchemy engine, adopted into a toy repository.
    "sqlalchemy>=2.0",
]


# What the files ``nox -s lint`` type-checks import, for mypy to read their types.
LINT_TYPES = ["cookiecutter>=2.6", "nox>=2025.2.9", "pytest>=8.3", "types-PyYAML"]


def _bake_default(session: nox.Session, name: str) -> Path:
    """Install cookiecutter and nox, bake a fresh default project; return its directory."""
    session.install("cookiecutter>=2.6", "nox>=2025.2.9", "uv>=0.5")
    output_dir = Path(session.create_tmp()) / name
    shutil.rmtree(output_dir, ignore_errors=True)
    session.run("cookiecutter", "--no-input", "-o", str(output_dir), ".")
    (project_dir,) = (path for path in output_dir.iterdir() if path.is_dir())
    session.log(f"Baked {project_dir}")
    return project_dir


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Bake projects and run their checks on two workers (``-- -m "not e2e"`` skips e2e)."""
    session.install(*TEST_REQUIREMENTS)
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Bake a project with the default answers and run its ``nox -s integration``."""
    session.chdir(_bake_default(session, "demo"))
    session.run("nox", "-s", "integration", "--", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Bake a fresh default project and run its ``nox -s bench`` (``-- --quick``: smoke run)."""
    session.chdir(_bake_default(session, "bench"))
    session.run("nox", "-s", "bench", "--", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check the hooks, the template tests and this file with ruff, and their types with
    mypy (against the packages they import)."""
    session.install("ruff>=0.8", "mypy>=1.13", *LINT_TYPES)
    paths = ["hooks", "tests", "noxfile.py"]
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy")
