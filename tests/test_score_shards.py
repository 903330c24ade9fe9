"""The score stage in resumable content-keyed shards: same frame as all at once, resumes a kill."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession

from taoflow.config.base import validate_block
from taoflow.datasets import ResumablePartitionedDataset
from taoflow.pipelines.score.nodes import plan_score_shards, score
from taoflow.scoring import combine, score_candidates
from taoflow.scoring.shards import collect_scored
from taoflow.scoring.shards import plan_score_shards as plan_shards

TASK = {"answer": {"kind": "last_number"}}
SCORERS = [
    {"name": "majority_vote", "type": "majority_vote", "weight": 1.0},
    {"name": "format", "type": "format", "weight": 0.1},
    {
        "name": "length_penalty",
        "type": "length_penalty",
        "weight": 0.2,
        "target_tokens": 2,
        "max_tokens": 6,
    },
]


def _config(**changes):
    return validate_block("score", {"scorers": SCORERS, **changes})


def _data(n_prompts: int = 7, n: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Groups with majorities, ties, no answers at all (an all-None majority answer) and cut-offs,
    interleaved so that grouping reorders rows."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        for p in range(n_prompts):
            # p2: a group without any answer
            text = "no idea" if p == 2 else f"the answer is {int(rng.integers(0, 3))}"
            rows.append(
                {
                    "prompt_id": f"p{p}",
                    "candidate_id": f"p{p}-{i}",
                    "round": 1,
                    "strategy": "sample" if i % 2 else "greedy",
                    "completion": text,
                    "n_tokens": int(rng.integers(1, 9)),
                    "finish_reason": "length" if (p + i) % 5 == 0 else "stop",
                    "logprob": -float(i),
                }
            )
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{p}" for p in range(n_prompts)],
            "messages": [[{"role": "user", "content": f"{p} + 1 = ?"}] for p in range(n_prompts)],
        }
    )
    return pd.DataFrame(rows), prompts


@pytest.mark.parametrize("shard_size", [1, 2, 3, 32])
def test_shards_give_the_frame_and_numbers_of_scoring_all_at_once(shard_size):
    candidates, prompts = _data()
    config = _config(shard_size=shard_size)
    expected, expected_summary = score_candidates(candidates, prompts, config, TASK)
    shards = plan_shards(candidates, prompts, config, TASK)
    assert len(shards) == -(-7 // shard_size)
    scored, summary = collect_scored(shards, config)
    pd.testing.assert_frame_equal(scored, expected, check_exact=True)
    assert summary.keys() == expected_summary.keys()
    for key, value in expected_summary.items():
        assert summary[key] == pytest.approx(value, abs=1e-12), key
    if shard_size >= 7:  # one shard: the very numbers
        assert summary == expected_summary


def test_shard_ids_follow_every_input_and_only_their_own_groups():
    candidates, prompts = _data()
    base = list(plan_shards(candidates, prompts, _config(shard_size=2), TASK))
    assert base == sorted(base) and base == list(
        plan_shards(candidates, prompts, _config(shard_size=2), TASK)
    )
    changed = candidates.copy()
    changed.loc[changed["candidate_id"] == "p5-1", "completion"] = "the answer is 9"
    ids = list(plan_shards(changed, prompts, _config(shard_size=2), TASK))
    assert [a == b for a, b in zip(base, ids, strict=True)] == [True, True, False, True]
    weights = [dict(s, weight=0.5) if s["name"] == "format" else s for s in SCORERS]
    other = validate_block("score", {"scorers": weights, "shard_size": 2})
    assert not set(base) & set(plan_shards(candidates, prompts, other, TASK))
    boxed = {"answer": {"kind": "boxed"}}
    assert not set(base) & set(plan_shards(candidates, prompts, _config(shard_size=2), boxed))
    references = pd.DataFrame({"prompt_id": ["p0"], "judge_answer": ["1"]})
    with_refs = plan_shards(candidates, prompts, _config(shard_size=2), TASK, references=references)
    assert not set(base) & set(with_refs)


def test_a_killed_score_resumes_with_the_shards_already_written(tmp_path, monkeypatch):
    candidates, prompts = _data()
    config = _config(shard_size=2)
    expected, _ = score_candidates(candidates, prompts, config, TASK)
    dataset = ResumablePartitionedDataset(
        path=str(tmp_path / "shards"),
        dataset="taoflow.datasets.atomic.PickleDataset",
        filename_suffix=".pkl",
    )
    real = combine.CandidateScorer.run_scorers
    calls: list[list[str]] = []

    def killed_on_the_second(self, frame):
        calls.append(sorted(frame["prompt_id"].unique()))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while scoring the 2nd shard")
        return real(self, frame)

    monkeypatch.setattr(combine.CandidateScorer, "run_scorers", killed_on_the_second)
    node_inputs = {
        "candidates": candidates,
        "prompts": prompts,
        "config": config,
        "task": TASK,
        "credentials": None,
    }
    with pytest.raises(KeyboardInterrupt):
        dataset.save(plan_score_shards(**node_inputs))
    written = sorted(p.name for p in (tmp_path / "shards").glob("*.pkl"))
    assert len(written) == 1 and written[0].startswith("00000-")

    calls.clear()
    monkeypatch.setattr(
        combine.CandidateScorer,
        "run_scorers",
        lambda s, f: calls.append(sorted(f["prompt_id"].unique())) or real(s, f),
    )
    dataset.save(plan_score_shards(**node_inputs))
    assert calls == [["p2", "p3"], ["p4", "p5"], ["p6"]]  # the first shard was reused
    scored, metrics = score(score_shards=dataset.load(), rejects=pd.DataFrame(), config=config)
    pd.testing.assert_frame_equal(scored, expected, check_exact=True)
    assert metrics["score.rejected"] == {"value": 0.0, "step": 1}


def test_score_pipeline_resumes_in_a_kedro_session(kedro_project, mlflow_uri, monkeypatch):
    candidates, prompts = _data()
    data = kedro_project / "data" / "test"
    data.mkdir(parents=True)
    prompts.assign(source="test", split="train", meta="{}").to_parquet(data / "prompts.parquet")
    candidates.to_parquet(data / "candidates.parquet")
    catalog = {
        "prompts": {"type": "pandas.ParquetDataset", "filepath": "data/test/prompts.parquet"},
        "round_1.candidates": {
            "type": "pandas.ParquetDataset",
            "filepath": "data/test/candidates.parquet",
        },
    }
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(yaml.safe_dump(catalog))
    runtime = {"score": {"shard_size": 3}}
    real = combine.CandidateScorer.run_scorers
    calls: list[int] = []

    def flaky(self, frame):
        calls.append(len(frame))
        if len(calls) == 2 and fail:
            raise RuntimeError("scorer crashed in the 2nd shard")
        return real(self, frame)

    monkeypatch.setattr(combine.CandidateScorer, "run_scorers", flaky)
    fail = True
    with (
        pytest.raises(Exception, match="2nd shard"),
        KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session,
    ):
        session.run(pipeline_name="score")
    while mlflow.active_run():
        mlflow.end_run()
    shards = kedro_project / "data/05_model_input/round_1/score_shards"
    assert len(list(shards.glob("*.pkl"))) == 1
    fail, calls[:] = False, []
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_name="score")
    assert calls == [12, 4]  # shards 2 and 3 (3 + 1 groups of 4); shard 1 came from disk
    scored = pd.read_parquet(kedro_project / "data/05_model_input/round_1/scored.parquet")
    base = yaml.safe_load((kedro_project / "conf/base/parameters_score.yml").read_text())
    expected, _ = score_candidates(candidates, prompts, base["score"], TASK)
    expected.to_parquet(data / "expected.parquet")
    pd.testing.assert_frame_equal(scored, pd.read_parquet(data / "expected.parquet"))
