"""The scorer interface: what every scorer (built-in or user-supplied) implements.

A scorer judges candidates without labels. It receives *whole groups* — every candidate of each
prompt it sees, together — so group-relative judges (majority vote, consensus) work, and returns
one float per candidate in the same order, optionally with the answer it extracted.

A user scorer is any class with a ``score(frame) -> ScoreResult | Sequence[float]`` method; it is
named in YAML by its Python path (``my_pkg.my_module:MyScorer``) and built with the YAML entry's
extra keys as keyword arguments (plus ``name``, ``task`` and ``credentials`` when its constructor
accepts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

# Columns a scorer may rely on in the frame it is given (see ``Scorer.score``).
FRAME_COLUMNS = ("prompt_id", "candidate_id", "completion", "messages", "prompt")


@dataclass
class ScoreResult:
    """One scorer's verdict on a frame of candidates (all sequences in the frame's row order).

    ``failed`` marks candidates the scorer could not judge (timeout, crash, unparseable judge
    reply); they carry the scorer's failure value in ``scores`` and are counted in MLflow.
    ``columns`` are extra per-candidate outputs (e.g. ``agreement``); ``metrics`` are
    scorer-level numbers for MLflow. The score stage scores in shards of prompt groups and
    merges their metrics: a metric named in ``metric_weights`` is a mean over that many units
    (candidates, groups, judged rows) and merges as a weighted mean; any other is a count and
    merges as a sum.
    """

    scores: Sequence[float]
    answers: Sequence[str | None] | None = None
    failed: Sequence[bool] | None = None
    columns: dict[str, Sequence[Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    metric_weights: dict[str, float] = field(default_factory=dict)

    def validate(self, n_rows: int, name: str) -> ScoreResult:
        """Check lengths and types so a broken plugin fails with its own name in the message."""
        scores = np.asarray(self.scores, dtype=float)
        if scores.shape != (n_rows,):
            raise ValueError(
                f"scorer {name!r} returned {scores.size} scores for {n_rows} candidates"
            )
        if np.isnan(scores).any():
            raise ValueError(
                f"scorer {name!r} returned NaN scores; mark unjudgeable candidates as failed "
                "and give them a failure value instead"
            )
        failed = np.zeros(n_rows, dtype=bool) if self.failed is None else np.asarray(self.failed)
        if failed.shape != (n_rows,):
            raise ValueError(f"scorer {name!r} returned {failed.size} failure flags for {n_rows}")
        if self.answers is not None and len(self.answers) != n_rows:
            raise ValueError(f"scorer {name!r} returned {len(self.answers)} answers for {n_rows}")
        for column, values in self.columns.items():
            if len(values) != n_rows:
                raise ValueError(
                    f"scorer {name!r} column {column!r} has {len(values)} values for {n_rows}"
                )
        return ScoreResult(
            scores=scores,
            answers=None if self.answers is None else list(self.answers),
            failed=failed.astype(bool),
            columns=dict(self.columns),
            metrics=dict(self.metrics),
            metric_weights=dict(self.metric_weights),
        )


@runtime_checkable
class Scorer(Protocol):
    """Anything with ``score``. ``frame`` holds complete groups with at least ``FRAME_COLUMNS``
    (``messages``: the prompt's chat messages; ``prompt``: its last user message) plus whatever
    candidate columns exist (``finish_reason``, ``n_tokens``, ``strategy``, ...)."""

    def score(self, frame: pd.DataFrame) -> ScoreResult | Sequence[float]: ...


class GroupScorer:
    """Convenience base: implement ``score_group`` for one prompt's candidates at a time."""

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        n = len(frame)
        scores = np.zeros(n)
        answers: list[str | None] = [None] * n
        failed = np.zeros(n, dtype=bool)
        columns: dict[str, list[Any]] = {}
        any_answers = False
        positions = np.arange(n)
        for _, index in frame.groupby("prompt_id", sort=False).indices.items():
            group = frame.iloc[index]
            result = self.score_group(group)
            if not isinstance(result, ScoreResult):
                result = ScoreResult(scores=result)
            result = result.validate(len(group), type(self).__name__)
            rows = positions[index]
            scores[rows] = result.scores
            failed[rows] = result.failed
            if result.answers is not None:
                any_answers = True
                for row, answer in zip(rows, result.answers, strict=True):
                    answers[row] = answer
            for column, values in result.columns.items():
                target = columns.setdefault(column, [None] * n)
                for row, value in zip(rows, values, strict=True):
                    target[row] = value
        return ScoreResult(
            scores=scores,
            answers=answers if any_answers else None,
            failed=failed,
            columns=columns,
        )

    def score_group(self, group: pd.DataFrame) -> ScoreResult | Sequence[float]:
        raise NotImplementedError
