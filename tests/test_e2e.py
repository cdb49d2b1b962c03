"""One real run of the quick start: ``nox -s integration`` in a freshly baked project."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Bake, run_nox


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_nox_integration_session(bake: Bake, tmp_path: Path) -> None:
    project = bake(tmp_path)
    output = run_nox(project, "integration")
    assert "Session integration was successful" in output
    # Installed with its bytecode: the run may not write any (PYTHONDONTWRITEBYTECODE=1), so
    # without it every pytest process and xdist worker would compile pytest again.
    session = project / ".nox" / "integration"
    assert list(session.glob("**/site-packages/_pytest/__pycache__/*.pyc")), output
