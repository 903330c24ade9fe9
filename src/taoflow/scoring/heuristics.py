"""Cheap rule-based scorers worth having in every config: ``format`` and ``length_penalty``.

They need no model and mostly guard against degenerate outputs that a consensus reward alone
can favour (rambling to the token cap, answering nothing).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import extract_answer
from taoflow.scoring.base import ScoreResult


def _truncated(frame: pd.DataFrame) -> np.ndarray:
    """True where generation stopped at the token cap (``finish_reason == "length"``)."""
    if "finish_reason" not in frame:
        return np.zeros(len(frame), dtype=bool)
    return (frame["finish_reason"].astype(str) == "length").to_numpy()


def _token_counts(frame: pd.DataFrame) -> np.ndarray:
    """Generated tokens per candidate; whitespace words when ``n_tokens`` is absent."""
    if "n_tokens" in frame and frame["n_tokens"].notna().all():
        return frame["n_tokens"].to_numpy(dtype=float)
    return np.array([len(str(t).split()) for t in frame["completion"]], dtype=float)


class FormatScorer:
    """Fraction of enabled format checks a candidate passes (in [0, 1]).

    Checks: ``require_answer`` — the task's extractor finds an answer; ``penalize_truncation`` —
    generation did not hit the token cap; ``pattern`` — a regex that must match somewhere;
    ``max_chars`` — the completion is at most this long.
    """

    def __init__(
        self,
        *,
        task: dict[str, Any] | None = None,
        answer: dict[str, Any] | None = None,
        require_answer: bool = True,
        penalize_truncation: bool = True,
        pattern: str | None = None,
        max_chars: int | None = None,
        name: str = "format",
    ):
        self.extractor = answer or (task or {}).get("answer") or {"kind": "last_number"}
        self.require_answer = require_answer
        self.penalize_truncation = penalize_truncation
        self.pattern = re.compile(pattern, flags=re.DOTALL) if pattern else None
        self.max_chars = max_chars
        if not (require_answer or penalize_truncation or pattern or max_chars):
            raise ValueError(f"{name}: every check is disabled; enable at least one")

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        texts = frame["completion"].astype(str).tolist()
        checks = []
        has_answer = np.array([extract_answer(t, self.extractor) is not None for t in texts])
        if self.require_answer:
            checks.append(has_answer)
        truncated = _truncated(frame)
        if self.penalize_truncation:
            checks.append(~truncated)
        if self.pattern is not None:
            checks.append(np.array([self.pattern.search(t) is not None for t in texts]))
        if self.max_chars is not None:
            checks.append(np.array([len(t) <= self.max_chars for t in texts]))
        scores = np.mean(np.vstack(checks).astype(float), axis=0)
        return ScoreResult(
            scores=scores,
            metrics={
                "has_answer_share": float(has_answer.mean()) if len(texts) else 0.0,
                "truncated_share": float(truncated.mean()) if len(texts) else 0.0,
            },
            metric_weights={"has_answer_share": len(texts), "truncated_share": len(texts)},
        )


class LengthPenaltyScorer:
    """0 up to ``target_tokens``, falling linearly to -1 at ``max_tokens``; a candidate that hit
    the token cap without an extractable answer scores ``truncated_no_answer_value`` (-1)."""

    def __init__(
        self,
        *,
        task: dict[str, Any] | None = None,
        answer: dict[str, Any] | None = None,
        target_tokens: int = 64,
        max_tokens: int = 256,
        truncated_no_answer_value: float = -1.0,
        name: str = "length_penalty",
    ):
        if max_tokens <= target_tokens:
            raise ValueError(f"{name}: max_tokens must exceed target_tokens")
        self.extractor = answer or (task or {}).get("answer") or {"kind": "last_number"}
        self.target, self.max = float(target_tokens), float(max_tokens)
        self.truncated_value = float(truncated_no_answer_value)

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        tokens = _token_counts(frame)
        scores = -np.clip((tokens - self.target) / (self.max - self.target), 0.0, 1.0)
        no_answer = np.array(
            [extract_answer(str(t), self.extractor) is None for t in frame["completion"]]
        )
        hit_cap = _truncated(frame) & no_answer
        scores = np.where(hit_cap, self.truncated_value, scores)
        return ScoreResult(scores=scores, metrics={"truncated_no_answer": float(hit_cap.sum())})
