"""Run configured scorers on candidates and combine them into ``reward`` and ``advantage``.

``reward = Σ weight_i · score_i``; ``advantage`` is the reward relative to the other candidates
of the same prompt (mean-centred, optionally divided by the group's std as GRPO does), so the
train stage learns which answers are better *for that prompt*, not which prompts are easy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.base import validate_block
from taoflow.config.score import ScoreParams
from taoflow.config.shared import TaskParams
from taoflow.core.answers import extract_answer, normalize_answer
from taoflow.core.text import as_messages, last_user_message
from taoflow.scoring.base import ScoreResult
from taoflow.scoring.factory import build_scorer
from taoflow.scoring.majority import vote

logger = logging.getLogger(__name__)

REQUIRED_CANDIDATE_COLUMNS = ("prompt_id", "candidate_id", "completion")
REQUIRED_PROMPT_COLUMNS = ("prompt_id", "messages")
AGREEMENT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
AGREEMENT_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class ConfiguredScorer:
    name: str
    weight: float
    scorer: Any


def as_score_params(config: ScoreParams | Mapping[str, Any]) -> ScoreParams:
    """The ``score`` block as its model; a raw mapping (tests, notebooks) is validated first."""
    if isinstance(config, ScoreParams):
        return config
    if not (config or {}).get("scorers"):
        raise ValueError("score config has no 'scorers': configure at least one scorer")
    return validate_block("score", dict(config))


def as_task_dict(task: TaskParams | Mapping[str, Any] | None) -> dict[str, Any]:
    """``params:task`` as the mapping scorers read (``task["answer"]``): only the keys set."""
    if isinstance(task, TaskParams):
        return task.model_dump(exclude_unset=True)
    return dict(task or {})


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lack column(s) {missing}; they have {list(frame.columns)}")


def _rows(frame: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    ids = frame.loc[mask, "candidate_id"].astype(str).tolist()
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def prepare_frame(candidates: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Candidates joined with their prompt's ``messages`` and ``prompt`` text, groups contiguous.

    Rows keep their order within a group; groups come in order of first appearance, so input
    that is already grouped (as ``generate`` writes it) comes back in the same order.
    """
    _require_columns(candidates, REQUIRED_CANDIDATE_COLUMNS, "candidates")
    _require_columns(prompts, REQUIRED_PROMPT_COLUMNS, "prompts")
    bad = candidates["completion"].isna()
    if bad.any():
        raise ValueError(f"candidates have a null 'completion' in rows {_rows(candidates, bad)}")
    dup = candidates["candidate_id"].duplicated(keep="first")
    if dup.any():
        raise ValueError(f"candidates repeat 'candidate_id' in rows {_rows(candidates, dup)}")
    known = prompts.drop_duplicates("prompt_id").set_index("prompt_id")["messages"]
    unknown = ~candidates["prompt_id"].isin(known.index)
    if unknown.any():
        raise ValueError(
            f"candidates name a 'prompt_id' absent from prompts in rows {_rows(candidates, unknown)}"
        )
    frame = candidates.reset_index(drop=True)
    group_order = frame.groupby("prompt_id", sort=False).ngroup().to_numpy()
    frame = frame.iloc[np.argsort(group_order, kind="stable")].reset_index(drop=True)
    messages = {pid: as_messages(value) for pid, value in known.items()}
    frame["messages"] = [messages[pid] for pid in frame["prompt_id"]]
    frame["prompt"] = [
        last_user_message(m) or (m[-1]["content"] if m else "") for m in frame["messages"]
    ]
    frame["completion"] = frame["completion"].astype(str)
    return frame


def group_advantage(
    frame: pd.DataFrame, normalize_std: bool = True, eps: float = 1e-4, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """(advantage, zero_signal) per row from ``reward`` within ``prompt_id`` groups.

    The std is the sample std (ddof=1), as TRL's GRPO computes it, so the advantages here are the
    ones GRPO would use. Groups whose rewards are all equal (or of one candidate) carry no signal:
    their advantage is 0 and they are flagged.
    """
    grouped = frame.groupby("prompt_id", sort=False)["reward"]
    mean = grouped.transform("mean").to_numpy()
    spread = (grouped.transform("max") - grouped.transform("min")).to_numpy()
    zero_signal = spread <= tol
    advantage = frame["reward"].to_numpy() - mean
    if normalize_std:
        std = grouped.transform(lambda r: r.std(ddof=1)).fillna(0.0).to_numpy()
        scale = std + eps
        advantage = np.divide(
            advantage, scale, out=np.zeros_like(advantage), where=~zero_signal & (scale > 0)
        )
    return np.where(zero_signal, 0.0, advantage), zero_signal


class CandidateScorer:
    """Configured scorers, built once and reusable across calls.

    The train stage's reward function and the evaluate stage call ``score`` many times; building
    the scorers once keeps embedding / reward / judge models loaded between calls.
    """

    def __init__(
        self,
        config: ScoreParams | Mapping[str, Any],
        task: TaskParams | Mapping[str, Any] | None,
        credentials: dict[str, Any] | None = None,
        references: pd.DataFrame | None = None,
    ):
        self.config = as_score_params(config)
        self.task = as_task_dict(task)
        advantage = self.config.advantage
        self.normalize_std = advantage.normalize_std
        self.eps = advantage.eps
        self.zero_signal_tol = advantage.zero_signal_tol
        self.scorers = [
            ConfiguredScorer(
                name=entry.scorer_name,
                weight=entry.weight,
                scorer=build_scorer(entry.as_entry(), self.task, credentials, references),
            )
            for entry in self.config.scorers
        ]

    def close(self) -> None:
        """Release scorer resources (worker processes, HTTP clients)."""
        for item in self.scorers:
            close = getattr(item.scorer, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> CandidateScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_scorers(
        self, frame: pd.DataFrame
    ) -> tuple[pd.DataFrame, dict[str, float], dict[str, float]]:
        """Add ``score_<name>``, ``failed_<name>`` and ``<name>_<extra>`` columns; answers too.

        Returns the frame, the scorers' metrics (``<scorer>.<key>``) and the weights of those
        that are means (see :class:`ScoreResult`), so shards' metrics can be merged.
        """
        frame = frame.copy()
        scorer_metrics: dict[str, float] = {}
        weights: dict[str, float] = {}
        answers: list[str | None] | None = None
        agreement: Sequence[float] | None = None
        view = frame.copy()
        for item in self.scorers:
            raw = item.scorer.score(view)
            result = raw if isinstance(raw, ScoreResult) else ScoreResult(scores=raw)
            result = result.validate(len(frame), item.name)
            frame[f"score_{item.name}"] = result.scores
            frame[f"failed_{item.name}"] = result.failed
            for column, values in result.columns.items():
                frame[f"{item.name}_{column}"] = list(values)
            if answers is None and result.answers is not None:
                answers = [normalize_answer(a) for a in result.answers]
            if agreement is None and "agreement" in result.columns:
                agreement = [float(a) for a in result.columns["agreement"]]
            for key, value in result.metrics.items():
                scorer_metrics[f"{item.name}.{key}"] = float(value)
            for key, value in result.metric_weights.items():
                weights[f"{item.name}.{key}"] = float(value)
            if result.failed.any():
                logger.warning(
                    "scorer %s failed on %d of %d candidates (scored with its failure value)",
                    item.name,
                    int(result.failed.sum()),
                    len(frame),
                )
        if answers is None:  # no scorer extracts: the task's extractor still names the answer
            extractor = self.task.get("answer") or {"kind": "last_number"}
            answers = [normalize_answer(extract_answer(t, extractor)) for t in frame["completion"]]
        frame["answer"] = pd.Series(answers, dtype=object, index=frame.index)
        if agreement is None:
            agreement = np.zeros(len(frame))
            for _, index in frame.groupby("prompt_id", sort=False).indices.items():
                agreement[index] = vote([answers[i] for i in index]).agreement
        frame["agreement"] = np.asarray(agreement, dtype=float)
        return frame, scorer_metrics, weights

    def score(
        self, candidates: pd.DataFrame, prompts: pd.DataFrame
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        """Score, combine, normalise and summarise (see :func:`score_candidates`)."""
        frame = prepare_frame(candidates, prompts)
        frame, scorer_metrics, _ = self.run_scorers(frame)
        return combine_scored(
            frame.drop(columns=["messages", "prompt"]), self.config, scorer_metrics
        )


def combine_scored(
    frame: pd.DataFrame, config: ScoreParams, scorer_metrics: dict[str, float]
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Scorer columns → ``reward`` (Σ weight·score), group ``advantage``, ``zero_signal``, summary.

    The last step of :meth:`CandidateScorer.score`, apart so the score stage can run it once on
    its concatenated shards.
    """
    scored = frame.copy()
    reward = np.zeros(len(scored))
    for entry in config.scorers:
        reward += entry.weight * scored[f"score_{entry.scorer_name}"].to_numpy()
    scored["reward"] = reward
    advantage = config.advantage
    scored["advantage"], scored["zero_signal"] = group_advantage(
        scored, advantage.normalize_std, advantage.eps, advantage.zero_signal_tol
    )
    summary = summarize_scored(scored, [entry.scorer_name for entry in config.scorers])
    summary.update(scorer_metrics)
    return scored, summary


def merge_scorer_metrics(
    parts: Sequence[tuple[dict[str, float], dict[str, float]]],
) -> dict[str, float]:
    """Shards' (metrics, weights) → one set: weighted means where weighted, sums elsewhere."""
    seen: dict[str, list[tuple[float, float | None]]] = {}
    for metrics, weights in parts:
        for key, value in metrics.items():
            seen.setdefault(key, []).append((float(value), weights.get(key)))
    merged: dict[str, float] = {}
    for key, values in seen.items():
        if len(values) == 1:  # one shard: its number as it is
            merged[key] = values[0][0]
        elif all(weight is not None for _, weight in values):
            mass = sum(weight for _, weight in values)
            merged[key] = sum(v * w for v, w in values) / mass if mass else 0.0
        else:
            merged[key] = sum(v for v, _ in values)
    return merged


def summarize_scored(scored: pd.DataFrame, scorer_names: Sequence[str]) -> dict[str, float]:
    """Label-free summary of a scored frame: what MLflow shows per round."""
    groups = scored.groupby("prompt_id", sort=False)
    per_group_agreement = groups["agreement"].first().to_numpy(dtype=float)
    summary: dict[str, float] = {
        "n_candidates": float(len(scored)),
        "n_groups": float(groups.ngroups),
        "reward_mean": float(scored["reward"].mean()) if len(scored) else 0.0,
        "reward_std": float(scored["reward"].std(ddof=0)) if len(scored) else 0.0,
        "zero_signal_share": float(groups["zero_signal"].first().mean()) if len(scored) else 0.0,
        "answer_rate": float(scored["answer"].notna().mean()) if len(scored) else 0.0,
        "agreement_mean": float(per_group_agreement.mean()) if per_group_agreement.size else 0.0,
    }
    if per_group_agreement.size:
        for q in AGREEMENT_QUANTILES:
            summary[f"agreement_p{round(q * 100):02d}"] = float(np.quantile(per_group_agreement, q))
        counts, edges = np.histogram(per_group_agreement, bins=AGREEMENT_BINS)
        for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
            summary[f"agreement_hist.{low:.1f}-{high:.1f}"] = float(
                count / per_group_agreement.size
            )
    for name in scorer_names:
        values = scored[f"score_{name}"]
        failed = scored.get(f"failed_{name}")
        summary[f"{name}.mean"] = float(values.mean()) if len(values) else 0.0
        summary[f"{name}.std"] = float(values.std(ddof=0)) if len(values) else 0.0
        summary[f"{name}.failures"] = float(failed.sum()) if failed is not None else 0.0
    return summary


def score_candidates(
    candidates: pd.DataFrame,
    prompts: pd.DataFrame,
    config: ScoreParams | Mapping[str, Any],
    task: TaskParams | Mapping[str, Any] | None,
    credentials: dict[str, Any] | None = None,
    *,
    references: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Score candidates without labels: the one entry point every stage uses.

    ``candidates`` (contract in docs/architecture.md; at least ``prompt_id``, ``candidate_id``, ``completion``;
    optionally ``finish_reason``, ``n_tokens``, ``strategy``, ...) and ``prompts`` (``prompt_id``,
    ``messages``) → (scored frame, summary stats). The frame gains ``score_<name>`` and
    ``failed_<name>`` per configured scorer (plus scorer extras such as
    ``majority_vote_agreement``), ``reward`` = Σ weight·score, ``advantage`` (group-normalised),
    ``answer`` (normalised; from the first scorer that extracts one, else the task's extractor),
    ``agreement`` (share of the group giving its most common answer) and ``zero_signal`` (the
    group's rewards are all equal). Groups come out contiguous (see :func:`prepare_frame`).

    ``config`` is the ``score`` parameters block, ``task`` is ``params:task`` (its ``answer``
    extractor is every scorer's default), ``credentials`` holds API keys for remote judges,
    ``references`` the judge stage's output for the ``judge`` scorer (``judge_references`` or a
    round's ``judgements``). Callers that score repeatedly should build a
    :class:`CandidateScorer` once instead.
    """
    with CandidateScorer(config, task, credentials, references) as scorer:
        return scorer.score(candidates, prompts)
