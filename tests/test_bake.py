"""Baking succeeds and the answers land where they belong."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import CUSTOM_ANSWERS, DEFAULTS, Bake

# Also what Jinja makes of a {{ ... }} it was not meant to render, as in an f-string.
JINJA_LEFTOVERS = ("{{ cookiecutter.", "{{cookiecutter.", "{%", "{#", "Undefined")
GITHUB_EXPRESSION = re.compile(r"\$\{\{ [^{}]+ \}\}")


# Tool caches in a working copy of the template are copied as they are; they are not
# part of the template (.gitignore keeps them out of the repository).
CACHE_DIRS = {".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", "__pycache__"}


def _files(project: Path) -> list[Path]:
    return [
        path
        for path in sorted(project.rglob("*"))
        if path.is_file() and not CACHE_DIRS.intersection(path.relative_to(project).parts)
    ]


def _pyproject(project: Path) -> dict[str, object]:
    return tomllib.loads((project / "pyproject.toml").read_text())


def test_default_answers_bake(default_project: Path) -> None:
    assert default_project.name == "orders-service"
    assert DEFAULTS["project_name"] == "Orders Service"
    project = _pyproject(default_project)["project"]
    assert isinstance(project, dict)
    assert project["name"] == "orders-service"
    assert project["requires-python"] == ">=3.11"
    assert project["authors"] == [{"name": "Your Name", "email": "you@example.com"}]


def test_custom_answers_bake(custom_project: Path) -> None:
    assert custom_project.name == "billing_api"
    pyproject = _pyproject(custom_project)
    project = pyproject["project"]
    assert isinstance(project, dict)
    assert project["name"] == "billing_api"
    assert project["description"] == CUSTOM_ANSWERS["description"]
    assert project["requires-python"] == ">=3.12"
    assert project["authors"] == [
        {"name": CUSTOM_ANSWERS["author_name"], "email": CUSTOM_ANSWERS["author_email"]}
    ]
    tool = pyproject["tool"]
    assert isinstance(tool, dict)
    assert tool["ruff"]["target-version"] == "py312"
    assert tool["mypy"]["python_version"] == "3.12"
    assert 'PYTHON = "3.12"' in (custom_project / "noxfile.py").read_text()


def test_readme_title_names_the_project(custom_project: Path) -> None:
    readme = custom_project / "README.md"
    assert readme.read_text().splitlines()[0] == f"# {CUSTOM_ANSWERS['project_name']}"


@pytest.mark.parametrize("answers", [{}, CUSTOM_ANSWERS], ids=["default", "custom"])
def test_no_jinja_left_in_any_file(bake: Bake, tmp_path: Path, answers: dict[str, str]) -> None:
    project = bake(tmp_path, **answers)  # a fresh bake: no caches from other tests' tool runs
    files = _files(project)
    assert files
    for path in files:
        text = path.read_text()
        for leftover in JINJA_LEFTOVERS:
            assert leftover not in text, f"{leftover!r} left in {path.relative_to(project)}"


def test_github_expressions_survive_rendering(default_project: Path) -> None:
    for path in (default_project / ".github" / "workflows").glob("*.yml"):
        text = path.read_text()
        expressions = re.findall(r"\$\{\{.*?\}\}", text)
        assert expressions, f"{path.name} has no GitHub expression"
        for expression in expressions:
            assert GITHUB_EXPRESSION.fullmatch(expression), f"{expression!r} in {path.name}"


def _workflow(project: Path, name: str) -> dict[str, object]:
    workflow = yaml.safe_load((project / ".github" / "workflows" / name).read_text())
    assert isinstance(workflow, dict)
    return workflow


def _steps(workflow: dict[str, object]) -> list[dict[str, object]]:
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict)
    return [step for job in jobs.values() for step in job["steps"]]


@pytest.mark.parametrize("name", ["ci.yml", "integration-tests.yml"])
def test_workflows_are_least_privilege_and_pinned(default_project: Path, name: str) -> None:
    workflow = _workflow(default_project, name)
    assert workflow["permissions"] == {"contents": "read"}
    for step in _steps(workflow):
        uses = step.get("uses")
        if not isinstance(uses, str):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), uses
        if uses.startswith("actions/checkout@"):
            assert step["with"] == {"persist-credentials": False}
    text = (default_project / ".github" / "workflows" / name).read_text()
    for line in text.splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


@pytest.mark.parametrize(
    ("fixture", "versions"),
    [("default_project", ["3.11", "3.12", "3.13"]), ("custom_project", ["3.12", "3.13"])],
)
def test_ci_matrix_starts_at_python_version(
    fixture: str, versions: list[str], request: pytest.FixtureRequest
) -> None:
    workflow = _workflow(request.getfixturevalue(fixture), "ci.yml")
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict)
    assert jobs["unit"]["strategy"]["matrix"]["python-version"] == versions


def test_ci_matrix_for_the_newest_python(bake: Bake, tmp_path: Path) -> None:
    project = bake(tmp_path, python_version="3.14")
    jobs = _workflow(project, "ci.yml")["jobs"]
    assert isinstance(jobs, dict)
    assert jobs["unit"]["strategy"]["matrix"]["python-version"] == ["3.14"]


def test_noxfile_sessions(default_project: Path) -> None:
    text = (default_project / "noxfile.py").read_text()
    for session in ("unit", "integration", "lint", "typecheck"):
        assert f"def {session}(session: nox.Session) -> None:" in text
    assert 'nox.options.sessions = ["lint", "typecheck", "unit", "integration"]' in text
    assert 'PYTHON = "3.11"' in text


def test_gitignore_and_no_data_dir(bake: Bake, tmp_path: Path) -> None:
    """A fresh bake: the shared one gets a data/ from the suites other tests run in it."""
    project = bake(tmp_path)
    ignored = (project / ".gitignore").read_text().splitlines()
    for pattern in ("data/", ".nox/", "*.db", "__pycache__/", ".mypy_cache/"):
        assert pattern in ignored
    assert not (project / "data").exists()
