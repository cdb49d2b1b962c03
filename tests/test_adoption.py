"""layout=isolation-only: just the isolation files, adopted into an existing repository;
cruft can create, check and link projects baked from this template."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import TEMPLATE_DIR, Bake, bake_template, passed_count, run, run_pytest

CACHE_DIRS = {".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", "__pycache__"}
ISOLATION_TESTS = (
    "tests/isolation_reporter.py",
    "tests/isolation_settings.py",
    "tests/performance-baseline.json",
    "tests/setup_integration.py",
)
SNIPPETS = ("snippets/conftest.py", "snippets/noxfile.py", "snippets/pyproject.toml")


def _files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not CACHE_DIRS.intersection(path.relative_to(root).parts)
    }


@pytest.fixture(scope="module")
def isolation_only(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("isolation-only"), layout="isolation-only")


def test_isolation_only_bakes_just_the_isolation_files(
    isolation_only: Path, default_project: Path
) -> None:
    lib = {path for path in _files(default_project) if path.startswith("lib/")}
    assert {"lib/database.py", "lib/isolation_manager.py", "lib/migrate.py"} <= lib
    expected = {".cookiecutter.json", "ADOPTING.md", *lib, *ISOLATION_TESTS, *SNIPPETS}
    assert _files(isolation_only) == expected
    # Nothing that would overwrite an existing repository's own configuration.
    for own in ("pyproject.toml", "noxfile.py", "README.md", ".gitignore", "conftest.py"):
        assert not (isolation_only / own).exists(), own
    assert not (isolation_only / "tests" / "conftest.py").exists()


def test_isolation_files_are_the_full_layouts(isolation_only: Path, default_project: Path) -> None:
    """One source of truth: the same bytes in both layouts."""
    shared = [path for path in _files(isolation_only) if path.startswith(("lib/", "tests/"))]
    assert len(shared) >= 8
    for relative in shared:
        baked = (isolation_only / relative).read_bytes()
        assert baked == (default_project / relative).read_bytes(), relative


def test_full_layout_has_no_snippets(default_project: Path) -> None:
    assert not (default_project / "snippets").exists()
    assert (default_project / "ADOPTING.md").is_file()
    readme = (default_project / "README.md").read_text()
    assert "ADOPTING.md" in readme
    assert "cruft link" in readme


def test_answers_are_recorded(isolation_only: Path, default_project: Path) -> None:
    answers = json.loads((isolation_only / ".cookiecutter.json").read_text())
    assert answers["layout"] == "isolation-only"
    assert answers["project_slug"] == "orders-service"
    assert not [key for key in answers if key.startswith("_")]  # no paths or commits
    assert json.loads((default_project / ".cookiecutter.json").read_text())["layout"] == "full"


def _commented_settings(snippet: str) -> dict[str, object]:
    """The ``# isolation_... = value`` lines of the pyproject snippet, as TOML."""
    lines = [line[2:] for line in snippet.splitlines() if line.startswith("# isolation_")]
    return tomllib.loads("\n".join(lines))


def test_snippets_are_valid(isolation_only: Path) -> None:
    text = (isolation_only / "snippets" / "pyproject.toml").read_text()
    pyproject = tomllib.loads(text)
    ini = pyproject["tool"]["pytest"]["ini_options"]
    # Set: the settings a repository adapts; the others are left out, commented.
    assert ini == {
        "pythonpath": ["."],
        "isolation_test_paths": ["tests/integration"],
        "isolation_migrations_dir": "migrations",
    }
    commented = _commented_settings(text)
    assert commented["isolation_database_module"] == "yourpackage.db:close_connection"
    assert commented["isolation_data_dir"] == "data"
    assert commented["isolation_module_patterns"] == []
    assert commented["isolation_strategy"] == "file"
    assert commented["isolation_use_dev_shm"] is True
    assert commented["isolation_refuse_other_databases"] is True
    assert commented["isolation_performance_baseline"] == "tests/performance-baseline.json"
    # sqlite-utils is a test requirement where only the tests use lib/.
    assert "dependencies" not in pyproject["project"]
    assert "sqlite-utils>=4" in pyproject["dependency-groups"]["test"]
    snippets = [str(isolation_only / path) for path in SNIPPETS if path.endswith(".py")]
    result = run([sys.executable, "-m", "ruff", "check", "--isolated", *snippets], isolation_only)
    assert result.returncode == 0, result.stdout
    conftest = (isolation_only / "snippets" / "conftest.py").read_text()
    assert 'pytest_plugins = ["tests.setup_integration", "tests.isolation_reporter"]' in conftest


# -- a toy existing repository adopts the isolation-only output -----------------------------

TOY_PYPROJECT = """\
[project]
name = "toyshop"
version = "1.4.0"
requires-python = ">=3.11"

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = ["-ra", "--strict-markers", "--strict-config"]
markers = ["slow: takes a while"]
filterwarnings = ["error"]

[tool.ruff]
line-length = 88
"""

TOY_DB = '''\
"""Toyshop's own database connection: one per process, opened on first use."""

import os
import sqlite3

_connection: sqlite3.Connection | None = None


def database_url() -> str:
    return os.environ.get("DATABASE_URL", "file:toyshop.db")


def get_connection() -> sqlite3.Connection:
    global _connection
    if _connection is None:
        _connection = sqlite3.connect(database_url(), uri=True)
    return _connection


def reset_connection() -> None:
    """Forget the connection: the next use connects to DATABASE_URL again."""
    global _connection
    if _connection is not None:
        _connection.close()
    _connection = None
'''

TOY_SHOP = """\
from toyshop import db


def add_item(name: str) -> None:
    connection = db.get_connection()
    with connection:
        connection.execute("INSERT INTO items (name) VALUES (?)", (name,))


def item_names() -> list[str]:
    rows = db.get_connection().execute("SELECT name FROM items ORDER BY id").fetchall()
    return [name for (name,) in rows]


def price_with_tax(cents: int) -> int:
    return round(cents * 1.2)
"""

TOY_CONFTEST = """\
import pytest


@pytest.fixture
def base_price() -> int:
    return 100
"""

TOY_UNIT_TEST = """\
from toyshop.shop import price_with_tax


def test_price_with_tax(base_price: int) -> None:
    assert price_with_tax(base_price) == 120
"""

TOY_STORAGE_TESTS = """\
import os

from toyshop import db as toy_db
from toyshop import shop


def test_apple_alone() -> None:
    shop.add_item("apple")
    assert shop.item_names() == ["apple"]  # never the pear of the other test


def test_pear_alone() -> None:
    shop.add_item("pear")
    assert shop.item_names() == ["pear"]


def test_toyshop_uses_the_tests_database(db, isolation_manager) -> None:
    url = os.environ["DATABASE_URL"]
    assert isolation_manager.data_dir.name == ".toyshop-data"
    assert url.startswith(f"file:{isolation_manager.runs_dir}/")
    assert toy_db.database_url() == url
    assert shop.item_names() == []
    shop.add_item("plum")  # written through toyshop.db, read through the plugin's client
    assert [row["name"] for row in db.execute("SELECT name FROM items").rows] == ["plum"]
"""

TOY_SETTINGS = {
    "isolation_test_paths": '["tests/storage"]',
    "isolation_migrations_dir": '"db/migrations"',
    "isolation_data_dir": '".toyshop-data"',
    "isolation_database_module": '"toyshop.db:reset_connection"',
    "isolation_module_patterns": '["toyshop.*"]',
}


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _toy_repository(root: Path) -> Path:
    _write(
        root,
        {
            "pyproject.toml": TOY_PYPROJECT,
            "toyshop/__init__.py": "",
            "toyshop/db.py": TOY_DB,
            "toyshop/shop.py": TOY_SHOP,
            "db/migrations/0001_items.sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL);\n",
            "db/migrations/0002_item_price.sql": "ALTER TABLE items ADD COLUMN price INTEGER;\n",
            "tests/conftest.py": TOY_CONFTEST,
            "tests/test_prices.py": TOY_UNIT_TEST,
        },
    )
    return root


def _adopt(baked: Path, repo: Path, toy_settings: dict[str, str] = TOY_SETTINGS) -> None:
    """Follow ADOPTING.md: copy lib/ and tests/, merge the conftest and pyproject snippets."""
    adopting = (baked / "ADOPTING.md").read_text()
    assert "cp -R lib tests .cookiecutter.json" in adopting
    for name in ("lib", "tests"):
        shutil.copytree(baked / name, repo / name, dirs_exist_ok=True)
    shutil.copy2(baked / ".cookiecutter.json", repo)
    assert not (repo / "tests" / "__init__.py").exists()  # a namespace package will do

    registration = (baked / "snippets" / "conftest.py").read_text().split('"""\n', 2)[-1]
    conftest = repo / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + registration)

    snippet = (baked / "snippets" / "pyproject.toml").read_text()
    ini_text = snippet.split("[tool.pytest.ini_options]\n", 1)[1]
    settings = {
        line.split(" = ", 1)[0]: line
        for line in ini_text.splitlines()
        if line and not line.startswith("#")
    }
    for key, value in toy_settings.items():
        assert key in settings or f"# {key} = " in ini_text, key  # set, or left out
        settings[key] = f"{key} = {value}"
    warning = '"default::lib.isolation_manager.IsolationWarning"'
    assert warning in ini_text
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text().replace(
        "[tool.pytest.ini_options]\n",
        "[tool.pytest.ini_options]\n" + "\n".join(settings.values()) + "\n",
    )
    text = text.replace('filterwarnings = ["error"]', f'filterwarnings = ["error", {warning}]')
    pyproject.write_text(text)
    merged = tomllib.loads(text)
    assert merged["tool"]["ruff"] == {"line-length": 88}  # the repository's own settings stay
    assert merged["tool"]["pytest"]["ini_options"]["markers"] == ["slow: takes a while"]


@pytest.fixture(scope="module")
def toy_repository(isolation_only: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = _toy_repository(tmp_path_factory.mktemp("toyshop"))
    _adopt(isolation_only, repo)
    _write(repo, {"tests/storage/test_items.py": TOY_STORAGE_TESTS})
    return repo


def _run_toy(repo: Path, *args: str) -> str:
    # The toy uses no asyncio; pytest-asyncio (here for the template's tests) would warn
    # about its unset loop scope, an error under the toy's filterwarnings = ["error"].
    return run_pytest(repo, "-p", "no:asyncio", *args)


def test_adopted_repository_runs_its_own_tests(toy_repository: Path) -> None:
    output = _run_toy(toy_repository)
    assert passed_count(output) == 4, output
    assert "isolation metrics" in output
    assert "leak detected" not in output
    assert not (toy_repository / "toyshop.db").exists()  # the developer database is untouched


@pytest.mark.parametrize("order", ["forward", "reversed", "two workers"])
def test_adopted_isolation_holds_in_any_order(toy_repository: Path, order: str) -> None:
    module = "tests/storage/test_items.py"
    names = ["test_apple_alone", "test_pear_alone", "test_toyshop_uses_the_tests_database"]
    if order == "reversed":
        args = [f"{module}::{name}" for name in reversed(names)]
    elif order == "two workers":
        args = ["-n", "2", module]
    else:
        args = [module]
    output = _run_toy(toy_repository, *args)
    assert passed_count(output) == 3, output
    assert not (toy_repository / "toyshop.db").exists()


def test_adopted_settings_are_used(toy_repository: Path) -> None:
    """The plugin takes its paths from the ini settings, not from the template's layout."""
    output = _run_toy(toy_repository, "tests/storage", "-v")
    assert "tests/storage/test_items.py::test_apple_alone PASSED" in output
    templates = toy_repository / ".toyshop-data" / ".isolation" / "templates"
    assert templates.is_dir(), "the template database is made under isolation_data_dir"
    assert not (toy_repository / "data").exists()


SQLALCHEMY_SHOP = """\
from sqlalchemy import text

from inventory.db import Session


def add_item(name: str) -> None:
    with Session.begin() as session:
        session.execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": name})


def item_names() -> list[str]:
    with Session() as session:
        rows = session.execute(text("SELECT name FROM items ORDER BY id"))
        return [name for (name,) in rows]
"""

SQLALCHEMY_TESTS = """\
from inventory import shop  # imported while collecting: the engine exists before any test


def test_apple_alone() -> None:
    shop.add_item("apple")
    assert shop.item_names() == ["apple"]


def test_pear_alone() -> None:
    shop.add_item("pear")
    assert shop.item_names() == ["pear"]


def test_the_engine_opens_the_tests_database(db) -> None:
    shop.add_item("plum")
    assert [row["name"] for row in db.execute("SELECT name FROM items").rows] == ["plum"]
"""


@pytest.fixture(scope="module")
def sqlalchemy_repository(isolation_only: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository on SQLAlchemy, its engine the one ADOPTING.md shows, as written there."""
    adopting = (isolation_only / "ADOPTING.md").read_text()
    section = adopting.split("#### With SQLAlchemy\n", 1)[1]
    engine_module = section.split("```python\n", 1)[1].split("```", 1)[0]
    database_module = re.search(r'isolation_database_module = "([^"]+)"', section)
    assert database_module is not None
    repo = tmp_path_factory.mktemp("inventory")
    _write(
        repo,
        {
            "pyproject.toml": TOY_PYPROJECT,
            "inventory/__init__.py": "",
            "inventory/db.py": engine_module,
            "inventory/shop.py": SQLALCHEMY_SHOP,
            "db/migrations/0001_items.sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL);\n",
            "tests/conftest.py": TOY_CONFTEST,
        },
    )
    settings = TOY_SETTINGS | {
        "isolation_database_module": f'"{database_module[1]}"',
        "isolation_module_patterns": '["inventory.*"]',
    }
    _adopt(isolation_only, repo, settings)
    _write(repo, {"tests/storage/test_items.py": SQLALCHEMY_TESTS})
    return repo


@pytest.mark.parametrize(
    "options",
    [[], ["--isolation-strategy", "memory"], ["-n", "2"]],
    ids=["file", "memory", "two workers"],
)
def test_the_sqlalchemy_engine_adopting_shows_isolates_every_test(
    sqlalchemy_repository: Path, options: list[str]
) -> None:
    output = _run_toy(sqlalchemy_repository, "tests/storage", "--isolation-strict", *options)
    assert passed_count(output) == 3, output
    assert "leak detected" not in output, output
    assert not (sqlalchemy_repository / "inventory.db").exists()


def _linter_settings(adopting: str) -> str:
    """The TOML block of ADOPTING.md's step about linters."""
    blocks = [block.split("```", 1)[0] for block in adopting.split("```toml\n")[1:]]
    return textwrap.dedent(next(block for block in blocks if "[tool.ruff]" in block))


def _merge_toml(document: str, block: str) -> str:
    """``block``'s keys added to ``document``'s tables of the same name, as ADOPTING.md
    says; its other tables (and arrays of tables) appended."""
    for section in re.split(r"\n(?=\[)", block.strip()):
        header, keys = section.split("\n", 1)
        if header.startswith("[[") or f"\n{header}\n" not in document:
            document += f"\n{section}\n"
        else:
            document = document.replace(f"\n{header}\n", f"\n{header}\n{keys}\n", 1)
    return document


def _lint(repo: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", *command], repo)


UNFORMATTED = "def cents(euros:int)->int:\n    return euros*100\n"


def test_adopted_files_pass_the_repositorys_own_linters(
    isolation_only: Path, toy_repository: Path, tmp_path: Path
) -> None:
    """ruff with the repository's line length would rewrite the copied files, and mypy
    names tests/setup_integration.py twice where tests/ has no __init__.py: with the
    settings ADOPTING.md gives, the repository's ``ruff format .`` leaves the copied files
    as they are (named on its command line too) and still formats a ``lib`` package of
    its own, and its ruff and mypy pass, its own settings (a stricter mypy flag) kept."""
    repo = tmp_path / "toyshop"
    shutil.copytree(toy_repository, repo, ignore=shutil.ignore_patterns(*CACHE_DIRS, "*.db"))
    _write(repo, {"toyshop/lib/__init__.py": "", "toyshop/lib/money.py": UNFORMATTED})
    copied = ["lib", *(path for path in ISOLATION_TESTS if path.endswith(".py"))]
    assert _lint(repo, "ruff", "format", "--check", *copied).returncode == 1  # at 88
    assert "Source file found twice" in _lint(repo, "mypy", ".").stdout
    pyproject = repo / "pyproject.toml"
    stricter = pyproject.read_text() + "\n[tool.mypy]\ndisallow_any_explicit = true\n"
    adopting = (isolation_only / "ADOPTING.md").read_text()
    pyproject.write_text(_merge_toml(stricter, _linter_settings(adopting)))
    settings = tomllib.loads(pyproject.read_text())["tool"]
    assert settings["ruff"]["line-length"] == 88
    assert settings["mypy"]["disallow_any_explicit"] is True
    assert _lint(repo, "ruff", "format", ".").returncode == 0  # formats the toy's own files
    assert (repo / "toyshop/lib/money.py").read_text() != UNFORMATTED
    assert _lint(repo, "ruff", "format", *copied).returncode == 0  # as pre-commit runs it
    for path in (*(repo / "lib").rglob("*.py"), *(repo / name for name in copied[1:])):
        relative = path.relative_to(repo)
        assert path.read_bytes() == (isolation_only / relative).read_bytes(), relative
    for command in (["ruff", "check", "."], ["mypy", "."]):
        result = _lint(repo, *command)
        assert result.returncode == 0, result.stdout


# -- cruft -----------------------------------------------------------------------------------


GIT_IDENTITY = ("-c", "user.name=Template", "-c", "user.email=template@example.com")


def _git(cwd: Path, *args: str) -> None:
    command = ["git", *GIT_IDENTITY, "-c", "commit.gpgsign=false", *args]
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def template_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template's files (tracked and new, not ignored) as a one-commit git repository."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=TEMPLATE_DIR,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    copy = tmp_path_factory.mktemp("template-git") / "isolation-template"
    for relative in filter(None, listed):
        source = TEMPLATE_DIR / relative
        if source.is_file():
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / relative)
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "commit", "-q", "-m", "template")
    return copy


def _cruft(cwd: Path, *args: str) -> str:
    result = run([sys.executable, "-m", "cruft", *args], cwd)
    assert result.returncode == 0, result.stdout
    return result.stdout


@pytest.mark.parametrize("layout", ["full", "isolation-only"])
def test_cruft_create_then_check(
    template_repository: Path, cookiecutter_config: Path, tmp_path: Path, layout: str
) -> None:
    extra = json.dumps({"layout": layout, "project_slug": "shop"})
    _cruft(
        tmp_path,
        "create",
        str(template_repository),
        "--no-input",
        "--extra-context",
        extra,
        "--config-file",
        str(cookiecutter_config),
    )
    project = tmp_path / "shop"
    cruft_state = json.loads((project / ".cruft.json").read_text())
    assert cruft_state["context"]["cookiecutter"]["layout"] == layout
    answers = json.loads((project / ".cookiecutter.json").read_text())
    assert answers["layout"] == layout
    assert "up to date" in _cruft(project, "check")
    assert (project / "pyproject.toml").exists() is (layout == "full")


def test_cruft_link_with_the_recorded_answers(
    template_repository: Path, bake_from: Bake, tmp_path: Path
) -> None:
    """A project baked with plain cookiecutter links to the template with its recorded
    answers, and cruft then sees no difference between the project and the template."""
    project = bake_from(template_repository, tmp_path, project_name="Billing API", ci="none")
    answers = (project / ".cookiecutter.json").read_text()
    _cruft(project, "link", str(template_repository), "-y", "--extra-context", answers)
    assert "up to date" in _cruft(project, "check")
    diff = run([sys.executable, "-m", "cruft", "diff", "--exit-code"], project)
    assert diff.returncode == 0, diff.stdout
    assert diff.stdout.strip() == ""


@pytest.fixture
def bake_from(cookiecutter_config: Path) -> Bake:
    """Bake another copy of the template (``bake`` bakes this checkout)."""
    return functools.partial(bake_template, config=cookiecutter_config)
