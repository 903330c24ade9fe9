"""sft_oracle: ``prompts`` + ``usage_gold`` + ``base_model`` → ``sft_oracle.policy``.

Stand-alone (``kedro run --pipeline sft_oracle``) or composed beside the TAO rounds; evaluate
takes ``sft_oracle.policy`` as one more model (``create_pipeline(models={..., "sft_oracle":
"sft_oracle.policy"})``).
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.sft_oracle.nodes import build_sft_oracle_examples, train_sft_oracle


def create_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline(
        [
            node(
                build_sft_oracle_examples,
                inputs=["prompts", "usage_gold", "params:sft_oracle", "params:task"],
                outputs=["sft_oracle_examples", "sft_oracle_rejects", "sft_oracle_data_metrics"],
                name="build_sft_oracle_examples",
            ),
            node(
                train_sft_oracle,
                inputs={
                    "sft_oracle_examples": "sft_oracle_examples",
                    "base_model": "base_model",
                    "sft_oracle": "params:sft_oracle",
                    "train": "params:train",
                    "seed": "params:seed",
                    "reuse": "params:reuse",
                    "launch": "params:launch",
                },
                outputs=["sft_oracle.policy", "sft_oracle_metrics"],
                name="train_sft_oracle",
            ),
        ],
        tags="sft_oracle",
    )
