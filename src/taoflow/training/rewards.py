"""GRPO's reward: the score stage's own scorers, so online and offline training judge alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from taoflow.config.shared import TaskParams

ScoreFn = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, Any]]


def make_grpo_reward(
    score_fn: ScoreFn, prompts: pd.DataFrame, round_: int, max_completion_length: int
) -> Callable[..., list[float]]:
    """Wrap the scoring stage as a GRPO reward: same scorers, same combination, same judgement.

    ``score_fn(candidates, prompts) -> (scored, stats)`` is the scoring stage's
    ``CandidateScorer(score_config, task).score`` (see :func:`scoring_reward_fn`). GRPO hands over
    each prompt's completions as one consecutive block; they become a candidates frame (the
    generate stage's columns) scored together, so group-level scorers such as the majority vote
    work.
    """
    prompt_frame = prompts[["prompt_id", "messages"]].copy()
    calls = {"n": 0}

    def taoflow_score(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **kwargs: Any
    ) -> list[float]:
        calls["n"] += 1
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        candidates = pd.DataFrame(
            {
                "prompt_id": [str(p) for p in kwargs["prompt_id"]],
                "candidate_id": [f"grpo-{calls['n']}-{i}" for i in range(len(texts))],
                "round": round_,
                "strategy": "grpo",
                "temperature": float("nan"),
                "seed": -1,
                "completion": texts,
                "n_tokens": [len(ids) for ids in completion_ids],
                "finish_reason": [
                    "length" if len(ids) >= max_completion_length else "stop"
                    for ids in completion_ids
                ],
                "logprob": float("nan"),
            }
        )
        scored, _ = score_fn(candidates, prompt_frame)
        rewards = scored.set_index("candidate_id")["reward"].reindex(candidates["candidate_id"])
        return [float(r) if pd.notna(r) else 0.0 for r in rewards]

    return taoflow_score


def scoring_reward_fn(score_config: Any, task: TaskParams | Any) -> Any:
    """The scoring stage's scorers, built once (models stay loaded across GRPO steps).

    ``score_config`` is ``params:score`` as the node received it (passed on as it is).
    Returns a ``CandidateScorer``: call ``.score`` as the ``score_fn``, ``.close()`` after.
    """
    try:
        from taoflow.scoring import CandidateScorer
    except ImportError as exc:
        raise ImportError(
            "train.algorithm=grpo scores its completions with the score stage's "
            "taoflow.scoring.CandidateScorer, which could not be imported."
        ) from exc
    return CandidateScorer(score_config, task)
