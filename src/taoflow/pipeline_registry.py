"""Project pipelines.

Every folder under ``pipelines/`` that exposes ``create_pipeline()`` is registered under its
name by ``find_pipelines``. A stage that reads the base model or its tokenizer is registered
with ``prepare_base`` in front (idempotent and cached), one that reads an extra model
(``evaluate.extra_models``) with ``prepare_extra``, so ``kedro run --pipeline <stage>`` works
on a fresh checkout without stages importing each other. The composed ``tao`` pipeline is
``__default__``.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

PREPARE = ("prepare_base", "prepare_extra")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    for name, stage in list(pipelines.items()):
        if name in (*PREPARE, "tao"):
            continue
        for prepare in (pipelines[p] for p in PREPARE):
            if stage.inputs() & prepare.all_outputs():
                stage = prepare + stage
        pipelines[name] = stage
    pipelines["__default__"] = pipelines["tao"]
    return pipelines
