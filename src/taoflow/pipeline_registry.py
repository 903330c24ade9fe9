"""Project pipelines.

Every folder under ``pipelines/`` that exposes ``create_pipeline()`` is registered under its
name by ``find_pipelines``. The composed ``tao`` pipeline is ``__default__``.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = pipelines.get("tao") or sum(pipelines.values(), Pipeline([]))
    return pipelines
