"""User feedback as a partial reward: the ``feedback`` scorer.

Closing the loop: ``taoflow serve`` records each answer as an MLflow trace and users rate some of
them (``POST /v1/feedback``); ingest's traces source turns the traces into prompts whose ``meta``
JSON carries ``{"trace_id", "served_response", "model_version", "feedback": [{"name", "value",
"source", "rationale"}]}``.

:class:`FeedbackScorer` (score config ``type: taoflow.scoring.feedback:FeedbackScorer``) gives
candidates that *are* the served response (normalised text, or the same final answer with
``match: answer``) the user's score, and every other candidate ``neutral``. A candidate row with
``strategy="served"`` and a ``feedback_score`` carries the user's score itself.

Why a neutral value instead of NaN: the score stage requires finite scores, and a value that is
the same for every unmatched candidate shifts their rewards equally, so group-normalised
advantages only move where feedback exists. ``neutral: 0.5`` (the middle of the [0, 1] feedback
scale) makes a thumbs-up worth +0.5·weight relative to unrated siblings and a thumbs-down
−0.5·weight; a prompt without feedback gets a constant column, i.e. no signal from this scorer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import answers_match, extract_answer
from taoflow.core.text import normalize_text
from taoflow.scoring.base import GroupScorer, ScoreResult

FEEDBACK_NAME = "user_feedback"
SERVED_STRATEGY = "served"


def parse_meta(meta: Any) -> dict[str, Any]:
    """A prompt's ``meta`` as a dict whatever storage gave back (JSON string, dict, None)."""
    if meta is None or (isinstance(meta, float) and math.isnan(meta)):
        return {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError:
            return {}
    return dict(meta) if isinstance(meta, dict) else {}


def feedback_value(
    feedback: Sequence[dict[str, Any]] | None, name: str = FEEDBACK_NAME
) -> float | None:
    """Mean of the numeric ``name`` feedback values (several users may rate one answer)."""
    values = []
    for item in feedback or []:
        if not isinstance(item, dict) or item.get("name") != name:
            continue
        value = item.get("value")
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values.append(float(value))
    return float(np.mean(values)) if values else None


def served_feedback(meta: Any, name: str = FEEDBACK_NAME) -> tuple[str | None, float | None]:
    """``(served_response, user score)`` from a prompt's meta; None where absent."""
    data = parse_meta(meta)
    served = data.get("served_response")
    return (served if isinstance(served, str) else None), feedback_value(data.get("feedback"), name)


def normalize_completion(text: str) -> str:
    """Comparison key for "the same answer text": ingest's normalisation, case-folded."""
    return normalize_text(str(text)).casefold()


class FeedbackScorer(GroupScorer):
    """Candidates equal to the served response get the user's score; the rest ``neutral``.

    The served response and its score come from a ``meta`` column when the frame carries the
    prompts' meta, else from this group's ``strategy == "served"`` rows and their
    ``feedback_score``. ``match``: ``text``
    (normalised, case-folded text equality) or ``answer`` (same final answer under the task's
    extractor — a thumbs-down then also marks every candidate repeating the wrong answer).
    Extra column ``matched``; metrics: groups with feedback, matched candidates.
    """

    def __init__(
        self,
        *,
        neutral: float = 0.5,
        match: str = "text",
        feedback_name: str = FEEDBACK_NAME,
        task: dict[str, Any] | None = None,
        name: str = "feedback",
    ):
        if match not in ("text", "answer"):
            raise ValueError(f"{name}: match must be 'text' or 'answer', got {match!r}")
        if not math.isfinite(float(neutral)):
            raise ValueError(f"{name}: neutral must be a finite number")
        self.neutral = float(neutral)
        self.match = match
        self.feedback_name = feedback_name
        self.extractor = (task or {}).get("answer") or {"kind": "last_number"}
        self.name = name
        self._groups_with_feedback = 0
        self._matched = 0

    def _served(self, group: pd.DataFrame) -> tuple[str | None, float | None]:
        if "meta" in group.columns:
            served, value = served_feedback(group["meta"].iloc[0], self.feedback_name)
            if served is not None and value is not None:
                return served, value
        if {"strategy", "feedback_score"} <= set(group.columns):
            rows = group[(group["strategy"] == SERVED_STRATEGY) & group["feedback_score"].notna()]
            if len(rows):
                return str(rows["completion"].iloc[0]), float(rows["feedback_score"].iloc[0])
        return None, None

    def _matches(self, completions: Sequence[str], served: str) -> list[bool]:
        if self.match == "text":
            key = normalize_completion(served)
            return [normalize_completion(c) == key for c in completions]
        reference = extract_answer(served, self.extractor)
        return [answers_match(extract_answer(c, self.extractor), reference) for c in completions]

    def score_group(self, group: pd.DataFrame) -> ScoreResult:
        served, value = self._served(group)
        completions = group["completion"].astype(str).tolist()
        if served is None or value is None:
            matched = [False] * len(group)
        else:
            self._groups_with_feedback += 1
            matched = self._matches(completions, served)
            self._matched += sum(matched)
        scores = [value if m else self.neutral for m in matched]
        return ScoreResult(scores=scores, columns={"matched": matched})

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        self._groups_with_feedback = self._matched = 0
        result = super().score(frame)
        result.metrics = {
            "groups_with_feedback": float(self._groups_with_feedback),
            "matched": float(self._matched),
        }
        return result
