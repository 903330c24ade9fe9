"""Scoring in content-keyed shards of prompt groups, so a killed score stage resumes.

Scorers judge whole groups (every candidate of a prompt together) and nothing across groups, so
the candidates split into shards of ``score.shard_size`` groups, each scored on its own, give
the same per-candidate columns as scoring them all at once. Reward, advantage and the summary
are computed once on the concatenated shards (:func:`collect_scored`), exactly as
:meth:`CandidateScorer.score` computes them.

A shard id is its position plus a hash of what decides it: the score config, the task, the
shard's candidates and prompts, the judge's references and the scoring code
(:func:`taoflow.core.ids.source_hash`). A shard already on disk with that id is reused
(``ResumablePartitionedDataset``); any change recomputes it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from taoflow.config.score import ScoreParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import frame_hash, source_hash, stable_hash
from taoflow.scoring.combine import (
    CandidateScorer,
    as_task_dict,
    combine_scored,
    merge_scorer_metrics,
    prepare_frame,
)

SCORING_CODE = ("taoflow.scoring", "taoflow.core.answers", "taoflow.core.text")
PROMPT_COLUMNS = ("messages", "prompt")

Shard = dict[str, Any]  # {"frame": scorer columns, "metrics": {...}, "weights": {...}}


class _LazyScorer:
    """Builds the configured scorers on the first shard that needs them; closes them after."""

    def __init__(self, config: ScoreParams, task: Any, credentials: Any, references: Any):
        self._args = (config, task, credentials, references)
        self._scorer: CandidateScorer | None = None
        self._finalizer: weakref.finalize | None = None

    def get(self) -> CandidateScorer:
        if self._scorer is None:
            self._scorer = CandidateScorer(*self._args)
            # shards skipped on resume never reach the last one: close when the plan is dropped
            self._finalizer = weakref.finalize(self, self._scorer.close)
        return self._scorer

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _shard_job(chunk: pd.DataFrame, scorer: _LazyScorer, last: bool) -> Callable[[], Shard]:
    def run() -> Shard:
        try:
            frame, metrics, weights = scorer.get().run_scorers(chunk)
        finally:
            if last:
                scorer.close()
        return {
            "frame": frame.drop(columns=list(PROMPT_COLUMNS)),
            "metrics": metrics,
            "weights": weights,
        }

    return run


def plan_score_shards(
    candidates: pd.DataFrame,
    prompts: pd.DataFrame,
    config: ScoreParams,
    task: TaskParams | Mapping[str, Any] | None,
    *,
    credentials: dict[str, Any] | None = None,
    references: pd.DataFrame | None = None,
) -> dict[str, Callable[[], Shard]]:
    """Candidates → ``{shard_id: compute}`` over ``config.shard_size`` prompt groups each.

    Groups keep :func:`prepare_frame`'s order (first appearance) and shard ids sort in that
    order, so the concatenated shards are the frame :meth:`CandidateScorer.score` would score.
    """
    frame = prepare_frame(candidates, prompts)
    group = frame.groupby("prompt_id", sort=False).ngroup().to_numpy()
    n_groups = int(group.max()) + 1 if len(group) else 0
    common = {
        "config": config.model_dump(mode="json"),
        "task": as_task_dict(task),
        "references": None if references is None else frame_hash(references),
        "code": source_hash(*SCORING_CODE),
    }
    scorer = _LazyScorer(config, task, credentials, references)
    starts = list(range(0, n_groups, config.shard_size))
    shards: dict[str, Callable[[], Shard]] = {}
    for index, start in enumerate(starts):
        rows = (group >= start) & (group < start + config.shard_size)
        chunk = frame.loc[rows].reset_index(drop=True)
        key = stable_hash({**common, "candidates": frame_hash(chunk)}, 12)
        shards[f"{index:05d}-{key}"] = _shard_job(chunk, scorer, last=index == len(starts) - 1)
    return shards


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Shards stacked; a column whose dtype differs between shards (e.g. all-None in one) is
    re-inferred from its values, as it would have been from one list over every candidate."""
    scored = pd.concat(frames, ignore_index=True)
    for column in scored.columns:
        if len({str(f[column].dtype) for f in frames}) > 1:
            scored[column] = list(scored[column])
    return scored


def collect_scored(
    shards: Mapping[str, Shard | Callable[[], Shard]], config: ScoreParams
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Scored shards (in id order) → the scored frame and summary of :func:`score_candidates`."""
    loaded = [shards[key] for key in sorted(shards)]
    loaded = [part() if callable(part) else part for part in loaded]
    if not loaded:
        raise ValueError("no scored shards to collect")
    frame = _concat([part["frame"] for part in loaded])
    metrics = merge_scorer_metrics([(part["metrics"], part["weights"]) for part in loaded])
    return combine_scored(frame, config, metrics)
