"""One real run of the quick start: ``nox -s integration`` in a freshly baked project."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import Bake, passed_count, run


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_nox_integration_session(bake: Bake, tmp_path: Path) -> None:
    project = bake(tmp_path)
    result = run(
        [sys.executable, "-m", "nox", "-s", "integration", "--default-venv-backend", "uv"],
        project,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
    assert passed_count(result.stdout) > 0, result.stdout
    assert "Session integration was successful" in result.stdout
