"""One real run of the quick start: ``nox -s integration`` in a freshly baked project."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Bake, passed_count, run_nox


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

    # A path after -- as an option's value does not replace the session's directory.
    deselected = "tests/integration/test_client_closed_prevention.py"
    rerun = run_nox(
        project, "integration", "--reuse-existing-virtualenvs", "--", "--deselect", deselected
    )
    kept = passed_count(rerun)
    assert 0 < kept < passed_count(output), rerun
    assert f"{passed_count(output) - kept} deselected" in rerun, rerun
