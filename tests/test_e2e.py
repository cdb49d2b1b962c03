"""One real run of the quick start: ``nox -s integration`` in a freshly baked project."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Bake, run_nox


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_nox_integration_session(bake: Bake, tmp_path: Path) -> None:
    output = run_nox(bake(tmp_path), "integration")
    assert "Session integration was successful" in output
