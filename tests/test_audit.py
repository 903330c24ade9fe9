"""The reward audit: label-free rewards checked against gold answers, after the fact."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from taoflow.config.audit import AuditParams
from taoflow.config.base import ParameterError, validate_block
from taoflow.config.shared import TaskParams
from taoflow.pipelines.audit.nodes import audit_rewards

TASK = TaskParams()  # answers: the last number
Q = "State the final answer to the following arithmetic problem: {} ="


def scored_frame(groups: dict[str, list[tuple[str, float, float]]]) -> pd.DataFrame:
    """prompt_id → [(answer, reward, majority agreement)], with the majority answer per group."""
    rows = []
    for pid, cands in groups.items():
        answers = [a for a, _, _ in cands]
        top = max(set(answers), key=answers.count)
        tied = sum(answers.count(a) == answers.count(top) for a in set(answers)) > 1
        for i, (answer, reward, agreement) in enumerate(cands):
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-{i}",
                    "round": 2,
                    "completion": f"The answer is {answer}.",
                    "answer": answer,
                    "reward": reward,
                    "majority_vote_agreement": agreement,
                    "majority_vote_majority_answer": None if tied else top,
                }
            )
    return pd.DataFrame(rows)


def prompts_frame(questions: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": list(questions),
            "split": "train",
            "messages": [[{"role": "user", "content": Q.format(q)}] for q in questions.values()],
        }
    )


def test_audit_counts_right_and_wrong_pseudo_labels_by_agreement():
    scored = scored_frame(
        {
            "a": [("3", 1.0, 0.75), ("3", 1.0, 0.75), ("3", 1.0, 0.75), ("4", 0.0, 0.75)],  # right
            "b": [("7", 1.0, 0.5), ("7", 1.0, 0.5), ("2", 0.0, 0.5), ("1", 0.0, 0.5)],  # wrong
            "c": [("5", 0.0, 0.5), ("5", 0.0, 0.5), ("6", 0.1, 0.5), ("6", 0.0, 0.5)],  # tie
            "d": [("9", 1.0, 1.0)] * 4,  # no gold answer for this one
        }
    )
    prompts = prompts_frame({"a": "1 + 2", "b": "4 - 1", "c": "2 + 4", "d": "8 + 1"})
    gold = pd.DataFrame(
        {"question": [Q.format(q) for q in ("1 + 2", "4 - 1", "2 + 4")], "answer": ["3", "3", "6"]}
    )
    table, metrics = audit_rewards(
        scored, prompts, gold, AuditParams(agreement_bins=[0, 0.5, 1]), TASK
    )

    assert table.set_index("prompt_id")["pseudo_label_correct"].to_dict() == {
        "a": True,
        "b": False,
        "c": None,
    }
    # top reward: a → "3" (right), b → "7" (wrong), c → "6" (reward 0.1: right)
    assert table.set_index("prompt_id")["top_reward_correct"].to_dict() == {
        "a": True,
        "b": False,
        "c": True,
    }
    value = {k.removeprefix("audit.round_2."): v["value"] for k, v in metrics.items()}
    assert {v["step"] for v in metrics.values()} == {2}
    assert value["n_prompts"] == 3 and value["n_without_gold"] == 1
    assert value["pseudo_label_coverage"] == pytest.approx(2 / 3)
    assert value["pseudo_label_accuracy"] == 0.5
    assert value["top_reward_accuracy"] == pytest.approx(2 / 3)
    assert value["candidate_accuracy"] == pytest.approx((3 + 0 + 2) / 12)
    assert value["agreement_0.00_0.50.pseudo_label_accuracy"] == 0.0  # b at 0.5
    assert value["agreement_0.50_1.00.pseudo_label_accuracy"] == 1.0  # a at 0.75
    # AUC over groups holding right and wrong candidates: a separates perfectly (1.0); c: 6's
    # rewards {0.1, 0.0} vs 5's {0.0, 0.0} → (2 wins + 2 ties / 2) / 4 = 0.75; b has no right one
    assert value["reward_auc"] == pytest.approx((1.0 + 0.75) / 2)
    assert all(not math.isnan(v) for v in value.values())


def test_audit_without_any_gold_answer_says_so():
    scored = scored_frame({"x": [("1", 1.0, 1.0)]})
    prompts = prompts_frame({"x": "0 + 1"})
    gold = pd.DataFrame({"question": [Q.format("5 + 5")], "answer": ["10"]})
    with pytest.raises(ValueError, match="no.*gold|none of the 1 scored prompts"):
        audit_rewards(scored, prompts, gold, AuditParams(), TASK)


def test_audit_rejects_unordered_bins():
    with pytest.raises(ParameterError, match=r"audit\.agreement_bins.*increasing"):
        validate_block("audit", {"agreement_bins": [1, 0]})
