"""A trusted signal for the verdict: how often a policy's samples agree with a frozen judge.

Label-free signals cannot tell sharpening toward the right answer from collapse onto a wrong
one: both raise agreement and lower entropy. A judge stronger than the policy can (the ``judge``
stage's reference answers, one per prompt): a policy that sharpens toward the judge's answers
gains agreement with it, one that collapses onto a wrong consensus loses it. The signal is the
share of a prompt's samples whose extracted answer (the task's extractor, as the ``judge`` scorer
extracts it) equals the judge's answer, averaged over the prompts the judge answered.

Pure functions of data frames (no I/O, no model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import answers_match
from taoflow.health.signals import _is_missing, candidate_answers

REFERENCE_COLUMNS = ("prompt_id", "judge_answer")


def _extractor_kind(answer_config: Any) -> str:
    if hasattr(answer_config, "model_dump"):
        answer_config = answer_config.model_dump(exclude_none=True)
    return str(dict(answer_config or {}).get("kind", "last_number"))


def judge_agreement_by_prompt(
    frame: pd.DataFrame, references: pd.DataFrame, answer_config: Any = None
) -> pd.Series:
    """``prompt_id`` → share of the prompt's samples whose answer equals the judge's answer.

    Only prompts the judge answered (non-null ``judge_answer``) are in the result; a sample with
    no extractable answer counts as disagreeing. Empty for free-form tasks (extractor ``full``):
    exact equality of whole texts says nothing there, and the embedding comparison the ``judge``
    scorer uses would need a model.
    """
    missing = [c for c in REFERENCE_COLUMNS if c not in references.columns]
    if missing:
        raise ValueError(
            f"health: judge references lack column(s) {missing}; expected the "
            "judge_references contract"
        )
    if _extractor_kind(answer_config) == "full" or frame.empty:
        return pd.Series(dtype=float)
    table = references.drop_duplicates("prompt_id", keep="last")
    judged = {
        str(p): str(a)
        for p, a in zip(table["prompt_id"], table["judge_answer"], strict=True)
        if not _is_missing(a)
    }
    answers = candidate_answers(frame, answer_config)
    work = pd.DataFrame({"prompt_id": frame["prompt_id"].astype(str).to_numpy()})
    work["agrees"] = [
        float(answers_match(None if _is_missing(a) else a, judged.get(p)))
        for a, p in zip(answers, work["prompt_id"], strict=True)
    ]
    work = work[work["prompt_id"].isin(judged)]
    return work.groupby("prompt_id", sort=True)["agrees"].mean()


def trusted_signals(
    frame: pd.DataFrame,
    reference: pd.DataFrame,
    references: pd.DataFrame,
    answer_config: Any = None,
) -> tuple[dict[str, float | int | None], dict[str, float | int | None]]:
    """Judge agreement of ``frame`` (the judged policy) and of ``reference`` (the base), paired.

    Both are averaged over the prompts both frames sampled and the judge answered, so the rise
    (``judge_agreement_rise``, in the policy's signals, with its paired standard error over those
    prompts, ``judge_agreement_rise_se``) compares like with like. None when there is no such
    prompt.
    """
    policy = judge_agreement_by_prompt(frame, references, answer_config)
    base = judge_agreement_by_prompt(reference, references, answer_config)
    shared = policy.index.intersection(base.index)
    value = base_value = rise = se = None
    if len(shared):
        value = float(policy[shared].mean())
        base_value = float(base[shared].mean())
        diff = policy[shared].to_numpy() - base[shared].to_numpy()
        rise = float(diff.mean())
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    signals = {
        "judge_agreement": value,
        "judge_agreement_rise": rise,
        "judge_agreement_rise_se": se,
        "n_judge_prompts": int(len(shared)),
    }
    return signals, {"judge_agreement": base_value, "n_judge_prompts": int(len(shared))}
