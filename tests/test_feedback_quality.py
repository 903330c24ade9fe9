"""Feedback quality replayed: the users' own draws, the stage's own pairs, the checker's labels."""

from __future__ import annotations

import pandas as pd
import pytest

from taoflow.config.reward_model import RewardModelParams
from taoflow.config.simulate import SimulateParams
from taoflow.simulate import feedback_quality as fq
from taoflow.simulate.pool import Problem
from taoflow.simulate.users import plan_day
from tests.test_reward_model import tiny_encoder  # noqa: F401 - fixture

SYSTEM = "Answer with the final number only."


def _params(noise: float, coverage: float) -> SimulateParams:
    return SimulateParams.model_validate(
        {"cycles": 2, "prompts_per_cycle": 6, "samples_per_prompt": 4, "seed": 7}
        | {"feedback": {"noise": noise, "coverage": coverage}}
    )


def _traffic(params: SimulateParams) -> pd.DataFrame:
    """Served traffic as the simulator keeps it: sample 0 of each problem is right, the rest
    wrong, and the thumbs are the ones the plan's users gave."""
    pool = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)) for i in range(12)]
    rows = []
    for cycle in (1, 2):
        for r in plan_day(pool, params, cycle):
            right = r.sample == 0
            answer = r.problem.answer if right else f"{int(r.problem.answer) + 1 + r.sample}"
            thumbs = ("up" if right != r.flips else "down") if r.rates else None
            rows.append(
                {
                    "cycle": cycle,
                    "question": r.problem.question,
                    "sample": r.sample,
                    "seed": r.seed,
                    "trace_id": f"tr-{cycle}-{r.seed}",
                    "answer": answer,
                    "correct": right,
                    "thumbs": thumbs,
                }
            )
    return pd.DataFrame(rows)


def test_replay_with_the_simulations_own_rates_gives_back_its_thumbs():
    params = _params(noise=0.3, coverage=0.6)
    traffic = _traffic(params)
    replayed = fq.replay_feedback(traffic.assign(thumbs=None), params)
    assert replayed["thumbs"].fillna("-").tolist() == traffic["thumbs"].fillna("-").tolist()


def test_more_noise_flips_a_superset_and_more_coverage_rates_a_superset():
    traffic = _traffic(_params(0.0, 1.0))
    low, high = (fq.replay_feedback(traffic, _params(n, 1.0)) for n in (0.1, 0.5))
    wrong = [(t == "up") != c for t, c in zip(low["thumbs"], low["correct"], strict=True)]
    wrong_high = [(t == "up") != c for t, c in zip(high["thumbs"], high["correct"], strict=True)]
    assert all(h for w, h in zip(wrong, wrong_high, strict=True) if w)
    assert sum(wrong_high) > sum(wrong)
    few, many = (fq.replay_feedback(traffic, _params(0.1, c))["thumbs"] for c in (0.2, 0.8))
    assert set(few.dropna().index) <= set(many.dropna().index)
    assert (
        fq.replay_feedback(traffic, _params(0.0, 1.0))["thumbs"]
        .map({"up": True})
        .fillna(False)
        .tolist()
        == traffic["correct"].tolist()
    )


def test_replay_refuses_traffic_from_another_plan():
    traffic = _traffic(_params(0.1, 0.5))
    other = _params(0.1, 0.5).model_copy(update={"seed": 8})
    with pytest.raises(ValueError, match="not in the plan of simulate.seed=8"):
        fq.replay_feedback(traffic, other)


def test_pairs_are_labelled_by_the_checker():
    traffic = pd.DataFrame(
        {
            "question": ["What is 3 + 1?"] * 3 + ["What is 5 + 1?"] * 2,
            "answer": ["4", "5", "6", "7", "8"],
            "correct": [True, False, False, False, False],
            "thumbs": ["up", "down", "up", "up", "down"],
            "trace_id": ["a", "b", "c", "d", "e"],
        }
    )
    pairs = fq.feedback_pairs(traffic, RewardModelParams(), SYSTEM)
    got = sorted(zip(pairs["chosen"], pairs["rejected"], pairs["truth"], strict=True))
    assert got == [("4", "5", "right"), ("6", "5", "equal"), ("7", "8", "equal")]
    quality = fq.pair_quality(pairs)
    assert quality == {"pairs": 3, "right": 1, "reversed": 0, "equal": 2, "right_share": 1 / 3}
    truth = fq.true_pairs(traffic, SYSTEM)
    assert sorted(zip(truth["chosen"], truth["rejected"], strict=True)) == [("4", "5"), ("4", "6")]


def test_sweep_grid_counts_every_point():
    params = _params(0.1, 0.3)
    grid = fq.sweep_grid(
        _traffic(params), params, RewardModelParams(), SYSTEM, noises=[0.0, 0.5], coverages=[1.0]
    )
    clean, noisy = grid.to_dict(orient="records")
    assert clean["feedback_events"] == noisy["feedback_events"] == 48
    assert clean["right_share"] == 1.0 and clean["up"] == clean["up_right"] == 12
    assert noisy["right_share"] < 1.0


def test_reward_model_is_scored_on_the_held_out_days_true_pairs(tiny_encoder):  # noqa: F811
    params = _params(0.0, 1.0)
    traffic = _traffic(params)
    rm = RewardModelParams.model_validate(
        {"base_model": str(tiny_encoder), "min_pairs": 2, "training": {"progress": False}}
    )
    rm = rm.model_copy(update={"pairs": rm.pairs.model_copy(update={"from_scored": False})})
    pairs = fq.feedback_pairs(traffic[traffic["cycle"] == 1], rm, SYSTEM)
    yardstick = fq.true_pairs(traffic[traffic["cycle"] == 2], SYSTEM)
    got = fq.reward_model_accuracy(pairs, yardstick, rm, seed=0)
    assert got["rm_trained"] == 1.0 and got["rm_truth_prompts"] == 6
    assert got["rm_truth_pairs"] == 18  # 6 prompts x 1 right x 3 wrong
    assert 0.0 <= got["rm_truth_ci_low"] <= got["rm_truth_accuracy"] <= got["rm_truth_ci_high"] <= 1
    assert fq.reward_model_accuracy(pairs.head(1), yardstick, rm) == {"rm_trained": 0.0}
