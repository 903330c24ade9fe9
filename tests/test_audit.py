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


# --------------------------------------------------------------------------- every scorer


def _two_scorer_frame() -> pd.DataFrame:
    """3 prompts × 4 candidates with a vote and a judge that disagree on b (gold: a 3, b 3, c 6)."""
    groups = {
        # answers, vote score, judge score, judge confidence
        "a": (["3", "3", "3", "4"], [1, 1, 1, 0], [0.9, 0.8, 0.7, 0.1], 0.9),
        "b": (["7", "7", "3", "1"], [1, 1, 0, 0], [0.2, 0.2, 0.9, 0.1], 0.4),
        "c": (["5", "5", "6", "6"], [0, 0, 0, 0], [0.1, 0.1, 0.8, 0.8], 0.8),
    }
    rows = []
    for pid, (answers, vote, judge, confidence) in groups.items():
        agreement = max(answers.count(a) for a in answers) / len(answers)
        for i, answer in enumerate(answers):
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-{i}",
                    "round": 1,
                    "completion": f"The answer is {answer}.",
                    "answer": answer,
                    "score_majority_vote": float(vote[i]),
                    "score_judge": judge[i],
                    "judge_confidence": confidence,
                    "majority_vote_agreement": agreement,
                    "agreement": agreement,
                    "reward": vote[i] + 0.5 * judge[i],
                }
            )
    return pd.DataFrame(rows)


def test_every_scorer_gets_precision_auc_and_confidence_buckets():
    from taoflow.pipelines.audit.nodes import audit_scorers

    scored = _two_scorer_frame()
    prompts = prompts_frame({"a": "1 + 2", "b": "4 - 1", "c": "2 + 4"})
    gold = pd.DataFrame(
        {"question": [Q.format(q) for q in ("1 + 2", "4 - 1", "2 + 4")], "answer": ["3", "3", "6"]}
    )
    table, metrics = audit_scorers(
        scored, prompts, gold, AuditParams(agreement_bins=[0, 0.5, 1]), TASK
    )
    overall = table[table["bucket"] == "all"].set_index("scorer")
    assert list(overall.index) == ["majority_vote", "judge", "reward"]
    # vote: a right, b wrong (7), c all tie → earliest "5" wrong; judge: a, b, c right
    assert overall.at["majority_vote", "precision"] == pytest.approx(1 / 3)
    assert overall.at["judge", "precision"] == pytest.approx(1.0)
    assert overall.at["reward", "precision"] == pytest.approx(2 / 3)  # b: 1 + 0.1 beats 0 + 0.45
    # AUC: vote a 1.0, b 1/6 (the right "3" ties one wrong "1" at 0), c 0.5 (all tied);
    # the judge separates every group
    assert overall.at["majority_vote", "auc"] == pytest.approx((1 + 1 / 6 + 0.5) / 3)
    assert overall.at["judge", "auc"] == pytest.approx(1.0)
    assert overall.at["judge", "confidence_column"] == "judge_confidence"
    assert overall.at["majority_vote", "confidence_column"] == "majority_vote_agreement"
    judge = table[table["scorer"] == "judge"].set_index("bucket")
    assert judge.at["confidence_0.00_0.50", "n_prompts"] == 1  # b at 0.4
    assert judge.at["confidence_0.50_1.00", "share"] == pytest.approx(2 / 3)
    assert metrics["audit.round_1.scorers.judge.precision"]["value"] == 1.0
    vote = table[table["scorer"] == "majority_vote"].set_index("bucket")
    assert vote.at["confidence_0.50_1.00", "n_prompts"] == 1  # a (0.75); b, c at 0.5 below
    key = "audit.round_1.scorers.majority_vote.confidence_0.00_0.50.precision"
    assert metrics[key]["value"] == 0.0  # b and c: the vote's pick is wrong on both


def test_label_free_signal_quality_needs_no_gold_and_reads_gates():
    from taoflow.config.train import TrainParams
    from taoflow.pipelines.audit.nodes import assess_signal_quality, build_audit_report
    from taoflow.scoring.quality import signal_quality

    scored = _two_scorer_frame()
    table, values = signal_quality(scored)
    # preferred answers: vote a 3, b 7, c 5; judge a 3, b 3, c 6 → they agree on a only
    assert values["agreement.majority_vote__judge"] == pytest.approx(1 / 3)
    assert values["signal_share.majority_vote"] == pytest.approx(2 / 3)  # c all tied
    assert values["signal_share.judge"] == 1.0
    assert values["mean_agreement"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert "gate.keep_share" not in values

    train = TrainParams.model_validate({"gates": {"min_vote_share": 0.6}})
    _, gated = assess_signal_quality(scored, train, TASK)
    # vote shares: a 0.75, b 0.5, c 0.5 → only a keeps a clear majority
    assert gated["signal.round_1.gate.min_vote_share.keep_share"]["value"] == pytest.approx(1 / 3)
    assert gated["signal.round_1.gate.keep_share"]["value"] == pytest.approx(1 / 3)
    table, metrics = assess_signal_quality(scored, TrainParams(), TASK)  # no gates: skipped
    assert not any(".gate" in k for k in metrics)
    assert metrics["signal.round_1.agreement.majority_vote__judge"]["value"] == pytest.approx(1 / 3)
    report = build_audit_report(
        pd.DataFrame({"scorer": ["judge"], "precision": [1.0]}), table, pd.DataFrame()
    )
    assert "Label-free signal quality" in report and "majority_vote__judge" in report


def test_audit_pipeline_writes_scorer_audit_signal_quality_and_report(kedro_project):
    import json

    import mlflow
    from kedro.framework.session import KedroSession

    from taoflow.pipelines.audit.nodes import AUDIT_COLUMNS

    scored = _two_scorer_frame()
    questions = {"a": "1 + 2", "b": "4 - 1", "c": "2 + 4"}
    (kedro_project / "data/05_model_input/round_1").mkdir(parents=True)
    scored.to_parquet(kedro_project / "data/05_model_input/round_1/scored.parquet")
    dpo_pairs(scored, [("a-0", "a-3"), ("b-0", "b-2")]).to_parquet(
        kedro_project / "data/05_model_input/round_1/train_examples.parquet"
    )
    (kedro_project / "data/03_primary").mkdir(parents=True)
    prompts_frame(questions).to_parquet(kedro_project / "data/03_primary/prompts.parquet")
    with (kedro_project / "data/01_raw/usage_gold.jsonl").open("w") as handle:
        for q, answer in zip(questions.values(), ["3", "3", "6"], strict=True):
            handle.write(json.dumps({"question": Q.format(q), "answer": answer}) + "\n")
    with KedroSession.create(project_path=kedro_project) as session:
        session.run(pipeline_names=["audit"])
    while mlflow.active_run():
        mlflow.end_run()

    reporting = kedro_project / "data/08_reporting/stages/audit/round_1"
    assert list(pd.read_parquet(reporting / "reward_audit.parquet").columns) == AUDIT_COLUMNS
    audit = pd.read_parquet(reporting / "scorer_audit.parquet")
    overall = audit[audit["bucket"] == "all"].set_index("scorer")["precision"]
    assert overall.to_dict() == pytest.approx(
        {"majority_vote": 1 / 3, "judge": 1.0, "reward": 2 / 3}
    )
    signal = pd.read_parquet(reporting / "signal_quality.parquet")
    assert "majority_vote__judge" in set(signal["name"])
    assert "## Against gold answers" in (reporting / "audit_report.md").read_text()
    trained = pd.read_parquet(reporting / "train_audit.parquet")
    assert trained.groupby("side")["correct"].mean().to_dict() == {"chosen": 0.5, "rejected": 0.5}
    assert "## What training learned from" in (reporting / "audit_report.md").read_text()
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert run.data.metrics["signal.round_1.agreement.majority_vote__judge"] == pytest.approx(1 / 3)
    assert run.data.metrics["audit.round_1.scorers.judge.precision"] == 1.0


def dpo_pairs(scored: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """DPO train_examples rows for (chosen candidate id, rejected candidate id) pairs."""
    prompt_of = scored.set_index("candidate_id")["prompt_id"]
    return pd.DataFrame(
        {
            "prompt_id": [prompt_of[c] for c, _ in pairs],
            "round": 1,
            "chosen_id": [c for c, _ in pairs],
            "rejected_id": [r for _, r in pairs],
        }
    )


def test_training_data_audit_checks_what_training_learned_from():
    from taoflow.pipelines.audit.nodes import audit_training_data

    scored = scored_frame(
        {
            "a": [("3", 1.0, 0.5), ("4", 0.0, 0.5)],
            "b": [("7", 1.0, 0.5), ("3", 0.0, 0.5)],
            "c": [("6", 1.0, 0.5), ("5", 0.0, 0.5)],
            "d": [("9", 1.0, 0.5), ("1", 0.0, 0.5)],  # no gold: left out
        }
    )
    prompts = prompts_frame({"a": "1 + 2", "b": "4 - 1", "c": "2 + 4", "d": "8 + 1"})
    gold = pd.DataFrame(
        {"question": [Q.format(q) for q in ("1 + 2", "4 - 1", "2 + 4")], "answer": ["3", "3", "6"]}
    )
    # dpo: a right over wrong, b wrong over right, d unlabelled; c never reached training
    pairs = dpo_pairs(scored, [("a-0", "a-1"), ("b-0", "b-1"), ("d-0", "d-1")])
    table, metrics = audit_training_data(pairs, scored, prompts, gold, TASK)
    value = {k.removeprefix("audit.round_2.train."): v["value"] for k, v in metrics.items()}
    assert value == {
        "gold_prompts": 3.0,
        "kept_prompts": 2.0,
        "kept_share": pytest.approx(2 / 3),
        "chosen_precision": 0.5,
        "rejected_wrong": 0.5,
    }
    assert set(table["prompt_id"]) == {"a", "b"}

    # rft targets: every example is a chosen one
    targets = pd.DataFrame({"prompt_id": ["a", "c"], "candidate_id": ["a-0", "c-1"]})
    table, metrics = audit_training_data(targets, scored, prompts, gold, TASK)
    assert metrics["audit.round_2.train.chosen_precision"]["value"] == 0.5
    assert "audit.round_2.train.rejected_wrong" not in metrics
    # kto: desirable / undesirable by label
    kto = targets.assign(label=[True, False])
    table, _ = audit_training_data(kto, scored, prompts, gold, TASK)
    assert table.set_index("candidate_id")["side"].to_dict() == {"a-0": "chosen", "c-1": "rejected"}
