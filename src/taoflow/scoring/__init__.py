"""Label-free scoring: pluggable scorers and their combination into rewards.

Used by the ``score`` pipeline, by the train stage's GRPO reward functions and by the evaluate
stage's label-free metrics and best-of-N baseline — all through :func:`score_candidates` (or a
reusable :class:`CandidateScorer`).
"""

from taoflow.scoring.base import GroupScorer, Scorer, ScoreResult
from taoflow.scoring.combine import (
    CandidateScorer,
    group_advantage,
    prepare_frame,
    score_candidates,
    summarize_scored,
)
from taoflow.scoring.factory import BUILTIN_SCORERS, build_scorer, import_object
from taoflow.scoring.majority import Vote, vote

__all__ = [
    "BUILTIN_SCORERS",
    "CandidateScorer",
    "GroupScorer",
    "ScoreResult",
    "Scorer",
    "Vote",
    "build_scorer",
    "group_advantage",
    "import_object",
    "prepare_frame",
    "score_candidates",
    "summarize_scored",
    "vote",
]
