"""Validate the answers before cookiecutter renders any file.

Every answer is read from a JSON document, never pasted into Python source, so no answer
can change what this script does. On any invalid answer, or a project directory that already
holds files, the script prints one line per problem to stderr and exits 1; cookiecutter
then removes the project directory if it created it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | tojson }}""")

MIN_PYTHON = 11
MAX_PYTHON = 14

SLUG = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")
MAX_SLUG = 64  # as the slug made from the name; the directory's name must fit the system's
# The packages the project installs: those pyproject.toml names (a template test keeps the
# two in step) and those they depend on, as resolved today. A project of the same name
# would depend on itself, which no installer resolves.
DEPENDENCIES = frozenset(
    {
        "anyio",
        "argcomplete",
        "ast-serialize",
        "attrs",
        "certifi",
        "click",
        "click-default-group",
        "colorama",  # click's, pytest's and colorlog's on Windows
        "colorlog",
        "dependency-groups",
        "distlib",
        "execnet",
        "filelock",
        "h11",
        "httpcore",
        "httpx",
        "humanize",
        "idna",
        "iniconfig",
        "librt",
        "libsql",
        "mypy",
        "mypy-extensions",
        "nox",
        "packaging",
        "pathspec",
        "pip",
        "platformdirs",
        "pluggy",
        "pygments",
        "pytest",
        "pytest-asyncio",
        "pytest-split",
        "pytest-timeout",
        "pytest-xdist",
        "python-dateutil",
        "python-discovery",
        "ruff",
        "sqlite-fts4",
        "sqlite-utils",
        "starlette",
        "tabulate",
        "typing-extensions",
        "tzdata",
        "uvicorn",
        "virtualenv",
    }
)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
PYTHON_VERSION = re.compile(r"^3\.([1-9][0-9]*)$")  # no leading zero: 3.011 is not 3.11
CI_CHOICES = ("github", "none")
MAX_CI_SHARDS = 20
LAYOUTS = ("full", "isolation-only")
# Answers that end up inside TOML strings in pyproject.toml.
UNSAFE_IN_TOML = re.compile(r'["\\\x00-\x1f\x7f]')


def _text(name: str) -> str:
    value = ANSWERS.get(name, "")
    return value if isinstance(value, str) else str(value)


def _check_project_name(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if UNSAFE_IN_TOML.search(value):
        return "must be one line without double quotes or backslashes"
    if not any(character.isalnum() for character in value):
        return "must hold a letter or a digit (the default project_slug is made from it)"
    return None


def _check_project_slug(value: str) -> str | None:
    if not SLUG.fullmatch(value):
        name = _text("project_name")
        return (
            "use lowercase letters, digits, '-' or '_', starting with a letter (unless given, "
            f"it is made from project_name {name!r}: give project_slug, or change the name)"
        )
    if len(value) > MAX_SLUG:
        return f"must be at most {MAX_SLUG} characters: it names the project's directory"
    if value.replace("_", "-") in DEPENDENCIES:
        return (
            "is the name of a package the project installs (one it depends on, or one of "
            "theirs): the project would depend on itself, which uv and pip cannot install; "
            "choose another name"
        )
    return None


def _check_description(value: str) -> str | None:
    if UNSAFE_IN_TOML.search(value):
        return "must be one line without double quotes or backslashes"
    return None


def _check_author_name(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    return _check_description(value)


def _check_author_email(value: str) -> str | None:
    if not EMAIL.fullmatch(value) or UNSAFE_IN_TOML.search(value):
        return "must be an email address such as 'you@example.com'"
    return None


def _check_python_version(value: str) -> str | None:
    match = PYTHON_VERSION.fullmatch(value)
    if not match or not MIN_PYTHON <= int(match.group(1)) <= MAX_PYTHON:
        return f"must be the minimum Python as '3.N', from 3.{MIN_PYTHON} to 3.{MAX_PYTHON}"
    return None


def _check_ci(value: str) -> str | None:
    if value not in CI_CHOICES:
        return "must be 'github' (GitHub Actions workflows) or 'none' (no CI files)"
    return None


def _check_ci_shards(value: str) -> str | None:
    if not re.fullmatch(r"[1-9][0-9]*", value) or int(value) > MAX_CI_SHARDS:
        return f"must be a whole number of integration test shards, from 1 to {MAX_CI_SHARDS}"
    return None


def _check_layout(value: str) -> str | None:
    if value not in LAYOUTS:
        return "must be 'full' (a whole project) or 'isolation-only' (for an existing repository)"
    return None


def _yes_or_no(value: str, yes: str) -> str | None:
    if value in ("yes", "no"):
        return None
    problem = f"must be 'yes' ({yes}) or 'no' (none)"
    if value in ("True", "False"):  # YAML's reading of an unquoted yes or no
        problem += "; a config file's unquoted yes or no reads as true or false: quote it"
    return problem


def _check_example_app(value: str) -> str | None:
    return _yes_or_no(value, "an example HTTP API with its tests")


def _check_turso(value: str) -> str | None:
    return _yes_or_no(value, "libSQL/Turso engine, its extra and nox session")


CHECKS = {
    "project_name": _check_project_name,
    "project_slug": _check_project_slug,
    "description": _check_description,
    "author_name": _check_author_name,
    "author_email": _check_author_email,
    "python_version": _check_python_version,
    "ci": _check_ci,
    "ci_shards": _check_ci_shards,
    "layout": _check_layout,
    "example_app": _check_example_app,
    "turso": _check_turso,
}


def _check_project_directory(directory: Path) -> str | None:
    """Files already there would be overwritten by the bake, or removed by the post-
    generation hook with those an answer switches off: refuse rather than lose them."""
    if not any(directory.iterdir()):
        return None
    return (
        f"ERROR: project_slug {_text('project_slug')!r}: the directory {directory} already "
        "exists and is not empty; baking into it would overwrite or remove its files. Bake "
        "into a new directory (another project_slug, or cookiecutter -o elsewhere), then "
        "copy what you need from it"
    )


def main() -> int:
    errors = []
    for name, check in CHECKS.items():
        value = _text(name)
        problem = check(value)
        if problem:
            errors.append(f"ERROR: {name} {value!r} is invalid: {problem}")
    occupied = _check_project_directory(Path.cwd())  # cookiecutter runs this hook there
    if occupied:
        errors.append(occupied)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


def remove_this_copy() -> None:
    """cookiecutter runs this hook from a copy rendered with every answer (the author's
    email too) under a name of its own, in the temporary directory, and leaves it there:
    remove it, once read. The template's own file keeps its name and is never removed."""
    script = Path(__file__)
    if script.name != "pre_gen_project.py":
        script.unlink(missing_ok=True)


if __name__ == "__main__":
    remove_this_copy()
    sys.exit(main())
