"""How much wrong or missing feedback the reward model can take: noise and coverage, replayed.

A loop-level sweep reruns every cycle per value (hours each on a CPU). The signal the feedback
reward model learns from can be measured on the answers a simulation really served, for any
noise and coverage, in seconds: the users' draws are replayed with the other rates, the pipeline's
own :func:`feedback_preference_pairs` turns the thumbs into pairs, and the checker's verdicts say
which pairs point the right way.

* :func:`replay_feedback` — a simulation's traffic with the thumbs users would have given under
  another ``feedback`` block. The draws are :func:`taoflow.simulate.users.plan_day`'s own (each
  request's draws do not depend on the rates), matched to the served requests by their seed, so
  the simulation's own rates give back exactly the thumbs it sent, and a higher noise flips a
  superset of the thumbs a lower one flips.
* :func:`pair_quality` — the pairs feedback gives and how many of them prefer a right answer to a
  wrong one (``right``), a wrong one to a right one (``reversed``), or neither (``equal``: both
  right or both wrong, which teaches the reward model nothing about correctness).
* :func:`true_pairs` — every (right, wrong) pair of answers to one prompt: the yardstick a reward
  model trained on replayed feedback is scored on (pair accuracy, held-out cycle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from taoflow.config.reward_model import RewardModelParams
from taoflow.config.simulate import SimulateParams
from taoflow.pipelines.reward_model.nodes import (
    PAIR_COLUMNS,
    feedback_preference_pairs,
    preference_pair,
)
from taoflow.scoring.feedback import FEEDBACK_NAME, normalize_completion
from taoflow.simulate.pool import Problem
from taoflow.simulate.users import plan_day


def with_feedback(params: SimulateParams, noise: float, coverage: float) -> SimulateParams:
    """``params`` with another noise and coverage (the rest of the block, and its draws, kept)."""
    feedback = params.feedback.model_copy(update={"noise": noise, "coverage": coverage})
    return params.model_copy(update={"feedback": feedback})


def replay_feedback(traffic: pd.DataFrame, params: SimulateParams) -> pd.DataFrame:
    """``traffic`` (a simulation's served requests) with ``thumbs`` redrawn under ``params``.

    Needs the columns the simulator keeps (``cycle``, ``seed``, ``correct``); raises when a
    served request is not in the replayed plan (another seed, cycle count or day size).
    """
    slots = params.cycles * params.prompts_per_cycle
    placeholders = [Problem(f"slot-{i}", "", "") for i in range(slots)]
    draws = {
        (r.cycle, r.seed): (r.rates, r.flips)
        for cycle in sorted(traffic["cycle"].unique())
        for r in plan_day(placeholders, params, int(cycle))
    }
    keys = list(zip(traffic["cycle"].astype(int), traffic["seed"].astype(int), strict=True))
    missing = [k for k in keys if k not in draws]
    if missing:
        raise ValueError(
            f"replay: {len(missing)} served request(s) not in the plan of simulate.seed="
            f"{params.seed} (cycle, seed {missing[0]}); replay with the simulation's own block"
        )
    out = traffic.copy()
    rates = [draws[k][0] for k in keys]
    flips = [draws[k][1] for k in keys]
    out["thumbs"] = [
        ("up" if bool(correct) != flip else "down") if rated else None
        for correct, rated, flip in zip(out["correct"], rates, flips, strict=True)
    ]
    return out


def trace_requests(traffic: pd.DataFrame, system_prompt: str | None) -> dict[str, Any]:
    """The traffic as ingest's ``ingest_trace_requests`` partitions (one), for the pair node."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = []
    for rec in traffic.to_dict(orient="records"):
        thumbs = rec.get("thumbs")
        value = {"up": 1.0, "down": 0.0}.get(thumbs) if isinstance(thumbs, str) else None
        feedback = [] if value is None else [{"name": FEEDBACK_NAME, "value": value}]
        messages = [*system, {"role": "user", "content": str(rec["question"])}]
        rows.append(
            {
                "trace_id": str(rec.get("trace_id")),
                "request": json.dumps({"messages": messages}),
                "response": json.dumps({"choices": [{"message": {"content": rec["answer"]}}]}),
                "feedback": json.dumps(feedback),
            }
        )
    frame = pd.DataFrame(rows)
    return {"replayed": lambda: frame}


def _verdicts(traffic: pd.DataFrame) -> dict[tuple[str, str], bool]:
    """(question, normalised answer) → the checker's verdict."""
    return {
        (str(q), normalize_completion(a)): bool(c)
        for q, a, c in zip(traffic["question"], traffic["answer"], traffic["correct"], strict=True)
    }


def _question(messages: str) -> str:
    return str(json.loads(messages)[-1]["content"])


def label_pairs(pairs: pd.DataFrame, traffic: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` with ``truth``: right (chosen right, rejected wrong), reversed, or equal."""
    verdict = _verdicts(traffic)
    truth = []
    for messages, chosen, rejected in zip(
        pairs["messages"], pairs["chosen"], pairs["rejected"], strict=True
    ):
        q = _question(messages)
        a, b = (
            verdict[(q, normalize_completion(chosen))],
            verdict[(q, normalize_completion(rejected))],
        )
        truth.append("right" if a and not b else "reversed" if b and not a else "equal")
    return pairs.assign(truth=truth)


def feedback_pairs(
    traffic: pd.DataFrame, reward_model: RewardModelParams, system_prompt: str | None
) -> pd.DataFrame:
    """The pipeline's feedback pairs for ``traffic``'s thumbs, each labelled by the checker."""
    pairs = feedback_preference_pairs(trace_requests(traffic, system_prompt), reward_model)
    return label_pairs(pairs, traffic)


def pair_quality(pairs: pd.DataFrame) -> dict[str, float]:
    """Counts of right / reversed / equal pairs and the share that teaches "right beats wrong"."""
    counts = pairs["truth"].value_counts() if len(pairs) else pd.Series(dtype=int)
    right, rev, equal = (int(counts.get(k, 0)) for k in ("right", "reversed", "equal"))
    n = right + rev + equal
    return {
        "pairs": n,
        "right": right,
        "reversed": rev,
        "equal": equal,
        "right_share": right / n if n else float("nan"),
    }


def true_pairs(traffic: pd.DataFrame, system_prompt: str | None) -> pd.DataFrame:
    """Every (right answer, wrong answer) pair of one prompt, distinct texts: the yardstick."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = []
    for question, group in traffic.groupby("question", sort=True):
        texts: dict[str, tuple[str, bool]] = {}
        for answer, correct in zip(group["answer"], group["correct"], strict=True):
            texts.setdefault(normalize_completion(answer), (str(answer), bool(correct)))
        right = sorted(t for t, c in texts.values() if c)
        wrong = sorted(t for t, c in texts.values() if not c)
        messages = [*system, {"role": "user", "content": str(question)}]
        rows += [
            preference_pair(
                messages, chosen=r, rejected=w, margin=1.0, source="checker", location=question
            )
            for r in right
            for w in wrong
        ]
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return frame.assign(split="eval", truth="right")


def sweep_grid(
    traffic: pd.DataFrame,
    params: SimulateParams,
    reward_model: RewardModelParams,
    system_prompt: str | None,
    *,
    noises: Sequence[float],
    coverages: Sequence[float],
) -> pd.DataFrame:
    """:func:`pair_quality` of the replayed feedback for every (noise, coverage)."""
    rows = []
    for noise in noises:
        for coverage in coverages:
            replayed = replay_feedback(traffic, with_feedback(params, noise, coverage))
            pairs = feedback_pairs(replayed, reward_model, system_prompt)
            rated = replayed["thumbs"].notna()
            rows.append(
                {
                    "noise": noise,
                    "coverage": coverage,
                    "feedback_events": int(rated.sum()),
                    "up": int((replayed["thumbs"] == "up").sum()),
                    "up_right": int(((replayed["thumbs"] == "up") & replayed["correct"]).sum()),
                    **pair_quality(pairs),
                }
            )
    return pd.DataFrame(rows)


def reward_model_accuracy(
    pairs: pd.DataFrame,
    yardstick: pd.DataFrame,
    reward_model: RewardModelParams,
    seed: int = 0,
) -> dict[str, float]:
    """Train the ``reward_model`` stage's model on ``pairs`` (all of them: the yardstick is held
    out already) and score it on ``yardstick``'s true pairs: per prompt, the share of its pairs
    where the right answer outscores the wrong one; the mean over prompts with a bootstrap CI
    over prompts (pairs of one prompt are not independent)."""
    import numpy as np

    from taoflow.core.stats import bootstrap_ci
    from taoflow.core.text import as_messages
    from taoflow.pipelines.reward_model.nodes import reward_scores, train_reward_model

    if len(pairs) < reward_model.min_pairs or yardstick.empty:
        return {"rm_trained": 0.0}
    model, metrics = train_reward_model(pairs.assign(split="train"), reward_model, seed)

    def scores(which: str) -> np.ndarray:
        chats = [
            [*as_messages(m), {"role": "assistant", "content": str(text)}]
            for m, text in zip(yardstick["messages"], yardstick[which], strict=True)
        ]
        return reward_scores(model.model, model.tokenizer, chats)

    won = pd.Series(scores("chosen") > scores("rejected"), index=yardstick.index, dtype=float)
    per_prompt = won.groupby(yardstick["prompt_key"]).mean()
    estimate = bootstrap_ci(per_prompt.to_numpy(), seed=seed)
    return {
        "rm_trained": 1.0,
        "rm_train_loss": float(metrics.get("reward_model.train_loss", {}).get("value", np.nan)),
        "rm_truth_accuracy": estimate.value,
        "rm_truth_ci_low": estimate.ci_low,
        "rm_truth_ci_high": estimate.ci_high,
        "rm_truth_pairs": float(len(yardstick)),
        "rm_truth_prompts": float(estimate.n),
    }
