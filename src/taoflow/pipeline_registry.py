"""Project pipelines.

Every folder under ``pipelines/`` that exposes ``create_pipeline()`` is registered under its
name by ``find_pipelines``. A stage that reads the base model or its tokenizer is registered
with ``prepare_base`` in front (idempotent and cached), so ``kedro run --pipeline <stage>`` works
on a fresh checkout without stages importing each other. The composed ``tao`` pipeline is
``__default__``.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

PREPARE = "prepare_base"


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    prepare = pipelines[PREPARE]
    for name, stage in list(pipelines.items()):
        if name not in (PREPARE, "tao") and stage.inputs() & prepare.all_outputs():
            pipelines[name] = prepare + stage
    pipelines["__default__"] = pipelines["tao"]
    return pipelines
