"""Yardsticks around the judge: extra models on the benchmark, judge_distill, best-of-N variants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.evaluate import EvaluateParams
from taoflow.config.judge_distill import JudgeDistillParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import stable_hash
from taoflow.evaluation.best_of_n import benchmark_references, best_of_n_variants
from taoflow.pipelines.evaluate.nodes import compute_eval_results, select_best_of_n
from taoflow.pipelines.judge_distill.nodes import build_judge_distill_examples

TASK = TaskParams.model_validate(
    {"system_prompt": "Answer with the final number only.", "answer": {"kind": "last_number"}}
)
SCORE = {
    "scorers": [
        {"name": "majority_vote", "type": "majority_vote", "weight": 1.0},
        {"name": "format", "type": "format", "weight": 0.1},
    ]
}
JUDGE_SCORER = {"name": "judge", "type": "judge"}  # the shipped scorer, fed the references


# --------------------------------------------------------------------------- evaluate


def _outputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """base: greedy + 4 samples on 3 items; judge: greedy only (a right on a, c; wrong on b)."""
    bench = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "question": ["2 + 3 =", "3 + 3 =", "1 + 3 ="],
            "answer": ["5", "6", "4"],
        }
    )
    samples = {
        "a": ["3", "5", "5", "7"],  # vote: 5 (sample 1)
        "b": ["8", "8", "8", "6"],  # vote: 8 (wrong, sample 0); judge says 6 → sample 3
        "c": ["9", "4", "9", "4"],  # vote tie 9/4; judge says 4 → sample 1
    }
    judge = {"a": "5", "b": "6", "c": "1"}  # judge greedy: right, right, wrong
    rows = []
    for item, completions in samples.items():
        ref = bench.set_index("id").at[item, "answer"]
        base = {"benchmark": "bench", "item_id": item, "reference": ref, "finish_reason": "stop"}
        base["prompt"] = bench.set_index("id").at[item, "question"]
        rows.append({**base, "model": "base", "mode": "greedy", "sample": 0, "completion": "5"})
        for j, text in enumerate(completions):
            rows.append(
                {**base, "model": "base", "mode": "sampled", "sample": j, "completion": text}
            )
        rows.append(
            {**base, "model": "judge", "mode": "greedy", "sample": 0, "completion": judge[item]}
        )
    frame = pd.DataFrame(rows).assign(n_tokens=1, logprob=0.0, seed=0)
    return frame, bench


def _params(**changes) -> EvaluateParams:
    return EvaluateParams.model_validate(
        {
            "benchmarks": [{"name": "bench", "kind": "labeled", "source": "benchmark"}],
            "k": 4,
            "n_bootstrap": 50,
            "best_of_n": {
                "enabled": True,
                "from": "base",
                "variants": [
                    {"name": "best_of_n_vote", "scorers": [SCORE["scorers"][0]]},
                    {"name": "best_of_n_judge", "scorers": [JUDGE_SCORER], "references": "judge"},
                ],
            },
            "extra_models": {"judge": {"model": "tiny-random", "greedy_only": True}},
            **changes,
        }
    )


def test_judge_greedy_only_and_best_of_n_variants_pick_by_their_own_scorers():
    outputs, bench = _outputs()
    params = _params()
    inputs = {
        "outputs__base": {"s": outputs[outputs["model"] == "base"]},
        "outputs__judge": {"s": outputs[outputs["model"] == "judge"]},
        "source__benchmark": bench,
    }
    refs = benchmark_references(outputs, "judge", "bench", TASK).set_index("prompt_id")
    assert refs["judge_answer"].to_dict() == {"a": "5", "b": "6", "c": "1"}
    assert (refs["judge_confidence"] == 1.0).all() and (refs["mode"] == "greedy").all()

    legacy = select_best_of_n(params, SCORE, TASK, **inputs)
    vote = select_best_of_n(params, SCORE, TASK, variant="best_of_n_vote", **inputs)
    judged = select_best_of_n(params, SCORE, TASK, variant="best_of_n_judge", **inputs)
    assert vote.set_index("item_id")["sample"].to_dict() == {"a": 1, "b": 0, "c": 0}
    assert judged.set_index("item_id")["sample"].to_dict() == {"a": 1, "b": 3, "c": 0}
    assert (judged["model"] == "best_of_n_judge").all()
    # the same scorer without references has nothing to agree with: every score is equal, so
    # the tie rule picks each item's first sample
    blind = _params(
        best_of_n={"enabled": True, "variants": [{"name": "x", "scorers": [JUDGE_SCORER]}]}
    )
    picked = select_best_of_n(blind, SCORE, TASK, variant="x", **inputs)
    assert picked.set_index("item_id")["sample"].to_dict() == {"a": 0, "b": 0, "c": 0}

    models = ["base", "best_of_n", "best_of_n_vote", "best_of_n_judge", "judge"]
    results, paired, per_prompt, _ = compute_eval_results(
        params,
        TASK,
        0,
        models=models,
        best_of_n=legacy,
        selected__best_of_n_vote=vote,
        selected__best_of_n_judge=judged,
        **inputs,
    )
    value = results.set_index(["model", "metric"])["value"]
    assert set(results.loc[results["model"] == "judge", "metric"]) == {"accuracy"}
    assert value["judge", "accuracy"] == pytest.approx(2 / 3)
    assert value["best_of_n_vote", "accuracy"] == pytest.approx(1 / 3)  # a only
    assert value["best_of_n_judge", "accuracy"] == pytest.approx(2 / 3)  # a and b
    assert set(paired["model"]) == set(models) - {"base"}
    assert per_prompt.loc[per_prompt["model"] == "judge", "greedy_answer"].tolist() == [
        "5",
        "6",
        "1",
    ]


def test_variants_validate_names_sources_and_references():
    params = _params()
    assert [v["name"] for v in best_of_n_variants(params, ["base", "judge"])] == [
        "best_of_n_vote",
        "best_of_n_judge",
    ]
    with pytest.raises(ValueError, match="references 'judge' is not an evaluated model"):
        best_of_n_variants(params, ["base"])
    clash = _params(best_of_n={"enabled": True, "variants": [{"name": "best_of_n"}]})
    with pytest.raises(ValueError, match="must differ"):
        best_of_n_variants(clash, ["base"])
    with pytest.raises(ParameterError, match=r"greedy_onl"):
        validate_block("evaluate", {"extra_models": {"judge": {"model": "x", "greedy_onli": 1}}})
    with pytest.raises(ParameterError, match="duplicate best-of-N variant"):
        validate_block("evaluate", {"best_of_n": {"variants": [{"name": "v"}, {"name": "v"}]}})
    assert EvaluateParams().extra_models == {} and EvaluateParams().best_of_n.variants == []


def test_greedy_only_model_generates_greedy_shards_alone(tiny_policy):
    from taoflow.evaluation.outputs import generate_eval_outputs

    frame = pd.DataFrame({"id": [1, 2], "question": ["1 + 1 =", "2 + 2 ="], "answer": ["2", "4"]})
    holdout = pd.DataFrame(
        {
            "prompt_id": ["h"],
            "messages": [[{"role": "user", "content": "3 + 3 ="}]],
            "split": ["holdout"],
        }
    )
    specs = [
        {"name": "bench", "kind": "labeled", "source": "benchmark"},
        {"name": "holdout", "kind": "label_free", "source": "prompts"},
    ]
    params = _params(benchmarks=specs, k=2, max_new_tokens=2, best_of_n={})
    sources = {"source__benchmark": frame, "source__prompts": holdout}
    judge = generate_eval_outputs(tiny_policy, params, TASK, 0, model_name="judge", sources=sources)
    base = generate_eval_outputs(tiny_policy, params, TASK, 0, model_name="base", sources=sources)
    assert [s.split("-")[:2] for s in judge] == [["bench", "greedy"]]
    assert len(base) == 3  # greedy + sampled + holdout
    # the greedy shard is the same work for both: same id, same completions
    assert next(iter(judge)) in base
    rows = judge[next(iter(judge))]()
    assert set(rows["mode"]) == {"greedy"} and len(rows) == 2


def test_evaluate_with_the_judge_and_variants_in_kedro_session(kedro_project, tiny_policy):
    import mlflow
    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset

    PolicyDataset(str(kedro_project / "data/06_models/base")).save(tiny_policy)
    PolicyDataset(str(kedro_project / "data/06_models/round_1/policy")).save(tiny_policy)
    (kedro_project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    holdout = pd.DataFrame(
        [
            {
                "prompt_id": stable_hash(q),
                "messages": [{"role": "user", "content": q}],
                "source": "t",
                "split": "holdout",
                "meta": "{}",
            }
            for q in ("2 + 2 =", "3 + 1 =")
        ]
    )
    holdout.to_parquet(kedro_project / "data/03_primary/prompts.parquet")
    overrides = {
        "limit": 3,
        "k": 3,
        "max_new_tokens": 4,
        "n_bootstrap": 50,
        "best_of_n": _params().best_of_n.model_dump(by_alias=True, mode="json"),
        "extra_models": {"judge": {"model": "tiny-random", "greedy_only": True}},
    }
    runtime = {
        "model": {"name_or_path": "tiny-random"},
        "evaluate": overrides,
        "tao": {"sft_oracle": False},
    }
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["evaluate"])
    while mlflow.active_run():
        mlflow.end_run()

    reporting = kedro_project / "data/08_reporting/stages/evaluate"  # a stage run alone
    results = pd.read_parquet(reporting / "eval_results.parquet")
    assert list(dict.fromkeys(results["model"])) == [
        "base",
        "best_of_n",
        "best_of_n_vote",
        "best_of_n_judge",
        "round_1",
        "judge",
    ]
    judge = results[results["model"] == "judge"]
    assert judge[["benchmark", "metric"]].values.tolist() == [["chain_sum", "accuracy"]]
    # loaded by prepare_extra (its own folder), greedy shards only
    assert (kedro_project / "data/06_models/extra/judge/taoflow.json").exists()
    judge_shards = sorted(
        (kedro_project / "data/07_model_output/stages/evaluate/evaluate/judge").glob("*.parquet")
    )
    assert judge_shards and all("-greedy-" in p.name for p in judge_shards)
    selected = kedro_project / "data/07_model_output/stages/evaluate/evaluate/selected"
    assert sorted(p.name for p in selected.iterdir()) == [
        "best_of_n_judge.parquet",
        "best_of_n_vote.parquet",
    ]
    report = (reporting / "eval_report.md").read_text()
    assert "`best_of_n_judge` is base's best-of-N by scorers judge" in report
    assert "`judge`: evaluated by greedy completions only" in report
    run = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")[0]
    assert "evaluate.chain_sum.judge_vs_base.accuracy.diff" in run.data.metrics


# --------------------------------------------------------------------------- judge_distill


def _prompt(text: str, split: str = "train") -> dict:
    messages = [{"role": "user", "content": text}]
    return {"prompt_id": stable_hash(messages), "messages": messages, "split": split}


def _distill_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    prompts = pd.DataFrame(
        [_prompt("3 + 4 ="), _prompt("2 + 2 ="), _prompt("9 - 5 ="), _prompt("1 + 1 =", "holdout")]
        + [_prompt("6 - 8 =")]
    )
    pid = prompts["prompt_id"].tolist()
    refs = pd.DataFrame(
        {
            "prompt_id": [pid[0], pid[1], pid[3], pid[4], pid[0]],
            "judge": ["embedded-judge"] * 4 + ["other"],
            "mode": ["greedy"] * 5,
            "judge_answer": ["7", "4.0", "2", None, "8"],
            "judge_confidence": [0.9, 0.3, 1.0, 0.0, 1.0],
            "n_samples": 1,
            "completion": ["7", "4", "2", "?", "8"],
        }
    )
    return prompts, refs


def test_judge_distill_examples_come_from_the_judges_answers_by_prompt_id():
    prompts, refs = _distill_inputs()
    pid = prompts["prompt_id"].tolist()
    params = JudgeDistillParams(judge="embedded-judge")
    examples, rejects, metrics = build_judge_distill_examples(prompts, refs, params, TASK)
    by_id = examples.set_index("prompt_id")
    assert by_id["completion"].to_dict() == {pid[0]: "7", pid[1]: "4"}
    assert by_id.at[pid[0], "prompt"][0] == {"role": "system", "content": TASK.system_prompt}
    reasons = rejects.set_index("prompt_id")["reason"]
    assert "no judge reference" in reasons[pid[2]] and "holdout" in reasons[pid[3]]
    assert "no answer" in reasons[pid[4]]
    assert metrics["judge_distill.data.judge_coverage"]["value"] == pytest.approx(2 / 4)

    confident = JudgeDistillParams(judge="embedded-judge", min_confidence=0.5)
    examples, rejects, _ = build_judge_distill_examples(prompts, refs, confident, TASK)
    assert examples["prompt_id"].tolist() == [pid[0]]
    assert "confidence 0.30" in rejects.set_index("prompt_id")["reason"][pid[1]]
    with pytest.raises(ValueError, match="several rows"):  # two judges, no filter
        build_judge_distill_examples(prompts, refs, JudgeDistillParams(), TASK)
    with pytest.raises(ValueError, match="none of the 4 train prompts has a usable answer"):
        build_judge_distill_examples(prompts, refs, JudgeDistillParams(judge="nobody"), TASK)
    with pytest.raises(ValueError, match="missing column"):
        build_judge_distill_examples(prompts, refs.drop(columns="judge"), params, TASK)


def test_judge_distill_config_and_graph(kedro_project):
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession

    with pytest.raises(ParameterError, match=r"judge_distill.min_confidenc"):
        validate_block("judge_distill", {"min_confidenc": 0.5})
    train = {"trainer": {"max_steps": 3}}
    settings = JudgeDistillParams.model_validate({"trainer": {"max_steps": 7}})
    assert settings.train_settings(validate_block("train", train)).trainer.max_steps == 7
    runtime = {"tao": {"judge_distill": True}}
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.load_context()
        names = {n.name for n in pipelines["__default__"].nodes}
        evaluate_inputs = pipelines["__default__"].only_nodes("evaluate_generate_judge_distill")
    assert {"build_judge_distill_examples", "train_judge_distill"} <= names
    assert "judge_distill.policy" in evaluate_inputs.inputs()
    with KedroSession.create(project_path=kedro_project) as session:
        session.load_context()
        names = {n.name for n in pipelines["__default__"].nodes}
    assert not any("judge" in n for n in names)


def test_judge_distill_pipeline_runs_in_kedro_session(kedro_project, tiny_policy):
    import mlflow
    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset
    from taoflow.models import load_policy

    prompts, refs = _distill_inputs()
    PolicyDataset(str(kedro_project / "data/06_models/base")).save(tiny_policy)
    (kedro_project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    prompts.assign(source="t", meta="{}").to_parquet(
        kedro_project / "data/03_primary/prompts.parquet"
    )
    import yaml

    entry = yaml.safe_load((kedro_project / "conf/base/catalog_judge.yml").read_text())
    path = kedro_project / entry["judge_references"]["filepath"]  # where the judge stage writes
    path.parent.mkdir(parents=True, exist_ok=True)
    refs.to_parquet(path)
    runtime = {
        "model": {"name_or_path": "tiny-random"},
        "judge_distill": {"judge": "embedded-judge"},
        "train": {"trainer": {"per_device_train_batch_size": 2, "max_steps": 2, "max_length": 64}},
    }
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["judge_distill"])
    while mlflow.active_run():
        mlflow.end_run()
    policy = load_policy(str(kedro_project / "data/06_models/judge_distill/policy"))
    assert policy.lineage["algorithm"] == "judge_distill" and policy.lineage["labels"] == "judge"
    assert policy.lineage["global_step"] == 2
    examples = pd.read_parquet(kedro_project / "data/05_model_input/judge_distill/examples.parquet")
    assert sorted(examples["completion"]) == ["4", "7"]
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert run.data.metrics["judge_distill.data.n_examples"] == 2
    assert np.isfinite(run.data.metrics["judge_distill.train_loss"])
