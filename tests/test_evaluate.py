"""evaluate + promote: statistics on known data, benchmark validation, a real KedroSession run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from taoflow.config.evaluate import BenchmarkSpec, EvaluateParams
from taoflow.config.shared import TaskParams
from taoflow.core.stats import bootstrap_ci, mcnemar_exact, paired_comparison, win_scores
from taoflow.evaluation.benchmarks import benchmark_items

LABELED = {
    "name": "bench",
    "kind": "labeled",
    "source": "benchmark",
    "prompt_field": "question",
    "reference_field": "answer",
}


def test_bootstrap_ci_matches_the_normal_approximation_and_is_seeded():
    values = np.array([0, 1] * 200, dtype=float)  # mean 0.5, standard error 0.025
    est = bootstrap_ci(values, n_resamples=2000, seed=7)
    assert est.value == 0.5 and est.n == 400
    assert est.ci_low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert est.ci_high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_ci(values, n_resamples=2000, seed=7) == est
    constant = bootstrap_ci([1.0] * 10)
    assert (constant.ci_low, constant.ci_high) == (1.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_comparison_and_exact_mcnemar():
    # 16 items only the tuned model gets right, 3 only the base, 81 both/neither.
    tuned = np.array([1] * 16 + [0] * 3 + [1] * 40 + [0] * 41, dtype=float)
    base = np.array([0] * 16 + [1] * 3 + [1] * 40 + [0] * 41, dtype=float)
    wins, losses, p = mcnemar_exact(tuned, base)
    # two-sided binomial on the 19 discordant items: 2 · Σ_{i≤3} C(19, i) / 2^19
    assert (wins, losses) == (16, 3)
    assert p == pytest.approx(2 * (1 + 19 + 171 + 969) / 2**19)
    comparison = paired_comparison(tuned, base, n_resamples=2000, seed=1)
    assert comparison.diff == pytest.approx(0.13)
    assert comparison.better and not comparison.worse
    assert comparison.ci_low < 0.13 < comparison.ci_high
    assert comparison.p_value == pytest.approx(p)
    flipped = paired_comparison(base, tuned, n_resamples=2000, seed=1)
    assert flipped.worse and flipped.diff == pytest.approx(-0.13)
    assert win_scores([1, 0.5, 0], [0, 0.5, 1]).tolist() == [1.0, 0.5, 0.0]


def benchmark_specs(params: dict) -> list[BenchmarkSpec]:
    return EvaluateParams.model_validate(params).enabled_benchmarks


def test_benchmark_missing_reference_column_names_file_and_column():
    frame = pd.DataFrame({"id": ["a"], "question": ["1 + 1 ="], "solution": ["2"]})
    (spec,) = benchmark_specs({"benchmarks": [LABELED]})
    with pytest.raises(ValueError, match=r"data/01_raw/mine\.jsonl.*reference column 'answer'"):
        benchmark_items(spec, frame, TaskParams(), source_path="data/01_raw/mine.jsonl")


def test_benchmark_items_frame_prompts_like_the_task_and_respect_limit():
    frame = pd.DataFrame({"id": [3, 4, 5], "question": ["a", "b", "c"], "answer": [1, 2, 3]})
    (spec,) = benchmark_specs({"benchmarks": [LABELED]})
    items = benchmark_items(spec, frame, TaskParams(system_prompt="Be brief."), limit=2)
    assert items["item_id"].tolist() == ["3", "4"] and items["reference"].tolist() == ["1", "2"]
    assert items["messages"][0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
    ]
    with pytest.raises(ValueError, match="unknown metrics"):
        benchmark_specs({"benchmarks": [{**LABELED, "metrics": ["bleu@k"]}]})


def _holdout_prompts() -> pd.DataFrame:
    from taoflow.core.ids import stable_hash

    rows = []
    for i, (question, split) in enumerate(
        [("2 + 2 =", "holdout"), ("3 + 1 =", "holdout"), ("1 + 1 =", "train")]
    ):
        messages = [{"role": "user", "content": question}]
        rows.append(
            {
                "prompt_id": stable_hash(messages),
                "messages": messages,
                "source": "test",
                "split": split,
                "meta": json.dumps({"i": i}),
            }
        )
    return pd.DataFrame(rows)


def test_evaluate_pipeline_runs_in_kedro_session(kedro_project, tiny_policy):
    """base + round_1 (tao.rounds) on a 3-item benchmark and 2 holdout prompts, then promote."""
    import copy

    import mlflow
    import torch
    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset

    PolicyDataset(str(kedro_project / "data/06_models/base")).save(tiny_policy)
    tuned = copy.deepcopy(tiny_policy)
    with torch.no_grad():
        for param in tuned.model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    tuned.lineage.update({"round": 1, "algorithm": "rft"})
    PolicyDataset(str(kedro_project / "data/06_models/round_1/policy")).save(tuned)
    (kedro_project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    _holdout_prompts().to_parquet(kedro_project / "data/03_primary/prompts.parquet")

    overrides = {"limit": 3, "k": 2, "max_new_tokens": 4, "n_bootstrap": 50, "shard_size": 2}
    runtime = {"evaluate": overrides, "tao": {"rounds": 1, "sft_oracle": False}}
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["evaluate", "promote"])
    # kedro-mlflow re-enters the run once per node (mlflow.yml `nested: True`), leaving it on
    # MLflow's in-process run stack; clear it so later tests start clean.
    while mlflow.active_run():
        mlflow.end_run()

    # stages run alone: their results under their own folder (taoflow.config.stages)
    reporting = kedro_project / "data/08_reporting/stages/evaluate+promote"
    results = pd.read_parquet(reporting / "eval_results.parquet")
    assert list(results.columns) == [
        "model",
        "benchmark",
        "metric",
        "value",
        "n",
        "ci_low",
        "ci_high",
    ]
    assert set(results["model"]) == {"base", "best_of_n", "round_1"}
    labeled = results[results["benchmark"] == "chain_sum"]
    assert set(labeled["metric"]) == {"accuracy", "pass@1", "maj@2", "pass@2"}
    assert (labeled["n"] == 3).all()
    assert (
        (labeled["ci_low"] <= labeled["value"]) & (labeled["value"] <= labeled["ci_high"])
    ).all()
    holdout = results[results["benchmark"] == "holdout"]
    assert set(holdout["metric"]) == {"mean_reward", "win_rate"} and (holdout["n"] == 2).all()
    paired = pd.read_parquet(reporting / "eval_paired.parquet")
    assert set(paired["model"]) == {"best_of_n", "round_1"} and set(paired["baseline"]) == {"base"}
    per_prompt = pd.read_parquet(reporting / "eval_per_prompt.parquet")
    assert {"greedy_completion", "greedy_answer", "accuracy", "mean_reward"} <= set(
        per_prompt.columns
    )
    report = (reporting / "eval_report.md").read_text()
    assert "## chain_sum" in report and "Paired comparison" in report
    assert "Registry gate" in (reporting / "promotion_report.md").read_text()
    assert (reporting / "eval_metrics.png").stat().st_size > 0
    assert (reporting / "eval_reward_distribution.png").stat().st_size > 0
    gate = json.loads((reporting / "promotion_decision.json").read_text())
    assert gate["alias"] in ("champion", "challenger") and gate["reason"]
    # per-model outputs are kept, sharded per model
    shards = sorted(
        (kedro_project / "data/07_model_output/stages/evaluate+promote/evaluate/round_1").glob(
            "*.parquet"
        )
    )
    assert len(shards) == 5  # 2 greedy + 2 sampled chunks of chain_sum, 1 holdout chunk

    run = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")[0]
    assert run.data.metrics["evaluate.chain_sum.base.accuracy"] >= 0
    assert "evaluate.chain_sum.round_1_vs_base.accuracy.diff" in run.data.metrics
    assert run.data.tags["taoflow.gate.decision"] == gate["alias"]
    artifacts = {
        a.path
        for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="evaluate")
    }
    assert {
        "evaluate/eval_report.md",
        "evaluate/eval_results.parquet",
        "evaluate/eval_metrics.png",
    } <= artifacts
    version = mlflow.MlflowClient().get_model_version("taoflow-policy", gate["version"])
    assert version.tags["taoflow.lineage.round"] == "1"


def test_shard_ids_resume_unchanged_work_and_track_settings(tiny_policy):
    from taoflow.evaluation.outputs import generate_eval_outputs

    frame = pd.DataFrame(
        {"id": [1, 2, 3], "question": ["1 + 1 =", "2 + 2 =", "3 + 3 ="], "answer": ["2", "4", "6"]}
    )
    params = {"benchmarks": [LABELED], "k": 2, "shard_size": 2, "max_new_tokens": 3}

    def shards(**changes):
        return generate_eval_outputs(
            tiny_policy,
            EvaluateParams.model_validate({**params, **changes}),
            TaskParams(),
            0,
            model_name="base",
            sources={"source__benchmark": frame},
        )

    first = shards()
    assert list(first) == list(shards())  # same work, same ids: a re-run resumes
    assert len(first) == 4 and sum(i.startswith("bench-greedy-") for i in first) == 2
    assert set(shards(temperature=0.5)).isdisjoint(first)
    greedy = first[sorted(first)[0]]()
    assert greedy["item_id"].tolist() == ["1", "2"] and (greedy["mode"] == "greedy").all()
    sampled = first[[i for i in sorted(first) if "sampled" in i][0]]()
    assert len(sampled) == 4 and sampled["sample"].tolist() == [0, 1, 0, 1]
    with pytest.raises(KeyError, match="not an input of the evaluate pipeline"):
        generate_eval_outputs(
            tiny_policy,
            EvaluateParams.model_validate(params),
            TaskParams(),
            0,
            model_name="base",
            sources={},
        )
