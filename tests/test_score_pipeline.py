"""The ``score`` pipeline end to end through a KedroSession, in a throwaway project copy."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession

from taoflow.pipelines.score.nodes import split_scorable


def _candidates() -> pd.DataFrame:
    rows = []
    completions = {
        "p1": ["7", "3 + 4 = 7", "8", "I am not sure and I keep going"],
        "p2": ["5", "6", "5", "5"],
    }
    for pid, texts in completions.items():
        for i, text in enumerate(texts):
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-{i}",
                    "round": 1,
                    "strategy": "sample" if i % 2 else "greedy",
                    "temperature": 0.8,
                    "seed": i,
                    "completion": text,
                    "n_tokens": len(text.split()),
                    "finish_reason": "length" if "going" in text else "stop",
                    "logprob": -1.0,
                }
            )
    rows.append(dict(rows[0], prompt_id="ghost", candidate_id="ghost-0"))  # unknown prompt
    return pd.DataFrame(rows)


def _prompts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": ["p1", "p2"],
            "messages": [
                [{"role": "user", "content": "3 + 4 = ?"}],
                [{"role": "user", "content": "2 + 3 = ?"}],
            ],
            "source": "test",
            "split": "train",
            "meta": "{}",
        }
    )


def test_split_scorable_rejects_with_reasons():
    candidates = _candidates()
    candidates.loc[1, "completion"] = None
    candidates = pd.concat([candidates, candidates.iloc[[2]]])
    usable, rejects = split_scorable(candidates, _prompts())
    assert len(usable) + len(rejects) == len(candidates)
    assert dict(zip(rejects["candidate_id"], rejects["reason"], strict=True)) == {
        "p1-1": "completion is null",
        "ghost-0": "prompt_id not found in prompts",
        "p1-2": "duplicate candidate_id",
    }
    assert rejects["location"].str.startswith("candidates row").all()
    with pytest.raises(ValueError, match="completion"):
        split_scorable(candidates.drop(columns="completion"), _prompts())


def test_score_pipeline_runs_in_a_kedro_session(kedro_project, mlflow_uri):
    data = kedro_project / "data" / "test"
    data.mkdir(parents=True)
    _prompts().to_parquet(data / "prompts.parquet")
    _candidates().to_parquet(data / "candidates.parquet")
    catalog = {
        "prompts": {"type": "pandas.ParquetDataset", "filepath": "data/test/prompts.parquet"},
        "round_1.candidates": {
            "type": "pandas.ParquetDataset",
            "filepath": "data/test/candidates.parquet",
        },
    }
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(yaml.safe_dump(catalog))

    with KedroSession.create(project_path=kedro_project) as session:
        session.run(pipeline_name="score")

    scored = pd.read_parquet(kedro_project / "data/05_model_input/round_1/scored.parquet")
    assert {"score_majority_vote", "score_format", "reward", "advantage", "answer"} <= set(
        scored.columns
    )
    assert scored["candidate_id"].tolist() == [f"p1-{i}" for i in range(4)] + [
        f"p2-{i}" for i in range(4)
    ]
    assert scored["score_majority_vote"].tolist() == [1, 1, 0, 0, 1, 0, 1, 1]
    assert scored["score_format"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    assert scored["reward"].tolist() == pytest.approx([1.1, 1.1, 0.1, 0.0, 1.1, 0.1, 1.1, 1.1])
    assert scored.groupby("prompt_id")["advantage"].sum().abs().max() < 1e-9
    rejects = pd.read_parquet(kedro_project / "data/05_model_input/round_1/score_rejects.parquet")
    assert rejects["candidate_id"].tolist() == ["ghost-0"]
    assert (
        kedro_project / "data/08_reporting/stages/score/round_1/reward_by_strategy.png"
    ).stat().st_size > 0

    client = mlflow.tracking.MlflowClient(mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = run.data.metrics
    assert metrics["score.majority_vote.mean"] == pytest.approx(5 / 8)
    assert metrics["score.zero_signal_share"] == 0.0
    assert metrics["score.rejected"] == 1
    history = client.get_metric_history(run.info.run_id, "score.agreement_mean")
    assert [m.step for m in history] == [1]  # the round from the `round` column
    assert history[0].value == pytest.approx((2 / 4 + 3 / 4) / 2)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "round_1")]
    assert "round_1/reward_by_strategy.png" in artifacts
