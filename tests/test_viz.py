"""kedro-viz renders the composed pipeline in a real (headless Chromium) browser."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from .conftest import PROJECT_ROOT

needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian chromium not installed (.ci/run installs it)"
)


def _viz_check():
    sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
    try:
        import viz_check
    finally:
        sys.path.pop(0)
    return viz_check


def test_the_proxy_shows_kedro_viz_as_a_returning_user_sees_it():
    returning_user = _viz_check().returning_user
    version = b'{"installed": "12.5.0", "is_outdated": true, "latest": "None"}'
    assert json.loads(returning_user("/api/version", "application/json", version)) == {
        "installed": "12.5.0",
        "is_outdated": False,
        "latest": "12.5.0",
    }
    page = returning_user("/", "text/html; charset=utf-8", b"<html><head><title>x</title>")
    assert page.index(b"showFeatureHints: false") < page.index(b"<title>")
    other = b'{"nodes": []}'
    assert returning_user("/api/main", "application/json", other) == other


@needs_chromium
def test_kedro_viz_shows_the_tao_graph(kedro_project, tmp_path):
    dom = _viz_check().check(
        kedro_project,
        expect=["round_1", "build_prompts", "prepare_base_model", "evaluate_report"],
        screenshot=tmp_path / "viz.png",
    )
    assert (tmp_path / "viz.png").stat().st_size > 10_000
    assert "kedro" in dom.lower()
    # no first-visit tour, no "Kedro-Viz None is here!" update banner (offline version check)
    assert "feature-hints__nav" not in dom
    assert "is here!" not in dom and "update-reminder-unexpanded" not in dom
