"""Nodes of the ``audit`` stage: how right were the label-free rewards, where gold answers exist.

TAO trains on rewards it cannot check. When a gold file for the usage prompts exists (the shipped
default has ``usage_gold``; a team can label a small sample of its own prompts), this stage
measures the rewards after the fact, per round: how often the majority vote's pseudo-label is
right, how that depends on agreement, how often the top-reward candidate — what rejection-sampling
fine-tuning trains on — is right, and how well rewards separate right from wrong candidates.
It only reads; nothing it computes reaches training.

Beside the combined reward, every scorer is audited on its own (``scorer_audit``: precision of
its preferred answer, AUC, per confidence bucket), and a label-free estimate of the round's
signal (``signal_quality``: agreement between scorers, prompts with signal, the share
``train.gates`` would keep) is computed from ``scored`` alone, before training reads it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.audit import AuditParams
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.answers import answers_match, extract_answer
from taoflow.core.gold import find_gold, gold_table
from taoflow.core.text import as_messages, last_user_message
from taoflow.core.tracking import mlflow_metrics
from taoflow.scoring.quality import scorer_audit, signal_quality
from taoflow.training.gates import keep_shares

logger = logging.getLogger(__name__)

AUDIT_COLUMNS = [
    "prompt_id",
    "split",
    "gold_answer",
    "n_candidates",
    "n_correct",
    "pseudo_label",
    "agreement",
    "pseudo_label_correct",
    "top_reward_answer",
    "top_reward_correct",
    "reward_auc",
]


def _auc(rewards: np.ndarray, correct: np.ndarray) -> float:
    """P(reward of a right candidate > reward of a wrong one), ties half: Mann-Whitney AUC."""
    pos, neg = rewards[correct], rewards[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _pseudo_label(group: pd.DataFrame) -> tuple[Any, float]:
    """The group's pseudo-label and its agreement: the majority-vote scorer's, else the mode."""
    if "majority_vote_majority_answer" in group.columns:
        label = group["majority_vote_majority_answer"].dropna()
        pseudo = label.iloc[0] if len(label) else None
        agreement = (
            float(group["majority_vote_agreement"].max())
            if "majority_vote_agreement" in group.columns
            else float("nan")
        )
        return pseudo, agreement
    counts = group["_answer"].dropna().value_counts()
    pseudo = counts.index[0] if len(counts) else None
    agreement = float(counts.iloc[0] / len(group)) if len(counts) else 0.0
    return pseudo, agreement


def _audit_rows(
    frame: pd.DataFrame, info: pd.DataFrame, usage_gold: pd.DataFrame
) -> tuple[list[dict[str, Any]], int]:
    """One audit row per scored prompt with a gold answer, and how many had none."""
    gold = gold_table(usage_gold)
    keys_by_length = sorted(gold.index, key=lambda k: (-len(k), k))
    rows, no_gold = [], 0
    for prompt_id, group in frame.groupby(frame["prompt_id"].astype(str), sort=True):
        if prompt_id not in info.index:
            no_gold += 1
            continue
        user = last_user_message(as_messages(info.loc[prompt_id, "messages"]))
        key, answer, _ = find_gold(user, gold, keys_by_length, "embedded")
        if key is None:
            no_gold += 1
            continue
        right = np.array([a is not None and answers_match(a, answer) for a in group["_answer"]])
        pseudo, agreement = _pseudo_label(group)
        top = group.sort_values(["reward", "_order"], ascending=[False, True]).iloc[0]
        rows.append(
            {
                "prompt_id": prompt_id,
                "split": str(info.loc[prompt_id].get("split", "train")),
                "gold_answer": answer,
                "n_candidates": len(group),
                "n_correct": int(right.sum()),
                "pseudo_label": None if pseudo is None else str(pseudo),
                "agreement": agreement,
                "pseudo_label_correct": (
                    None if pseudo is None else bool(answers_match(str(pseudo), answer))
                ),
                "top_reward_answer": top["_answer"],
                "top_reward_correct": bool(right[group.index.get_loc(top.name)]),
                "reward_auc": _auc(group["reward"].to_numpy(dtype=float), right),
            }
        )
    return rows, no_gold


def _audit_values(table: pd.DataFrame, no_gold: int, bins: list[float]) -> dict[str, float]:
    """Round-level accuracy of the rewards, overall and per agreement bucket (NaN kept)."""
    labelled = table[table["pseudo_label_correct"].notna()]
    values: dict[str, float] = {
        "n_prompts": len(table),
        "n_without_gold": no_gold,
        "candidate_accuracy": float(table["n_correct"].sum() / table["n_candidates"].sum()),
        "any_correct": float((table["n_correct"] > 0).mean()),
        "pseudo_label_coverage": len(labelled) / len(table),
        "pseudo_label_accuracy": (
            float(labelled["pseudo_label_correct"].astype(bool).mean())
            if len(labelled)
            else float("nan")
        ),
        "top_reward_accuracy": float(table["top_reward_correct"].mean()),
        "reward_auc": float(table["reward_auc"].mean()),  # NaN-skipping: mixed groups only
    }
    agreement = labelled["agreement"].astype(float)
    for i, (low, high) in enumerate(zip(bins[:-1], bins[1:], strict=True)):
        lower_ok = agreement >= low if i == 0 else agreement > low  # (low, high], first closed
        part = labelled[lower_ok & (agreement <= high)]
        name = f"agreement_{low:.2f}_{high:.2f}"
        values[f"{name}.share"] = len(part) / len(table)
        values[f"{name}.pseudo_label_accuracy"] = (
            float(part["pseudo_label_correct"].astype(bool).mean()) if len(part) else float("nan")
        )
    return values


def audit_rewards(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    usage_gold: pd.DataFrame,
    audit: AuditParams,
    task: TaskParams,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per-prompt audit rows and round-level metrics (``audit.round_<k>.*``) against gold answers.

    The pseudo-label is the majority-vote scorer's answer when that scorer ran (its
    ``majority_vote_majority_answer`` column; tied or low-agreement groups have none), else the
    most common extracted answer. Prompts without a gold answer are left out and counted.
    """
    bins = [float(b) for b in audit.agreement_bins]
    for column in ("prompt_id", "completion", "reward"):
        if column not in scored.columns:
            raise ValueError(f"scored: missing column {column!r}; has {list(scored.columns)}")
    info = prompts.set_index(prompts["prompt_id"].astype(str))
    rounds = sorted(pd.unique(scored["round"])) if "round" in scored.columns else [1]
    round_ = int(rounds[-1])

    answers = (
        scored["answer"]
        if "answer" in scored.columns
        else scored["completion"].map(lambda c: extract_answer(c, task.answer))
    )
    frame = scored.assign(_answer=answers.to_numpy(), _order=np.arange(len(scored)))
    rows, no_gold = _audit_rows(frame, info, usage_gold)
    table = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    if table.empty:
        raise ValueError(
            f"audit: none of the {frame['prompt_id'].nunique()} scored prompts has a gold "
            "answer in usage_gold: nothing to audit (disable tao.audit_rewards)"
        )
    values = _audit_values(table, no_gold, bins)
    logger.info(
        "audit round %d: pseudo-label right on %.0f%% of %d labelled prompts (coverage %.0f%%); "
        "top-reward candidate right on %.0f%%; some candidate right on %.0f%%",
        round_,
        100 * values["pseudo_label_accuracy"],
        int(table["pseudo_label_correct"].notna().sum()),
        100 * values["pseudo_label_coverage"],
        100 * values["top_reward_accuracy"],
        100 * values["any_correct"],
    )
    values = {k: v for k, v in values.items() if not (isinstance(v, float) and np.isnan(v))}
    return table, mlflow_metrics(values, prefix=f"audit.round_{round_}", step=round_)


def _round_of(scored: pd.DataFrame) -> int:
    return int(sorted(pd.unique(scored["round"]))[-1]) if "round" in scored.columns else 1


def _with_answers(scored: pd.DataFrame, task: TaskParams) -> pd.DataFrame:
    if "answer" in scored.columns:
        return scored
    return scored.assign(answer=scored["completion"].map(lambda c: extract_answer(c, task.answer)))


def _gold_by_prompt(scored: pd.DataFrame, prompts: pd.DataFrame, usage_gold: pd.DataFrame) -> dict:
    """prompt_id → gold answer for the scored prompts that have one (found as audit_rewards does)."""
    gold = gold_table(usage_gold)
    keys_by_length = sorted(gold.index, key=lambda k: (-len(k), k))
    info = prompts.set_index(prompts["prompt_id"].astype(str))
    out = {}
    for prompt_id in pd.unique(scored["prompt_id"].astype(str)):
        if prompt_id not in info.index:
            continue
        user = last_user_message(as_messages(info.loc[prompt_id, "messages"]))
        key, answer, _ = find_gold(user, gold, keys_by_length, "embedded")
        if key is not None:
            out[prompt_id] = answer
    return out


def audit_scorers(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    usage_gold: pd.DataFrame,
    audit: AuditParams,
    task: TaskParams,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Every ``score_<scorer>`` and the combined reward against gold answers (read-only).

    One row per (scorer, bucket): ``precision`` (the top-scored candidate's answer is right),
    ``auc`` (right vs wrong candidates within a prompt), overall (``all``) and per confidence
    bucket (``audit.agreement_bins`` edges over the scorer's confidence column).
    """
    round_ = _round_of(scored)
    frame = _with_answers(scored, task)
    gold = _gold_by_prompt(frame, prompts, usage_gold)
    table = scorer_audit(frame, gold, [float(b) for b in audit.agreement_bins])
    values = {}
    for row in table.itertuples(index=False):
        key = f"{row.scorer}.{row.bucket}" if row.bucket != "all" else row.scorer
        values[f"{key}.precision"] = row.precision
        values[f"{key}.auc"] = row.auc
        values[f"{key}.share"] = row.share
    values = {k: v for k, v in values.items() if not np.isnan(v)}
    return table, mlflow_metrics(values, prefix=f"audit.round_{round_}.scorers", step=round_)


def assess_signal_quality(
    scored: pd.DataFrame, train: TrainParams, task: TaskParams
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Label-free: is this round's signal worth training on? Logged before training reads it.

    Agreement between independent scorers' preferred answers, the share of prompts whose scores
    vary, the groups' answer agreement and — when the train block has ``gates`` — the share of
    prompts the gates would keep. No gold answer is read.
    """
    round_ = _round_of(scored)
    table, values = signal_quality(_with_answers(scored, task), keep_shares(scored, train.gates))
    logger.info(
        "signal quality round %d (label-free): %s",
        round_,
        ", ".join(f"{k} {v:.2f}" for k, v in values.items() if k != "n_prompts"),
    )
    values = {k: v for k, v in values.items() if not np.isnan(v)}
    return table, mlflow_metrics(values, prefix=f"signal.round_{round_}", step=round_)


def _markdown(frame: pd.DataFrame) -> list[str]:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = []
    for row in frame.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        body.append("| " + " | ".join(cells) + " |")
    return [head, rule, *body]


def build_audit_report(
    scorer_audit: pd.DataFrame, signal_quality: pd.DataFrame, train_audit: pd.DataFrame
) -> str:
    """Markdown: the label-free signal estimate, each scorer checked against gold, then the
    examples training learned from."""
    out = [
        "# Scorer audit",
        "",
        "## Label-free signal quality (no gold read; computed before training)",
        "",
        "`agreement`: share of prompts where two scorers prefer the same answer; "
        "`signal_share`: prompts whose scores vary; `gate`: share a train gate would keep.",
        "",
        *_markdown(signal_quality),
        "",
        "## Against gold answers (after the fact, never used in training)",
        "",
        "`precision`: the top-scored candidate's answer is right; `auc`: right vs wrong "
        "candidates within a prompt (prompts with both); per confidence bucket.",
        "",
        *_markdown(scorer_audit),
        "",
        "## What training learned from, against gold",
        "",
        "Per side of the examples (dpo chosen/rejected, kto desirable/undesirable, rft targets): "
        "examples, prompts, and the share whose answer is right.",
        "",
        *_markdown(_train_summary(train_audit)),
    ]
    return "\n".join(out) + "\n"


def _train_summary(train_audit: pd.DataFrame) -> pd.DataFrame:
    columns = ["side", "examples", "prompts", "right"]
    if train_audit.empty:
        return pd.DataFrame(columns=columns)
    grouped = train_audit.groupby("side", sort=True)
    return pd.DataFrame(
        {
            "side": list(grouped.groups),
            "examples": grouped.size().to_list(),
            "prompts": grouped["prompt_id"].nunique().to_list(),
            "right": grouped["correct"].mean().astype(float).to_list(),
        },
        columns=columns,
    )


TRAIN_AUDIT_COLUMNS = ["prompt_id", "gold_answer", "side", "candidate_id", "answer", "correct"]


def _example_sides(examples: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(side, candidate ids) of what a trainer learns from: chosen/rejected (dpo), desirable/
    undesirable (kto) or targets (rft); grpo samples online and has none."""
    if {"chosen_id", "rejected_id"} <= set(examples.columns):
        return [("chosen", examples["chosen_id"]), ("rejected", examples["rejected_id"])]
    if "candidate_id" not in examples.columns:
        return []
    if "label" in examples.columns:
        label = examples["label"].astype(bool)
        return [
            ("chosen", examples.loc[label, "candidate_id"]),
            ("rejected", examples.loc[~label, "candidate_id"]),
        ]
    return [("chosen", examples["candidate_id"])]


def audit_training_data(
    train_examples: pd.DataFrame,
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    usage_gold: pd.DataFrame,
    task: TaskParams,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """What training actually learned from, against gold (read-only, after the fact).

    The gates' promise is that the examples that survive them are right: ``chosen_precision`` is
    the share of chosen (target, desirable) examples whose answer is right, ``rejected_wrong``
    the share of rejected (undesirable) ones whose answer is wrong, ``kept_share`` the share of
    the round's gold-labelled prompts that reached training at all.
    """
    round_ = _round_of(scored)
    frame = _with_answers(scored, task)
    gold = _gold_by_prompt(frame, prompts, usage_gold)
    answers = frame.set_index(frame["candidate_id"].astype(str))["answer"]
    prompt_of = frame.set_index(frame["candidate_id"].astype(str))["prompt_id"].astype(str)
    rows = []
    for side, ids in _example_sides(train_examples):
        for candidate_id in ids.astype(str):
            prompt_id = str(prompt_of.get(candidate_id, ""))
            if prompt_id not in gold:
                continue
            answer = answers.get(candidate_id)
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "gold_answer": gold[prompt_id],
                    "side": side,
                    "candidate_id": candidate_id,
                    "answer": None if pd.isna(answer) else str(answer),
                    "correct": bool(
                        not pd.isna(answer) and answers_match(str(answer), gold[prompt_id])
                    ),
                }
            )
    table = pd.DataFrame(rows, columns=TRAIN_AUDIT_COLUMNS)
    chosen = table[table["side"] == "chosen"]
    rejected = table[table["side"] == "rejected"]
    values = {
        "gold_prompts": float(len(gold)),
        "kept_prompts": float(chosen["prompt_id"].nunique()),
        "kept_share": chosen["prompt_id"].nunique() / len(gold) if gold else float("nan"),
        "chosen_precision": float(chosen["correct"].mean()) if len(chosen) else float("nan"),
        "rejected_wrong": float((~rejected["correct"]).mean()) if len(rejected) else float("nan"),
    }
    logger.info(
        "training data round %d: %d of %d gold-labelled prompts reached training; chosen right "
        "%.0f%%, rejected wrong %.0f%%",
        round_,
        values["kept_prompts"],
        values["gold_prompts"],
        100 * values["chosen_precision"],
        100 * values["rejected_wrong"],
    )
    values = {k: v for k, v in values.items() if not np.isnan(v)}
    return table, mlflow_metrics(values, prefix=f"audit.round_{round_}.train", step=round_)
