"""judge: ``prepare_judge`` → ``judge_references`` (reference mode, once per run) or, per round,
``{namespace}.judgements`` (verdict mode); the score node takes them as its ``judgements``."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.judge.nodes import (
    collect_judge_references,
    collect_judgements,
    judge_reference_shards,
    judge_verdict_shards,
    prepare_judge,
)


def create_prepare() -> Pipeline:
    """Resolve (and, the first time, build) the judge model: ``judge_model``."""
    return Pipeline(
        [
            node(
                prepare_judge,
                inputs="params:judge",
                outputs=["judge_model", "judge_model_metrics"],
                name="prepare_judge",
            )
        ]
    )


def create_references() -> Pipeline:
    """Reference mode: the judge answers every unique prompt once per run."""
    return Pipeline(
        [
            node(
                judge_reference_shards,
                inputs={
                    "prompts": "prompts",
                    "judge_model": "judge_model",
                    "judge": "params:judge",
                    "task": "params:task",
                    "seed": "params:seed",
                    "credentials": "judge_credentials",
                    "generate": "params:generate",
                },
                outputs="judge_reference_shards",
                name="judge_reference_shards",
            ),
            node(
                collect_judge_references,
                inputs="judge_reference_shards",
                outputs=["judge_references", "judge_references_metrics"],
                name="collect_judge_references",
            ),
        ]
    )


def create_verdict_template() -> Pipeline:
    """Verdict mode, un-namespaced: a round's ``candidates`` → ``judgements``."""
    return Pipeline(
        [
            node(
                judge_verdict_shards,
                inputs={
                    "candidates": "candidates",
                    "prompts": "prompts",
                    "judge_model": "judge_model",
                    "judge": "params:judge",
                    "task": "params:task",
                    "credentials": "judge_credentials",
                },
                outputs="verdict_shards",
                name="judge_verdict_shards",
            ),
            node(
                collect_judgements,
                inputs=["verdict_shards", "candidates"],
                outputs=["judgements", "judgements_metrics"],
                name="collect_judgements",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Stand-alone ``kedro run --pipeline judge``: the judge's reference answers to ``prompts``."""
    return create_prepare() + create_references()
