"""The pre-generation hook rejects every invalid answer and leaves nothing behind."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from conftest import TEMPLATE_DIR, Bake

INVALID = [
    ("project_slug", "My Slug", "use lowercase letters, digits, '-' or '_'"),
    ("project_slug", "1orders", "starting with a letter"),
    ("project_slug", "orders--service", "use lowercase letters"),
    ("project_slug", "orders-", "use lowercase letters"),
    ("project_slug", "-orders", "use lowercase letters"),
    ("project_slug", "orders.service", "use lowercase letters"),
    ("project_slug", "Orders", "use lowercase letters"),
    ("project_slug", "orders_-service", "use lowercase letters"),
    ("project_slug", "o" * 65, "at most 64 characters"),
    ("project_slug", "sqlite_utils", "the project would depend on itself"),
    ("project_slug", "anyio", "one it depends on, or one of theirs"),  # starlette's
    ("project_name", "", "must not be empty"),
    ("project_name", "   ", "must not be empty"),
    ("project_name", 'The "Best" Service', "without double quotes"),
    ("project_name", "!!!", "must hold a letter or a digit"),
    ("description", "a\\b", "without double quotes or backslashes"),
    ("author_name", "", "must not be empty"),
    ("author_email", "nobody", "must be an email address"),
    ("author_email", "a@b", "must be an email address"),
    ("author_email", "a b@example.com", "must be an email address"),
    ("python_version", "3.10", "from 3.11 to 3.14"),
    ("python_version", "2.7", "from 3.11 to 3.14"),
    ("python_version", "abc", "from 3.11 to 3.14"),
    ("python_version", "3.15", "from 3.11 to 3.14"),
    ("python_version", "3.11.4", "from 3.11 to 3.14"),
    ("python_version", "", "from 3.11 to 3.14"),
    ("python_version", "3.011", "from 3.11 to 3.14"),
    ("python_version", "3.1\u0662", "from 3.11 to 3.14"),  # an Arabic-Indic digit 2
    ("ci", "gitlab", "must be 'github' (GitHub Actions workflows) or 'none'"),
    ("ci", "GitHub", "must be 'github'"),
    ("ci", "", "must be 'github'"),
    ("ci_shards", "0", "from 1 to 20"),
    ("ci_shards", "21", "from 1 to 20"),
    ("ci_shards", "-1", "from 1 to 20"),
    ("ci_shards", "two", "from 1 to 20"),
    ("ci_shards", "1.5", "from 1 to 20"),
    ("ci_shards", "", "from 1 to 20"),
    ("ci_shards", "02", "from 1 to 20"),
    ("layout", "minimal", "must be 'full' (a whole project) or 'isolation-only'"),
    ("layout", "Full", "must be 'full'"),
    ("layout", "isolation_only", "must be 'full'"),
    ("layout", "", "must be 'full'"),
    ("example_app", "maybe", "must be 'yes' (an example HTTP API with its tests) or 'no'"),
    ("example_app", "Yes", "must be 'yes'"),
    ("example_app", "", "must be 'yes'"),
    ("turso", "true", "must be 'yes' (libSQL/Turso engine"),
    ("turso", "", "must be 'yes'"),
    ("example_app", "False", "a config file's unquoted yes or no reads as true or false"),
    ("turso", "True", "quote it"),
]


@pytest.mark.parametrize(("field", "value", "rule"), INVALID)
def test_invalid_answer_is_rejected(
    bake: Bake,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    field: str,
    value: str,
    rule: str,
) -> None:
    answers = {field: value}
    if field == "project_name":
        answers["project_slug"] = "orders"  # keep the derived slug valid: test the name alone
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    errors = capfd.readouterr().err
    assert f"ERROR: {field} {value!r} is invalid:" in errors
    assert rule in errors
    assert list(tmp_path.iterdir()) == []


def _dependencies() -> set[str]:
    """Every package the project's pyproject.toml asks for, under any answer."""
    text = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "pyproject.toml").read_text()
    return set(re.findall(r'"([A-Za-z][A-Za-z0-9_.-]*)(?:\[[^\]]*\])?(?:>=|==|~=|<|>)', text))


@pytest.mark.parametrize("dependency", sorted(_dependencies()))
def test_a_slug_named_like_a_dependency_is_rejected(
    bake: Bake, tmp_path: Path, capfd: pytest.CaptureFixture[str], dependency: str
) -> None:
    """The project would depend on itself: uv sync cannot resolve it."""
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_slug=dependency)
    assert "the project would depend on itself" in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_project_name_alone_is_named_by_the_hook(
    bake: Bake, tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    """The slug derived from an empty name must not be empty: cookiecutter would then bake
    into the output directory itself and fail before the hook could name the field."""
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_name=name)
    errors = capfd.readouterr().err
    assert f"ERROR: project_name {name!r} is invalid: must not be empty" in errors
    assert list(tmp_path.iterdir()) == []


def test_a_slug_made_from_the_name_says_so(
    bake: Bake, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_name="123 Orders")
    errors = capfd.readouterr().err
    assert "ERROR: project_slug '123-orders' is invalid" in errors
    assert "it is made from project_name '123 Orders'" in errors
    assert list(tmp_path.iterdir()) == []


def test_every_problem_is_reported_at_once(
    bake: Bake, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_slug="Bad Slug", author_email="x", python_version="3.9")
    errors = capfd.readouterr().err
    for field in ("project_slug", "author_email", "python_version"):
        assert f"ERROR: {field} " in errors
    assert list(tmp_path.iterdir()) == []


def test_answers_are_data_not_code(bake: Bake, tmp_path: Path) -> None:
    """Quotes and backslashes in an answer cannot break out of the hook's JSON document."""
    sneaky = "x\"\"\"; import sys; sys.exit(0) #'''"
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_name=sneaky, project_slug="orders")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("version", "unit_runs_on"),
    [
        ("3.11", "every Python from 3.11 to 3.13"),
        ("3.12", "every Python from 3.12 to 3.13"),
        ("3.13", "Python 3.13."),
        ("3.14", "Python 3.14."),
    ],
)
def test_supported_python_versions_bake(
    bake: Bake, tmp_path: Path, version: str, unit_runs_on: str
) -> None:
    project = bake(tmp_path, python_version=version)
    assert f'requires-python = ">={version}"' in (project / "pyproject.toml").read_text()
    assert f"`nox -s unit` on {unit_runs_on}" in (project / "README.md").read_text()


@pytest.mark.parametrize(
    ("shards", "described"),
    [("1", "`nox -s integration`,\n  in one job."), ("3", "split into 3 shards that run")],
)
def test_the_readme_describes_the_shards_asked_for(
    bake: Bake, tmp_path: Path, shards: str, described: str
) -> None:
    project = bake(tmp_path, ci_shards=shards)
    assert described in (project / "README.md").read_text()


def test_a_directory_that_holds_files_is_never_baked_into(
    cookiecutter_config: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Not even with ``-f``: the bake would overwrite files of the same name and the
    post-generation hook remove the rest of what an answer switches off."""
    existing = tmp_path / "orders-service"
    for relative in (".git/HEAD", "pyproject.toml", "tests/conftest.py", "app/mine.py"):
        (existing / relative).parent.mkdir(parents=True, exist_ok=True)
        (existing / relative).write_text(f"the user's own {relative}\n")
    before = sorted(path.relative_to(existing) for path in existing.rglob("*"))
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            extra_context={"layout": "isolation-only"},
            output_dir=str(tmp_path),
            config_file=str(cookiecutter_config),
            overwrite_if_exists=True,
        )
    errors = capfd.readouterr().err
    assert "ERROR: project_slug 'orders-service': the directory" in errors
    assert "already exists and is not empty" in errors
    assert sorted(path.relative_to(existing) for path in existing.rglob("*")) == before
    assert (existing / "pyproject.toml").read_text() == "the user's own pyproject.toml\n"


def test_an_empty_directory_that_exists_is_baked_into_with_overwrite(
    cookiecutter_config: Path, tmp_path: Path
) -> None:
    (tmp_path / "orders-service").mkdir()
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(tmp_path),
        config_file=str(cookiecutter_config),
        overwrite_if_exists=True,
    )
    assert (Path(project) / "lib" / "database.py").is_file()


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Café Orders", "cafe-orders"),
        ("O'Brien Service", "o-brien-service"),
        ("  Orders   Service ", "orders-service"),
        ("Orders.Service", "orders-service"),
        ("Orders & Payments!", "orders-payments"),
    ],
)
def test_the_default_slug_of_any_project_name_is_valid(
    bake: Bake, tmp_path: Path, name: str, slug: str
) -> None:
    assert bake(tmp_path, project_name=name).name == slug


def test_a_long_project_name_gets_a_slug_of_at_most_64_characters(
    bake: Bake, tmp_path: Path
) -> None:
    project = bake(tmp_path, project_name="Orders " * 40)
    assert len(project.name) <= 64
    assert project.name.startswith("orders-orders-")


def test_an_explicit_slug_wins_over_the_name(bake: Bake, tmp_path: Path) -> None:
    project = bake(tmp_path, project_name="Orders & Payments!", project_slug="orders-payments")
    assert project.name == "orders-payments"


@pytest.mark.parametrize("slug", ["orders", "Not A Slug"], ids=["baked", "rejected"])
def test_the_hooks_leave_no_copy_of_the_answers_behind(
    bake: Bake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slug: str
) -> None:
    """cookiecutter runs each hook from a rendered copy in the temporary directory."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # cookiecutter's, not the hooks'
    output = tmp_path / "out"
    if slug == "orders":
        bake(output, project_slug=slug, author_email="ada@example.com")
    else:
        with pytest.raises(FailedHookException):
            bake(output, project_slug=slug, author_email="ada@example.com")
    assert list(temporary.iterdir()) == []
