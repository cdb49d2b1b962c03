"""Shared fixtures: bake the template once per session (per xdist worker) and run tools in it."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
DEFAULTS: dict[str, str] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())

CUSTOM_ANSWERS = {
    "project_name": "Billing API",
    "project_slug": "billing_api",
    "description": "Invoices and payments, tested against isolated databases.",
    "author_name": "Ada Lovelace",
    "author_email": "ada@analytical.example.org",
    "python_version": "3.12",
}

Bake = Callable[..., Path]


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cookiecutter config that keeps replay files out of the user's home directory."""
    home = tmp_path_factory.mktemp("cookiecutter-home")
    config = home / "config.yaml"
    config.write_text(
        f"cookiecutters_dir: {json.dumps(str(home / 'cookiecutters'))}\n"
        f"replay_dir: {json.dumps(str(home / 'replay'))}\n"
    )
    return config


@pytest.fixture(scope="session")
def bake(cookiecutter_config: Path) -> Bake:
    """Return a function that bakes the template into ``output_dir`` with the given answers."""
    return functools.partial(bake_template, TEMPLATE_DIR, config=cookiecutter_config)


def bake_template(template: Path, output_dir: Path, config: Path, **answers: str) -> Path:
    """Bake ``template`` into ``output_dir`` without prompts; return the project directory."""
    return Path(
        cookiecutter(
            str(template),
            no_input=True,
            extra_context=answers,
            output_dir=str(output_dir),
            config_file=str(config),
        )
    )


@pytest.fixture(scope="session")
def default_project(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project baked with the default answers."""
    return bake(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="session")
def custom_project(bake: Bake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project baked with non-default answers (CUSTOM_ANSWERS)."""
    return bake(tmp_path_factory.mktemp("custom"), **CUSTOM_ANSWERS)


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment for a tool run in a baked project: no pytest, color or database leftovers."""
    drop = ("PYTEST_", "DATABASE_URL", "TURSO_", "FORCE_COLOR", "PY_COLORS", "UV_COMPILE_BYTECODE")
    env = {key: value for key, value in os.environ.items() if not key.startswith(drop)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(overrides)
    return env


def run(
    args: Sequence[str], cwd: Path, *, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``cwd``, capturing stdout and stderr together."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the baked project's pytest with this interpreter; return its output.

    Fails unless pytest exits 0 and its summary line reports at least one passed test.
    """
    result = run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], project, env=env
    )
    assert result.returncode == 0, result.stdout
    assert passed_count(result.stdout) > 0, result.stdout
    return result.stdout


def run_nox(project: Path, session: str, *args: str) -> str:
    """Run ``nox -s <session> [args]`` in a baked project (uv venvs); fail unless its
    tests passed."""
    result = run(
        [sys.executable, "-m", "nox", "-s", session, "--default-venv-backend", "uv", *args],
        project,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
    assert passed_count(result.stdout) > 0, result.stdout
    return result.stdout


def passed_count(output: str) -> int:
    """The number of passed tests in pytest's final summary line (0 if there is none)."""
    summaries = re.findall(r"^=+ (.*) in [\d.]+s.* =+$", output, flags=re.MULTILINE)
    if not summaries:
        return 0
    match = re.search(r"(\d+) passed", summaries[-1])
    return int(match.group(1)) if match else 0
