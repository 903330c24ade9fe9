"""judge_distill: ``prompts`` + ``judge_references`` + ``base_model`` → ``judge_distill.policy``.

Stand-alone (``kedro run --pipeline judge_distill``) or composed beside the TAO rounds when
``tao.judge_distill``; evaluate then takes ``judge_distill.policy`` as one more model.
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.judge_distill.nodes import (
    build_judge_distill_examples,
    train_judge_distill,
)


def create_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline(
        [
            node(
                build_judge_distill_examples,
                inputs=["prompts", "judge_references", "params:judge_distill", "params:task"],
                outputs=[
                    "judge_distill_examples",
                    "judge_distill_rejects",
                    "judge_distill_data_metrics",
                ],
                name="build_judge_distill_examples",
            ),
            node(
                train_judge_distill,
                inputs={
                    "judge_distill_examples": "judge_distill_examples",
                    "base_model": "base_model",
                    "judge_distill": "params:judge_distill",
                    "train": "params:train",
                    "seed": "params:seed",
                    "reuse": "params:reuse",
                    "launch": "params:launch",
                },
                outputs=["judge_distill.policy", "judge_distill_metrics"],
                name="train_judge_distill",
            ),
        ],
        tags="judge_distill",
    )
