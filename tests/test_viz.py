"""kedro-viz renders the composed pipeline in a real (headless Chromium) browser."""

from __future__ import annotations

import shutil
import sys

import pytest

from .conftest import PROJECT_ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian chromium not installed (.ci/run installs it)"
)


def test_kedro_viz_shows_the_tao_graph(kedro_project, tmp_path):
    sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
    try:
        from viz_check import check
    finally:
        sys.path.pop(0)
    dom = check(
        kedro_project,
        expect=["round_1", "build_prompts", "prepare_base_model", "evaluate_report"],
        screenshot=tmp_path / "viz.png",
    )
    assert (tmp_path / "viz.png").stat().st_size > 10_000
    assert "kedro" in dom.lower()
