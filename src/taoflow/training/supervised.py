"""Supervised yardsticks: SFT on answers from a source other than the scorers (gold, a judge).

``sft_oracle`` (gold answers: what labels buy) and ``judge_distill`` (a stronger model's answers:
what plain distillation buys) are the same baseline with a different answer source, so they share
the example builder and the trainer here; each stage only supplies its lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.launch import LaunchParams
from taoflow.config.reuse import ReuseParams
from taoflow.config.sft_oracle import TRAINER_ALGORITHM, SupervisedBaselineParams
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.answers import answers_match, extract_answer
from taoflow.core.ids import frame_hash
from taoflow.core.text import as_messages, last_user_message
from taoflow.core.tracking import mlflow_metrics
from taoflow.models import Policy
from taoflow.training.examples import prompt_messages
from taoflow.training.reuse import launch_key_part, reuse_or_train


def train_policy(*args: Any, **kwargs: Any) -> Any:
    """:func:`taoflow.training.trainers.train_policy`, imported on first call (TRL is heavy)."""
    from taoflow.training.trainers import train_policy as run

    return run(*args, **kwargs)


logger = logging.getLogger(__name__)

ROUND = 1  # one round of training from the base model, like TAO's round_1
REJECT_COLUMNS = ["prompt_id", "split", "user_message", "reason"]

# (prompt_id, last user message) → (answer, extra example columns) or (None, why not)
AnswerLookup = Callable[[str, str], "tuple[str, dict[str, Any]] | tuple[None, str]"]


def build_answer_examples(
    prompts: pd.DataFrame,
    lookup: AnswerLookup,
    params: SupervisedBaselineParams,
    task: TaskParams,
    *,
    columns: list[str],
    who: str,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Train prompts + an answer source → SFT rows (``prompt`` chat, ``completion``), rejects.

    Each train-split prompt is framed as generation and training frame it
    (:func:`taoflow.training.prompt_messages`) and gets its answer from ``lookup``, written per
    ``completion_template``, as the assistant turn. Holdout prompts, prompts the source has no
    answer for and answers the task's extractor could not read back go to the rejects, each with
    its reason. ``columns`` are the example columns (``prompt_id``, ``prompt``, ``completion``
    and the lookup's extras); ``who`` names the baseline in reasons. Returns the number of train
    prompts too.
    """
    for column in ("prompt_id", "messages"):
        if column not in prompts.columns:
            raise ValueError(f"prompts: missing column {column!r}; has {list(prompts.columns)}")
    splits = (
        prompts["split"].astype(str)
        if "split" in prompts.columns
        else pd.Series("train", index=prompts.index)
    )
    rows, rejects = [], []
    order = np.argsort(prompts["prompt_id"].astype(str).to_numpy(), kind="stable")
    for i in order:
        prompt_id = str(prompts["prompt_id"].iloc[i])
        split = str(splits.iloc[i])
        messages = as_messages(prompts["messages"].iloc[i])
        user = last_user_message(messages)
        row, reason = None, None
        if split != "train":
            reason = f"{split} prompt (the {who} trains on the train split only)"
        elif user is None:
            reason = "no user message to look the answer up by"
        else:
            row, reason = _answer_row(prompt_id, user, lookup, params, task)
        if reason is not None:
            rejects.append(
                {"prompt_id": prompt_id, "split": split, "user_message": user, "reason": reason}
            )
            continue
        rows.append({"prompt_id": prompt_id, "prompt": prompt_messages(messages, task), **row})
    n_train = int((splits == "train").sum())
    return (
        pd.DataFrame(rows, columns=columns),
        pd.DataFrame(rejects, columns=REJECT_COLUMNS),
        n_train,
    )


def _answer_row(
    prompt_id: str,
    user: str,
    lookup: AnswerLookup,
    params: SupervisedBaselineParams,
    task: TaskParams,
) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """One train prompt's completion and extra columns, or why it has none."""
    answer, extra = lookup(prompt_id, user)
    if answer is None:
        return None, str(extra)
    completion = params.completion_template.format(answer=answer)
    if not answers_match(extract_answer(completion, task.answer), answer):
        return None, (
            f"answer {answer!r} written as {completion!r} is not read back by "
            f"the task's answer extractor {task.answer.kind}"
        )
    return {"completion": completion, **extra}, None


def no_examples_error(name: str, source: str, n_train: int, rejects: pd.DataFrame) -> ValueError:
    """The error of a baseline whose answer source covers none of the train prompts."""
    reasons = rejects["reason"].value_counts().head(3).to_dict()
    return ValueError(
        f"{name}: none of the {n_train} train prompts has a usable answer in {source}; "
        f"most common reasons: {reasons}"
    )


def train_answer_baseline(
    examples: pd.DataFrame,
    base_model: Policy,
    params: SupervisedBaselineParams,
    train: TrainParams,
    seed: int,
    *,
    algorithm: str,
    labels: str,
    examples_key: str,
    reuse: ReuseParams | None = None,
    launch: LaunchParams | None = None,
) -> tuple[Policy, dict[str, Any]]:
    """SFT ``base_model`` on ``examples`` with the train stage's trainer and budget.

    Reuses :func:`taoflow.training.train_policy` (TRL ``SFTTrainer``, completion-only loss, LoRA,
    resumable checkpoints); per-step curves come back as ``<algorithm>.trainer.*``. The lineage
    says what it is (``algorithm``, ``labels``), so it is never mistaken for a label-free policy.
    With ``reuse`` enabled, a training whose inputs all match a cached one is loaded instead
    (:func:`taoflow.training.reuse.reuse_or_train`; metric ``reuse.<algorithm>``). ``launch``
    (``mode: accelerate``) trains in an ``accelerate launch`` child.
    """
    settings = params.train_settings(train)

    def run() -> tuple[Policy, dict[str, Any]]:
        policy, values, curves = train_policy(
            base_model,
            examples,
            settings,
            seed=int(seed),
            round_=ROUND,
            data_hashes={examples_key: frame_hash(examples)},
            metrics_prefix=f"{algorithm}.trainer",
            launch=launch,
        )
        base = policy.lineage.get("base_model", base_model.name)
        policy.lineage.update(
            {
                "name": f"{base}-{algorithm}",
                "algorithm": algorithm,
                "trainer_algorithm": TRAINER_ALGORITHM,
                "labels": labels,
            }
        )
        return policy, {**mlflow_metrics(values, prefix=algorithm, step=ROUND), **curves}

    if reuse is None:
        return run()
    return reuse_or_train(
        algorithm,
        reuse,
        run,
        base_model=base_model,
        examples=examples,
        settings=settings,
        seed=int(seed),
        step=ROUND,
        extra={
            "round": ROUND,
            "labels": labels,
            "examples_key": examples_key,
            **launch_key_part(launch),
        },
    )
