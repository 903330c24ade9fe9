"""Nodes of the ``score`` pipeline: thin wrappers around :mod:`taoflow.scoring`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from taoflow.config.score import ScoreParams
from taoflow.core.tracking import mlflow_metrics
from taoflow.scoring.combine import REQUIRED_CANDIDATE_COLUMNS
from taoflow.scoring.shards import collect_scored
from taoflow.scoring.shards import plan_score_shards as plan_shards

logger = logging.getLogger(__name__)

REJECT_COLUMNS = ("prompt_id", "candidate_id", "location", "reason", "raw")


def split_scorable(
    candidates: pd.DataFrame, prompts: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates that can be scored, and the rest with the reason (nothing dropped silently).

    Unscorable: a null completion, a ``candidate_id`` seen before, a ``prompt_id`` that is not in
    ``prompts``. A frame lacking a required column is a broken contract, not a bad row: it raises.
    """
    missing = [c for c in REQUIRED_CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"candidates lack column(s) {missing} (the candidates contract); they have "
            f"{list(candidates.columns)}"
        )
    frame = candidates.reset_index(drop=True)
    reasons = pd.Series([None] * len(frame), dtype=object)
    known = set(prompts["prompt_id"])
    checks = [
        (~frame["prompt_id"].isin(known), "prompt_id not found in prompts"),
        (frame["candidate_id"].duplicated(keep="first"), "duplicate candidate_id"),
        (frame["completion"].isna(), "completion is null"),
    ]
    for mask, reason in checks:
        reasons[mask.to_numpy() & reasons.isna().to_numpy()] = reason
    bad = reasons.notna().to_numpy()
    rejects = pd.DataFrame(
        {
            "prompt_id": frame.loc[bad, "prompt_id"].astype(str).to_numpy(),
            "candidate_id": frame.loc[bad, "candidate_id"].astype(str).to_numpy(),
            "location": [f"candidates row {i}" for i in np.flatnonzero(bad)],
            "reason": reasons[bad].astype(str).to_numpy(),
            "raw": frame.loc[bad]
            .to_json(orient="records", lines=True, default_handler=str)
            .strip()
            .splitlines()
            if bad.any()
            else [],
        },
        columns=list(REJECT_COLUMNS),
    )
    if bad.any():
        logger.warning("score: %d unscorable candidates go to score_rejects", int(bad.sum()))
    return frame.loc[~bad].reset_index(drop=True), rejects


def round_of(frame: pd.DataFrame) -> int:
    """The round these candidates belong to (the metric step); 0 when the column is absent."""
    if "round" not in frame.columns or frame.empty:
        return 0
    rounds = sorted({int(r) for r in frame["round"].dropna()})
    if len(rounds) > 1:
        raise ValueError(f"candidates mix rounds {rounds}; score one round at a time")
    return rounds[0] if rounds else 0


def plan_score_shards(
    *,
    candidates: pd.DataFrame,
    prompts: pd.DataFrame,
    config: ScoreParams,
    task: Mapping[str, Any],
    credentials: dict[str, Any] | None,
    judgements: pd.DataFrame | None = None,
) -> dict[str, Callable[[], dict[str, Any]]]:
    """Scorable candidates → lazy content-keyed shards of ``score.shard_size`` prompt groups.

    ``judgements``: the judge stage's output (``judge_references`` or the round's
    ``judgements``) when ``judge.enabled``; handed to scorers as their ``references``.
    The shards are written one by one as they finish (``ResumablePartitionedDataset``); a rerun
    reuses those on disk (see :mod:`taoflow.scoring.shards`).

    ``task`` is not typed as ``TaskParams`` on purpose: Kedro replaces a typed parameter for
    every node of the run, and nodes of other stages still read ``params:task`` as a mapping.
    """
    if candidates.empty:
        raise ValueError("no scorable candidates: see score_rejects for why each was rejected")
    return plan_shards(
        candidates, prompts, config, task, credentials=credentials, references=judgements
    )


def score(
    *,
    score_shards: Mapping[str, Any],
    rejects: pd.DataFrame,
    config: ScoreParams,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Scored shards → scored candidates and their label-free metrics (step = the round).

    The frame and numbers :func:`taoflow.scoring.score_candidates` gives for all candidates at
    once: reward, advantage and the summary are computed on the shards put together.
    """
    scored, summary = collect_scored(score_shards, config)
    summary["rejected"] = float(len(rejects))
    return scored, mlflow_metrics(summary, prefix="score", step=round_of(scored))


def plot_rewards(scored: pd.DataFrame) -> Figure:
    """Reward distribution per generation strategy: does one strategy earn the reward?"""
    strategies = (
        scored["strategy"].fillna("unknown").astype(str)
        if "strategy" in scored.columns
        else pd.Series(["all"] * len(scored))
    )
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    rewards = scored["reward"].to_numpy(dtype=float)
    low, high = (rewards.min(), rewards.max()) if rewards.size else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 21)
    for name in sorted(strategies.unique()):
        values = rewards[(strategies == name).to_numpy()]
        axes.hist(values, bins=bins, alpha=0.6, label=f"{name} (n={values.size})")
    axes.set_xlabel("reward")
    axes.set_ylabel("candidates")
    axes.set_title("Reward distribution per strategy")
    axes.legend()
    figure.tight_layout()
    return figure
