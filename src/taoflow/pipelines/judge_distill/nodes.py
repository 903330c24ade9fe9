"""Nodes of the ``judge_distill`` baseline: SFT on the judge's reference answers.

TAO spends compute to turn unlabeled prompts into a training signal with the judge among its
scorers. This yardstick asks what the plainest use of the same judge buys: its answer to each
train prompt (``judge_references``) taught directly as the assistant turn, with the same example
builder, framing and trainer as ``sft_oracle`` (:mod:`taoflow.training.supervised`). No gold
label is read.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from taoflow.config.judge_distill import JudgeDistillParams
from taoflow.config.launch import LaunchParams
from taoflow.config.reuse import ReuseParams
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.gold import format_gold_answer
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

ALGORITHM = "judge_distill"
REFERENCE_COLUMNS = ("prompt_id", "judge", "mode", "judge_answer", "judge_confidence")
EXAMPLE_COLUMNS = ["prompt_id", "prompt", "completion", "judge", "judge_answer", "judge_confidence"]


def judge_reference_table(references: pd.DataFrame, params: JudgeDistillParams) -> pd.DataFrame:
    """``judge_references`` narrowed to the configured judge / mode, one row per prompt_id.

    Two rows left for one prompt (several judges or modes and no filter) is an error naming
    them: which answer to teach must be a choice, not row order.
    """
    missing = [c for c in REFERENCE_COLUMNS if c not in references.columns]
    if missing:
        raise ValueError(
            f"judge_references: missing column(s) {missing}; has {list(references.columns)}"
        )
    table = references.assign(prompt_id=references["prompt_id"].astype(str))
    if params.judge is not None:
        table = table[table["judge"].astype(str) == params.judge]
    if params.mode is not None:
        table = table[table["mode"].astype(str) == params.mode]
    duplicated = table["prompt_id"][table["prompt_id"].duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(
            f"judge_references: {len(duplicated)} prompt(s) have several rows "
            f"(e.g. {duplicated[:3]}); set judge_distill.judge / judge_distill.mode to pick one"
        )
    return table.set_index("prompt_id")


def _judge_lookup(table: pd.DataFrame, params: JudgeDistillParams) -> AnswerLookup:
    def lookup(prompt_id: str, user: str) -> tuple[Any, Any]:
        if prompt_id not in table.index:
            return None, "no judge reference for this prompt"
        row = table.loc[prompt_id]
        answer = row["judge_answer"]
        if answer is None or (isinstance(answer, float) and pd.isna(answer)) or not str(answer):
            return None, "the judge gave no answer"
        confidence = float(row["judge_confidence"])
        if confidence < params.min_confidence:
            return None, f"judge confidence {confidence:.2f} < min_confidence"
        answer = format_gold_answer(answer)
        return answer, {
            "judge": str(row["judge"]),
            "judge_answer": answer,
            "judge_confidence": confidence,
        }

    return lookup


def build_judge_distill_examples(
    prompts: pd.DataFrame,
    judge_references: pd.DataFrame,
    judge_distill: JudgeDistillParams,
    task: TaskParams,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Train prompts + the judge's answers (by ``prompt_id``) → SFT rows and rejects."""
    table = judge_reference_table(judge_references, judge_distill)
    examples, rejects, n_train = build_answer_examples(
        prompts,
        _judge_lookup(table, judge_distill),
        judge_distill,
        task,
        columns=EXAMPLE_COLUMNS,
        who="judge distillation",
    )
    if examples.empty:
        raise no_examples_error(ALGORITHM, "judge_references", n_train, rejects)
    logger.info(
        "judge_distill: %d examples from %d train prompts; %d rejected",
        len(examples),
        n_train,
        len(rejects),
    )
    values = {
        "n_prompts": len(prompts),
        "n_train_prompts": n_train,
        "n_examples": len(examples),
        "n_rejects": len(rejects),
        "judge_coverage": len(examples) / n_train if n_train else 0.0,
        "mean_judge_confidence": float(examples["judge_confidence"].mean()),
        "n_references": len(table),
    }
    return examples, rejects, mlflow_metrics(values, prefix="judge_distill.data", step=ROUND)


def train_judge_distill(
    judge_distill_examples: pd.DataFrame,
    base_model: Policy,
    judge_distill: JudgeDistillParams,
    train: TrainParams,
    seed: int,
    *,
    reuse: ReuseParams | None = None,
    launch: LaunchParams | None = None,
) -> tuple[Policy, dict[str, Any]]:
    """SFT ``base_model`` on the judge's answers (lineage ``labels: judge``)."""
    return train_answer_baseline(
        judge_distill_examples,
        base_model,
        judge_distill,
        train,
        seed,
        algorithm=ALGORITHM,
        labels="judge",
        examples_key="judge_distill_examples",
        reuse=reuse,
        launch=launch,
    )
