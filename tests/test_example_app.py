"""The example_app answer: the HTTP API and its tests are baked in, or none of it is.

The default bake (example_app=yes) runs its whole integration suite, API tests included,
in test_baked_project.py; here the API suite also runs on two workers with in-memory
databases, a server error and a request still running stay in the test that made them,
and a bake without the application passes its own checks.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import Bake, passed_count, run, run_pytest

APP_PATHS = ("app", "tests/integration/api", "tests/unit/api")
APP_DEPENDENCIES = ("starlette", "uvicorn", "httpx")
JINJA_LEFTOVERS = ("{{ cookiecutter.", "{{cookiecutter.", "{%", "{#")


@pytest.fixture(scope="module")
def no_app_project(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project baked with example_app=no."""
    return bake(tmp_path_factory.mktemp("no-app"), example_app="no")


def _pyproject(project: Path) -> dict[str, object]:
    return tomllib.loads((project / "pyproject.toml").read_text())


def _requirements(project: Path) -> list[str]:
    pyproject = _pyproject(project)
    project_table = pyproject["project"]
    groups = pyproject["dependency-groups"]
    assert isinstance(project_table, dict)
    assert isinstance(groups, dict)
    return [*project_table["dependencies"], *(r for r in groups["test"] if isinstance(r, str))]


def _mypy_files(project: Path) -> list[str]:
    tool = _pyproject(project)["tool"]
    assert isinstance(tool, dict)
    files: list[str] = tool["mypy"]["files"]
    return files


def test_default_bake_has_the_app_its_tests_and_dependencies(default_project: Path) -> None:
    for relative in APP_PATHS:
        assert (default_project / relative).is_dir(), relative
    requirements = _requirements(default_project)
    for name in APP_DEPENDENCIES:
        assert any(r.startswith(name) for r in requirements), name
    assert "app" in _mypy_files(default_project)
    assert "## Example application" in (default_project / "README.md").read_text()


def test_default_bake_leaves_anyio_plugin_off(default_project: Path) -> None:
    """Starlette and httpx bring anyio, whose pytest plugin the async tests do not use."""
    result = run([sys.executable, "-m", "pytest", "-VV"], default_project)
    assert result.returncode == 0, result.stdout
    assert "pytest-asyncio" in result.stdout
    assert "anyio" not in result.stdout


def test_no_app_bake_has_none_of_it(no_app_project: Path) -> None:
    for relative in APP_PATHS:
        assert not (no_app_project / relative).exists(), relative
    requirements = _requirements(no_app_project)
    for name in APP_DEPENDENCIES:
        assert not any(r.startswith(name) for r in requirements), name
    assert "app" not in _mypy_files(no_app_project)
    readme = (no_app_project / "README.md").read_text()
    assert "Example application" not in readme
    assert "uvicorn" not in readme
    for path in (no_app_project / "pyproject.toml", no_app_project / "README.md"):
        text = path.read_text()
        for leftover in JINJA_LEFTOVERS:
            assert leftover not in text, f"{leftover!r} left in {path.name}"


def test_no_app_bake_is_lint_and_type_clean(no_app_project: Path) -> None:
    for args in (
        ["ruff", "check", ".", "--no-cache"],
        ["ruff", "format", "--check", ".", "--no-cache"],
        ["mypy", "--cache-dir", "/dev/null"],
    ):
        result = run([sys.executable, "-m", *args], no_app_project)
        assert result.returncode == 0, result.stdout


def test_no_app_bake_suites_pass(no_app_project: Path) -> None:
    run_pytest(no_app_project, "tests/unit", "tests/integration")


def test_api_suite_passes_on_two_workers_with_in_memory_databases(
    default_project: Path, tmp_path: Path
) -> None:
    """The server thread sees each test's in-memory database through the singleton too."""
    run_pytest(
        default_project,
        "tests/integration/api",
        "-n",
        "2",
        "--isolation-strategy",
        "memory",
        "-o",
        f"isolation_data_dir={tmp_path / 'data'}",
    )
    # The setting was followed: the migrated template was cached there.
    assert list((tmp_path / "data" / ".isolation" / "templates").glob("*.db"))


def _run_api_tests(default_project: Path, tmp_path: Path, source: str) -> str:
    """Run ``source`` as an API test module, in order, in a copy of the default project."""
    project = shutil.copytree(default_project, tmp_path / "project")
    (project / "tests/integration/api/test_added.py").write_text(source)
    return run_pytest(project, "tests/integration/api/test_added.py", "-p", "no:randomly")


SLOW_CLOSE_AFTER_A_SERVER_ERROR = '''
import logging
import time

import httpx
import pytest


class SlowToClose(logging.Filter):
    """uvicorn logs a failed request's traceback before it closes the connection."""

    def filter(self, record):
        time.sleep(0.5)
        return True


@pytest.fixture
def slow_close():
    logger = logging.getLogger("uvicorn.error")
    slow = SlowToClose()
    logger.addFilter(slow)
    yield
    logger.removeFilter(slow)


def test_a_server_error(api, db, slow_close):
    db.execute("INSERT INTO users (id, email, name) VALUES (1, 'ada@example.com', 'Ada')")
    db.execute(
        "INSERT INTO products (id, sku, name, price_cents, stock) VALUES (1, 'P', 'P', 1, 5)"
    )
    db.execute("DROP TABLE logs")
    with pytest.raises(AssertionError, match="no such table: logs"):
        api.post("/orders", json={"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]})


def test_the_next_request(api):
    assert api.get("/health").status_code == 200
'''


def test_a_server_error_does_not_reach_the_next_tests_requests(
    default_project: Path, tmp_path: Path
) -> None:
    """The server drops the connection of a failed request only after logging it: the
    next test's request must not go out on it."""
    output = _run_api_tests(default_project, tmp_path, SLOW_CLOSE_AFTER_A_SERVER_ERROR)
    assert passed_count(output) == 2, output


A_REQUEST_THAT_OUTLIVES_ITS_CLIENT = """
import time

import httpx
import pytest

import app.store

CALLS = []


def test_a_request_given_up_on(api_url, db, monkeypatch):
    real_client, real_row = app.store.get_database_client, app.store._row

    def slow():
        time.sleep(1)
        return real_client()

    def row(*args):
        CALLS.append("the test's own")
        return real_row(*args)

    monkeypatch.setattr(app.store, "get_database_client", slow)
    monkeypatch.setattr(app.store, "_row", row)
    with httpx.Client(base_url=api_url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/users", json={"email": "late@example.com", "name": "Late"})


def test_the_next_test(db):
    time.sleep(1.5)  # the request above would be done by now
    assert db.execute("SELECT email FROM users").rows == []
    assert CALLS == ["the test's own"]  # the late handler ran with the test's mocks
"""


def test_a_request_still_running_ends_with_its_test(default_project: Path, tmp_path: Path) -> None:
    """A handler that outlives the client's timeout still writes into its own test's
    database, with the test's fixtures in place: the test ends only once the server is
    done with its requests."""
    output = _run_api_tests(default_project, tmp_path, A_REQUEST_THAT_OUTLIVES_ITS_CLIENT)
    assert passed_count(output) == 2, output


def test_the_api_suite_passes_with_the_lifespan_on(default_project: Path, tmp_path: Path) -> None:
    """An application with startup work turns the server's lifespan on: it lasts the whole
    session, and no test waits for it."""
    project = shutil.copytree(default_project, tmp_path / "project")
    conftest = project / "tests/integration/api/conftest.py"
    text = conftest.read_text()
    assert 'lifespan="off"' in text
    conftest.write_text(text.replace('lifespan="off"', 'lifespan="on"'))
    output = run_pytest(project, "tests/integration/api", "-p", "no:randomly")
    assert "still handling" not in output, output
