"""sft_oracle: ``prompts`` + ``usage_gold`` + ``base_model`` → ``sft_oracle.policy``.

Stand-alone (``kedro run --pipeline sft_oracle``) or composed beside the TAO rounds; evaluate
takes ``sft_oracle.policy`` as one more model (``create_pipeline(models={..., "sft_oracle":
"sft_oracle.policy"})``).
"""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.sft_oracle.nodes import build_sft_oracle_examples, train_sft_oracle


def _gold_path() -> str | None:
    """Where ``usage_gold`` lives, so a bad gold line is reported with its file."""
    from taoflow.config.graph import graph_config

    entry = graph_config("catalog").get("usage_gold") or {}
    path = entry.get("filepath") if isinstance(entry, dict) else None
    return str(path) if path else None


def create_pipeline(**kwargs: Any) -> Pipeline:
    build = update_wrapper(
        partial(build_sft_oracle_examples, gold_path=_gold_path()), build_sft_oracle_examples
    )
    return Pipeline(
        [
            node(
                build,
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
                },
                outputs=["sft_oracle.policy", "sft_oracle_metrics"],
                name="train_sft_oracle",
            ),
        ],
        tags="sft_oracle",
    )
