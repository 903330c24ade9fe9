"""``majority_vote``: self-consistency as a reward (TTRL).

Each candidate's final answer is extracted (``taoflow.answers``; the task's extractor unless the
scorer entry gives its own ``answer:``) and normalised, so "1,000", "1000" and "1000.0" are one
vote. The most common answer of the prompt's group is the pseudo-label.

Explicit rules, because they decide what the policy learns:

* A candidate with no extractable answer never votes; it scores ``no_answer_value`` (default 0)
  and still counts in the group size, so a group of mostly unanswered candidates has low agreement.
* Ties for the top answer follow ``ties``: ``none`` (default) — no pseudo-label, every candidate
  scores ``no_majority_value``, the group carries no signal; ``all`` — every tied answer counts as
  the majority; ``first`` — the tied answer whose first vote comes earliest in candidate order wins
  (what ``Counter.most_common`` does in TTRL's reference code).
* ``min_agreement``: when the majority's share of the group is below it, the vote is too weak to
  trust and the group gets no pseudo-label either.
* ``agreement`` = (votes for the top answer) / (group size), recorded for every group, tie or not:
  the confidence signal that the evaluate stage and the reward-hacking guard watch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import extract_answer, normalize_answer
from taoflow.scoring.base import GroupScorer, ScoreResult

TIE_POLICIES = ("none", "all", "first")


@dataclass(frozen=True)
class Vote:
    """Outcome of one group's vote over normalised answers."""

    winners: frozenset[str]  # answers counted as the majority (empty: no pseudo-label)
    top_count: int  # votes for the most common answer
    n: int  # group size, unanswered candidates included
    n_answered: int
    tied: bool

    @property
    def agreement(self) -> float:
        return self.top_count / self.n if self.n else 0.0

    @property
    def majority(self) -> str | None:
        """The single pseudo-label, or None when there is none (or several, with ``ties: all``)."""
        return next(iter(self.winners)) if len(self.winners) == 1 else None


def vote(answers: Sequence[str | None], ties: str = "none", min_agreement: float = 0.0) -> Vote:
    """Majority vote over already-normalised answers (None = no answer) in candidate order."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"majority_vote: ties must be one of {TIE_POLICIES}, got {ties!r}")
    counts = Counter(a for a in answers if a is not None)
    n, n_answered = len(answers), sum(counts.values())
    if not counts:
        return Vote(frozenset(), 0, n, 0, tied=False)
    top_count = max(counts.values())
    top = [a for a in counts if counts[a] == top_count]  # Counter keeps first-seen order
    tied = len(top) > 1
    if tied and ties == "none":
        winners: frozenset[str] = frozenset()
    elif tied and ties == "first":
        winners = frozenset(top[:1])
    else:
        winners = frozenset(top)
    if n and top_count / n < min_agreement:
        winners = frozenset()
    return Vote(winners, top_count, n, n_answered, tied)


class MajorityVoteScorer(GroupScorer):
    """Reward ``agree_value`` for matching the group's majority answer, else ``disagree_value``."""

    def __init__(
        self,
        *,
        task: dict[str, Any] | None = None,
        answer: dict[str, Any] | None = None,
        ties: str = "none",
        min_agreement: float = 0.0,
        agree_value: float = 1.0,
        disagree_value: float = 0.0,
        no_answer_value: float = 0.0,
        no_majority_value: float = 0.0,
        name: str = "majority_vote",
    ):
        if ties not in TIE_POLICIES:
            raise ValueError(f"{name}: ties must be one of {TIE_POLICIES}, got {ties!r}")
        self.extractor = answer or (task or {}).get("answer") or {"kind": "last_number"}
        extract_answer("0", self.extractor)  # a misconfigured extractor fails now, not mid-run
        self.ties = ties
        self.min_agreement = float(min_agreement)
        self.values = (
            float(agree_value),
            float(disagree_value),
            float(no_answer_value),
            float(no_majority_value),
        )

    def score_group(self, group: pd.DataFrame) -> ScoreResult:
        agree, disagree, no_answer, no_majority = self.values
        answers = [
            normalize_answer(extract_answer(text, self.extractor)) for text in group["completion"]
        ]
        result = vote(answers, self.ties, self.min_agreement)
        if not result.winners:
            scores = [no_answer if a is None else no_majority for a in answers]
        else:
            scores = [
                no_answer if a is None else agree if a in result.winners else disagree
                for a in answers
            ]
        n = len(group)
        return ScoreResult(
            scores=scores,
            answers=answers,
            columns={
                "agreement": [result.agreement] * n,
                "majority_answer": [result.majority] * n,
                "tied": [result.tied] * n,
            },
        )

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        result = super().score(frame)
        groups = (
            pd.DataFrame(
                {
                    "prompt_id": frame["prompt_id"].to_numpy(),
                    "tied": result.columns.get("tied", [False] * len(frame)),
                    "has_majority": [
                        m is not None for m in result.columns.get("majority_answer", [None])
                    ],
                }
            )
            .groupby("prompt_id", sort=False)[["tied", "has_majority"]]
            .first()
        )
        answered = np.array([a is not None for a in (result.answers or [])], dtype=bool)
        result.metrics = {
            "tie_share": float(groups["tied"].mean()) if len(groups) else 0.0,
            "no_majority_share": float(1 - groups["has_majority"].mean()) if len(groups) else 0.0,
            "no_answer_share": float(1 - answered.mean()) if answered.size else 0.0,
        }
        result.metric_weights = {
            "tie_share": float(len(groups)),
            "no_majority_share": float(len(groups)),
            "no_answer_share": float(answered.size),
        }
        return result
