"""Nodes of the ``sft_oracle`` baseline: supervised fine-tuning on the *gold* answers.

TAO never sees a label. This baseline asks what labels would have bought at the same budget:
the same train prompts, framed the same way, each with its gold answer as the assistant turn,
trained by the train stage's own SFT machinery (``taoflow.training``, the ``rft`` settings of
``params:train``). It is the one place labels touch training, and it only exists to be
evaluated beside TAO.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.sft_oracle import TRAINER_ALGORITHM, SftOracleParams
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.answers import answers_match, extract_answer
from taoflow.core.gold import find_gold, gold_table
from taoflow.core.ids import frame_hash
from taoflow.core.text import as_messages, last_user_message
from taoflow.core.tracking import mlflow_metrics
from taoflow.models import Policy
from taoflow.training import prompt_messages, train_policy

logger = logging.getLogger(__name__)

ALGORITHM = "sft_oracle"
ROUND = 1  # one round of training from the base model, like TAO's round_1
EXAMPLE_COLUMNS = ["prompt_id", "prompt", "completion", "question", "gold_answer", "match"]
REJECT_COLUMNS = ["prompt_id", "split", "user_message", "reason"]


# --------------------------------------------------------------------------- examples


def build_sft_oracle_examples(
    prompts: pd.DataFrame,
    usage_gold: pd.DataFrame,
    sft_oracle: SftOracleParams,
    task: TaskParams,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Train prompts + gold answers → SFT rows (``prompt`` chat, ``completion``) and rejects.

    Each train-split prompt is framed exactly as generation and training frame it
    (``taoflow.training.prompt_messages``: the task's system prompt where the prompt has none)
    and gets its gold answer, written per ``completion_template`` (default: the final number
    only, as the task's system prompt asks), as the assistant turn. The gold answer is found by
    the question text (the last user message); ``match: embedded`` also accepts a message that
    wraps one gold question. Holdout prompts, prompts without a gold answer and answers the
    task's extractor could not read back go to the rejects, each with its reason.
    """
    for column in ("prompt_id", "messages"):
        if column not in prompts.columns:
            raise ValueError(f"prompts: missing column {column!r}; has {list(prompts.columns)}")
    gold = gold_table(usage_gold)
    keys_by_length = sorted(gold.index, key=lambda k: (-len(k), k))
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
        if split != "train":
            reason = f"{split} prompt (the oracle trains on the train split only)"
        elif user is None:
            reason = "no user message to look the gold answer up by"
        else:
            row, reason = _gold_example(user, gold, keys_by_length, sft_oracle, task)
        if reason is not None:
            rejects.append(
                {"prompt_id": prompt_id, "split": split, "user_message": user, "reason": reason}
            )
            continue
        rows.append({"prompt_id": prompt_id, "prompt": prompt_messages(messages, task), **row})
    examples = pd.DataFrame(rows, columns=EXAMPLE_COLUMNS)
    rejects_df = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    n_train = int((splits == "train").sum())
    if examples.empty:
        reasons = rejects_df["reason"].value_counts().head(3).to_dict()
        raise ValueError(
            f"sft_oracle: none of the {n_train} train prompts has a usable gold answer in "
            f"usage_gold; most common reasons: {reasons}"
        )
    n_embedded = int((examples["match"] == "embedded").sum())
    logger.info(
        "sft_oracle: %d examples from %d train prompts (%d embedded matches); %d rejected",
        len(examples),
        n_train,
        n_embedded,
        len(rejects_df),
    )
    values = {
        "n_prompts": len(prompts),
        "n_train_prompts": n_train,
        "n_examples": len(examples),
        "n_rejects": len(rejects_df),
        "n_embedded_matches": n_embedded,
        "gold_coverage": len(examples) / n_train if n_train else 0.0,
        "n_gold": len(gold),
    }
    return examples, rejects_df, mlflow_metrics(values, prefix="sft_oracle.data", step=ROUND)


def _gold_example(
    user: str,
    gold: pd.Series,
    keys_by_length: list[str],
    sft_oracle: SftOracleParams,
    task: TaskParams,
) -> tuple[dict[str, str], None] | tuple[None, str]:
    """A train prompt's gold columns (completion, question, answer, how matched), or why not."""
    key, answer, how = find_gold(user, gold, keys_by_length, sft_oracle.match)
    if key is None:
        return None, how
    completion = sft_oracle.completion_template.format(answer=answer)
    if not answers_match(extract_answer(completion, task.answer), answer):
        return None, (
            f"gold answer {answer!r} written as {completion!r} is not read back by "
            f"the task's answer extractor {task.answer.kind}"
        )
    return {"completion": completion, "question": key, "gold_answer": answer, "match": how}, None


# --------------------------------------------------------------------------- training


def train_sft_oracle(
    sft_oracle_examples: pd.DataFrame,
    base_model: Policy,
    sft_oracle: SftOracleParams,
    train: TrainParams,
    seed: int,
) -> tuple[Policy, dict[str, Any]]:
    """SFT ``base_model`` on the gold examples with the train stage's trainer and budget.

    Reuses :func:`taoflow.training.train_policy` (TRL ``SFTTrainer``, completion-only loss,
    LoRA, resumable checkpoints); per-step curves are returned as ``sft_oracle.trainer.*``. The lineage says
    what it is (``algorithm: sft_oracle``, ``labels: gold``), so it is never mistaken for a
    label-free policy.
    """
    settings = sft_oracle.train_settings(train)
    data_hashes = {"sft_oracle_examples": frame_hash(sft_oracle_examples)}
    policy, values, curves = train_policy(
        base_model,
        sft_oracle_examples,
        settings,
        seed=int(seed),
        round_=ROUND,
        data_hashes=data_hashes,
        metrics_prefix=f"{ALGORITHM}.trainer",
    )
    base = policy.lineage.get("base_model", base_model.name)
    policy.lineage.update(
        {
            "name": f"{base}-{ALGORITHM}",
            "algorithm": ALGORITHM,
            "trainer_algorithm": TRAINER_ALGORITHM,
            "labels": "gold",
        }
    )
    return policy, {**mlflow_metrics(values, prefix=ALGORITHM, step=ROUND), **curves}
