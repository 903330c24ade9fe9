"""Label-free health signals of a candidates-like frame: per prompt group, then per round.

A label-free reward can be satisfied by a wrong but *consistent* answer; nothing in the reward
notices. These signals do, without labels:

* per prompt group: distinct answers, entropy of the answer distribution, agreement (share of
  candidates on the majority answer, i.e. the majority-vote reward), unanimity;
* per candidate: mean token negative log-prob (``-logprob / n_tokens``, an estimate of the
  policy's per-token entropy on its own samples), length, hitting the token cap, and whether the
  answer copies a number/span of the prompt (the "7 - 2" → "7" hack);
* against the base model's candidates on the same prompts: the reward the base's own answers get
  under the new policy's majority, and how often the new consensus is an answer the base never
  produced.

Pure functions of data frames (no I/O, no model).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import extract_answer, normalize_answer, numbers_in
from taoflow.core.text import row_messages

_REQUIRED = ("prompt_id",)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any) -> float | None:
    if _is_missing(value):
        return None
    return float(value)


def candidate_answers(frame: pd.DataFrame, answer_config: Any = None) -> pd.Series:
    """Normalised answer of every row: the ``answer`` column when scoring made one, else extracted.

    Holdout outputs from ``evaluate`` or the health probe have no ``answer`` column; extracting
    with the task's own extractor keeps "the answer" identical to what scoring votes on.
    """
    if "answer" in frame.columns:
        raw = frame["answer"]
    elif "completion" in frame.columns:
        config = answer_config or {}
        raw = frame["completion"].map(lambda text: extract_answer(text, config))
    else:
        raise ValueError(
            "health: candidates need an 'answer' or a 'completion' column "
            f"(got columns {sorted(frame.columns)})"
        )
    return raw.map(lambda a: None if _is_missing(a) else normalize_answer(str(a)))


def prompt_texts(prompts: pd.DataFrame | None) -> dict[str, str]:
    """``prompt_id`` → the user turns' text (system prompts excluded: their spans are not operands)."""
    if prompts is None or prompts.empty:
        return {}
    missing = [c for c in ("prompt_id", "messages") if c not in prompts.columns]
    if missing:
        raise ValueError(f"health: prompts lack column(s) {missing}; see the `prompts` contract")
    texts = {}
    for row, (prompt_id, messages) in enumerate(
        zip(prompts["prompt_id"], prompts["messages"], strict=True)
    ):
        turns = row_messages(messages, row, prompt_id, where="health: prompts")
        texts[str(prompt_id)] = "\n".join(m["content"] for m in turns if m["role"] == "user")
    return texts


def copies_prompt(answer: str | None, prompt_text: str | None) -> bool | None:
    """Whether ``answer`` is a span of the prompt: one of its numbers, or a whole-word substring.

    None when the question has no answer or no known prompt (counted apart, not as "no copy").
    A correct answer can coincide with an operand ("0 + 7" → 7), which is why the detector uses
    the *rise* of this share against the base, never its level.
    """
    if answer is None or prompt_text is None:
        return None
    if answer in numbers_in(prompt_text):
        return True
    if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", answer):
        return False  # a number that is not one of the prompt's numbers
    text = " ".join(prompt_text.lower().split())
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text) is not None


def _majority(counts: Counter) -> str | None:
    """Most frequent answer; ties broken by the answer text so the result is reproducible."""
    if not counts:
        return None
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def group_signals(
    frame: pd.DataFrame,
    prompts: pd.DataFrame | None = None,
    answer_config: Any = None,
) -> pd.DataFrame:
    """One row per prompt group: size, answers, diversity, agreement, majority, copy share, length."""
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"health: candidates lack column(s) {missing}; expected the "
            "{round}.candidates / {round}.scored contract"
        )
    work = pd.DataFrame({"prompt_id": frame["prompt_id"].astype(str)})
    work["answer"] = candidate_answers(frame, answer_config).to_numpy()
    texts = prompt_texts(prompts)
    work["copy"] = [
        copies_prompt(None if _is_missing(a) else a, texts.get(p))
        for a, p in zip(work["answer"], work["prompt_id"], strict=True)
    ]
    if "n_tokens" in frame.columns:
        work["n_tokens"] = pd.to_numeric(frame["n_tokens"], errors="coerce").to_numpy()
    if "logprob" in frame.columns and "n_tokens" in frame.columns:
        logprob = pd.to_numeric(frame["logprob"], errors="coerce").to_numpy()
        n = work["n_tokens"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            nll = np.where((n > 0) & np.isfinite(logprob), -logprob / n, np.nan)
        work["token_nll"] = nll
    if "finish_reason" in frame.columns:
        work["hit_max"] = (frame["finish_reason"].astype(str) == "length").to_numpy()

    rows = []
    for prompt_id, group in work.groupby("prompt_id", sort=True):
        answered = [a for a in group["answer"] if not _is_missing(a)]
        counts = Counter(answered)
        n, n_answered = len(group), len(answered)
        probs = np.array(list(counts.values()), dtype=float) / max(n_answered, 1)
        majority = _majority(counts)
        copies = [c for c in group["copy"] if not _is_missing(c)]
        rows.append(
            {
                "prompt_id": prompt_id,
                "n": n,
                "n_answered": n_answered,
                "distinct_answers": len(counts),
                "answer_entropy": float(-(probs * np.log(probs)).sum()) if counts else np.nan,
                "majority": majority,
                "agreement": counts[majority] / n if majority is not None else 0.0,
                "unanimous": n_answered == n and len(counts) == 1,
                "copy_share": float(np.mean(copies)) if copies else np.nan,
                "known_prompt": prompt_id in texts,
                "length_mean": float(group["n_tokens"].mean()) if "n_tokens" in group else np.nan,
                "token_nll": float(np.nanmean(group["token_nll"]))
                if "token_nll" in group and group["token_nll"].notna().any()
                else np.nan,
                "hit_max_share": float(group["hit_max"].mean()) if "hit_max" in group else np.nan,
                "answers": answered,
            }
        )
    return pd.DataFrame(rows)


def _mean(values: Iterable[float]) -> float | None:
    array = np.asarray(list(values), dtype=float)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else None


def health_signals(
    frame: pd.DataFrame,
    prompts: pd.DataFrame | None = None,
    answer_config: Any = None,
    reference: pd.DataFrame | None = None,
) -> dict[str, float | int | None]:
    """Round-level health signals of any candidates-like frame (scored, candidates, holdout outputs).

    ``reference`` is the base model's candidates on (some of) the same prompts; when given, the
    base's own answers are re-scored under this frame's majority answers
    (``base_reward_under_policy``) and the share of prompts whose new consensus the base never
    produced is measured (``majority_off_base_support``).
    """
    groups = group_signals(frame, prompts, answer_config)
    multi = groups[groups["n"] >= 2] if not groups.empty else groups
    n_tokens = (
        pd.to_numeric(frame["n_tokens"], errors="coerce") if "n_tokens" in frame.columns else None
    )
    signals: dict[str, float | int | None] = {
        "n_candidates": len(frame),
        "n_prompts": len(groups),
        "n_groups": len(multi),
        "answer_rate": float(groups["n_answered"].sum() / max(groups["n"].sum(), 1))
        if len(groups)
        else None,
        "distinct_answers_mean": _mean(multi["distinct_answers"]) if len(multi) else None,
        "distinct_answers_ratio": _mean(multi["distinct_answers"] / multi["n"])
        if len(multi)
        else None,
        "answer_entropy_mean": _mean(multi["answer_entropy"]) if len(multi) else None,
        "agreement_mean": _mean(multi["agreement"]) if len(multi) else None,
        "unanimous_share": _mean(multi["unanimous"].astype(float)) if len(multi) else None,
        "prompt_copy_share": None,
        "unknown_prompt_share": float(1 - groups["known_prompt"].mean()) if len(groups) else None,
        "token_nll_mean": None,
        "length_mean": _mean(n_tokens) if n_tokens is not None else None,
        "max_tokens_share": float((frame["finish_reason"].astype(str) == "length").mean())
        if "finish_reason" in frame.columns and len(frame)
        else None,
    }
    if len(groups):
        copy_weights = groups["n_answered"].where(groups["copy_share"].notna(), 0)
        if copy_weights.sum() > 0:
            signals["prompt_copy_share"] = float(
                (groups["copy_share"].fillna(0) * copy_weights).sum() / copy_weights.sum()
            )
    if "logprob" in frame.columns and n_tokens is not None:
        logprob = pd.to_numeric(frame["logprob"], errors="coerce")
        valid = (n_tokens > 0) & np.isfinite(logprob)
        signals["token_nll_mean"] = _mean(-logprob[valid] / n_tokens[valid])
    if reference is not None:
        signals.update(_against_reference(groups, group_signals(reference, None, answer_config)))
    return signals


def _against_reference(groups: pd.DataFrame, base: pd.DataFrame) -> dict[str, float | int | None]:
    """The base's own answers re-scored under the new majority, and the new majority's support."""
    shared = groups.merge(base, on="prompt_id", suffixes=("", "_base"))
    shared = shared[shared["majority"].notna() & (shared["n_base"] > 0)]
    if shared.empty:
        return {
            "n_shared_prompts": 0,
            "base_reward_under_policy": None,
            "majority_off_base_support": None,
        }
    reward = [
        sum(a == majority for a in answers) / n
        for majority, answers, n in zip(
            shared["majority"], shared["answers_base"], shared["n_base"], strict=True
        )
    ]
    off = [
        majority not in set(answers)
        for majority, answers in zip(shared["majority"], shared["answers_base"], strict=True)
    ]
    return {
        "n_shared_prompts": len(shared),
        "base_reward_under_policy": float(np.mean(reward)),
        "majority_off_base_support": float(np.mean(off)),
    }
