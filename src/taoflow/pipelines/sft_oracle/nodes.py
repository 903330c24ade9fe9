"""Nodes of the ``sft_oracle`` baseline: supervised fine-tuning on the *gold* answers.

TAO never sees a label. This baseline asks what labels would have bought at the same budget:
the same train prompts, framed the same way, each with its gold answer as the assistant turn,
trained by the train stage's own SFT machinery (``taoflow.training``, the ``rft`` settings of
``params:train``). It is the one place labels touch training, and it only exists to be
evaluated beside TAO. The example builder and trainer are shared with ``judge_distill``
(:mod:`taoflow.training.supervised`); only the answer source (the gold table) is this stage's.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from taoflow.config.launch import LaunchParams
from taoflow.config.reuse import ReuseParams
from taoflow.config.sft_oracle import SftOracleParams
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.gold import find_gold, gold_table
from taoflow.core.tracking import mlflow_metrics
from taoflow.models import Policy
from taoflow.training.supervised import (
    ROUND,
    AnswerLookup,
    build_answer_examples,
    no_examples_error,
    train_answer_baseline,
)

logger = logging.getLogger(__name__)

ALGORITHM = "sft_oracle"
EXAMPLE_COLUMNS = ["prompt_id", "prompt", "completion", "question", "gold_answer", "match"]


def _gold_lookup(gold: pd.Series, match: str) -> AnswerLookup:
    """The gold answer of a train prompt, found by its question text (the last user message)."""
    keys_by_length = sorted(gold.index, key=lambda k: (-len(k), k))

    def lookup(prompt_id: str, user: str) -> tuple[Any, Any]:
        key, answer, how = find_gold(user, gold, keys_by_length, match)
        if key is None:
            return None, how
        return answer, {"question": key, "gold_answer": answer, "match": how}

    return lookup


def build_sft_oracle_examples(
    prompts: pd.DataFrame,
    usage_gold: pd.DataFrame,
    sft_oracle: SftOracleParams,
    task: TaskParams,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Train prompts + gold answers → SFT rows (``prompt`` chat, ``completion``) and rejects.

    The gold answer is found by the question text (the last user message); ``match: embedded``
    also accepts a message that wraps one gold question. Written per ``completion_template``
    (default: the final number only, as the task's system prompt asks).
    """
    gold = gold_table(usage_gold)
    examples, rejects, n_train = build_answer_examples(
        prompts,
        _gold_lookup(gold, sft_oracle.match),
        sft_oracle,
        task,
        columns=EXAMPLE_COLUMNS,
        who="oracle",
    )
    if examples.empty:
        raise no_examples_error(ALGORITHM, "usage_gold", n_train, rejects)
    n_embedded = int((examples["match"] == "embedded").sum())
    logger.info(
        "sft_oracle: %d examples from %d train prompts (%d embedded matches); %d rejected",
        len(examples),
        n_train,
        n_embedded,
        len(rejects),
    )
    values = {
        "n_prompts": len(prompts),
        "n_train_prompts": n_train,
        "n_examples": len(examples),
        "n_rejects": len(rejects),
        "n_embedded_matches": n_embedded,
        "gold_coverage": len(examples) / n_train if n_train else 0.0,
        "n_gold": len(gold),
    }
    return examples, rejects, mlflow_metrics(values, prefix="sft_oracle.data", step=ROUND)


def train_sft_oracle(
    sft_oracle_examples: pd.DataFrame,
    base_model: Policy,
    sft_oracle: SftOracleParams,
    train: TrainParams,
    seed: int,
    *,
    reuse: ReuseParams | None = None,
    launch: LaunchParams | None = None,
) -> tuple[Policy, dict[str, Any]]:
    """SFT ``base_model`` on the gold examples with the train stage's trainer and budget.

    The lineage says ``algorithm: sft_oracle``, ``labels: gold``.
    """
    return train_answer_baseline(
        sft_oracle_examples,
        base_model,
        sft_oracle,
        train,
        seed,
        algorithm=ALGORITHM,
        labels="gold",
        examples_key="sft_oracle_examples",
        reuse=reuse,
        launch=launch,
    )
