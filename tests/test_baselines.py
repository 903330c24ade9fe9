"""Baselines: sft_oracle (SFT on gold answers) and best_of_n (a derived evaluate model)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.evaluate import EvaluateParams
from taoflow.config.sft_oracle import SftOracleParams
from taoflow.config.shared import TaskParams
from taoflow.config.train import TrainParams
from taoflow.core.gold import format_gold_answer
from taoflow.core.ids import stable_hash
from taoflow.evaluation.best_of_n import best_of_n_settings, pick_best
from taoflow.pipelines.evaluate.nodes import compute_eval_results, select_best_of_n
from taoflow.pipelines.sft_oracle.nodes import build_sft_oracle_examples

TASK = {"system_prompt": "Answer with the final number only.", "answer": {"kind": "last_number"}}
TASK_PARAMS = TaskParams.model_validate(TASK)
ORACLE = SftOracleParams()
Q = "State the final answer to the following arithmetic problem: {} ="
SCORE = {
    "scorers": [
        {"name": "majority_vote", "type": "majority_vote", "weight": 1.0},
        {"name": "format", "type": "format", "weight": 0.1},
    ]
}


def _prompt(content: str | list[dict[str, str]], split: str = "train") -> dict:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return {
        "prompt_id": stable_hash(messages),
        "messages": messages,
        "source": "test",
        "split": split,
        "meta": "{}",
    }


def _prompts() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _prompt(Q.format("3 + 4")),  # exact match
            _prompt(f"Café question: {Q.format('2 + 2')}"),  # wraps a gold question
            _prompt(Q.format("9 - 5")),  # no gold answer
            _prompt(Q.format("1 + 1"), split="holdout"),  # never trained on
            _prompt(  # its own system turn, extra whitespace: still the 6 - 8 question
                [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": Q.format("6  - 8").replace("  ", "\u00a0 ")},
                ]
            ),
        ]
    )


def _gold() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question": [Q.format(e) for e in ("3 + 4", "2 + 2", "1 + 1", "6 - 8")],
            "answer": ["7", "4.0", "2", "-2"],
        }
    )


# --------------------------------------------------------------------------- sft_oracle


def test_sft_examples_join_gold_by_question_with_the_task_framing():
    prompts = _prompts()
    examples, rejects, metrics = build_sft_oracle_examples(prompts, _gold(), ORACLE, TASK_PARAMS)
    by_id = examples.set_index("prompt_id")
    pid = prompts["prompt_id"]
    assert set(by_id.index) == {pid[0], pid[1], pid[4]}
    assert by_id.at[pid[0], "completion"] == "7" and by_id.at[pid[0], "match"] == "exact"
    assert by_id.at[pid[1], "completion"] == "4" and by_id.at[pid[1], "match"] == "embedded"
    assert by_id.at[pid[4], "completion"] == "-2"
    # the task's system prompt is added where the prompt has none, kept where it has its own
    assert by_id.at[pid[0], "prompt"] == [
        {"role": "system", "content": TASK["system_prompt"]},
        {"role": "user", "content": Q.format("3 + 4")},
    ]
    assert by_id.at[pid[4], "prompt"][0] == {"role": "system", "content": "Be terse."}
    assert examples["prompt_id"].tolist() == sorted(examples["prompt_id"])  # deterministic order
    reasons = rejects.set_index("prompt_id")["reason"]
    assert set(reasons.index) == {pid[2], pid[3]}
    assert "no gold answer" in reasons[pid[2]] and "holdout" in reasons[pid[3]]
    assert metrics["sft_oracle.data.n_examples"]["value"] == 3
    assert metrics["sft_oracle.data.gold_coverage"]["value"] == pytest.approx(3 / 4)

    # exact matching refuses the wrapped question; a template must stay readable by the task
    _, strict, _ = build_sft_oracle_examples(
        prompts, _gold(), SftOracleParams(match="exact"), TASK_PARAMS
    )
    assert pid[1] in set(strict["prompt_id"])
    boxed = TaskParams.model_validate({"answer": {"kind": "boxed"}})
    with pytest.raises(ValueError, match="none of the 4 train prompts.*not read back"):
        build_sft_oracle_examples(prompts, _gold(), ORACLE, boxed)
    examples, _, _ = build_sft_oracle_examples(
        prompts, _gold(), SftOracleParams(completion_template="\\boxed{{{answer}}}"), boxed
    )
    assert sorted(examples["completion"]) == ["\\boxed{-2}", "\\boxed{4}", "\\boxed{7}"]


def test_bad_gold_rows_are_errors_naming_dataset_line_and_field():
    conflicting = pd.concat(
        [_gold(), pd.DataFrame({"question": [Q.format("3 + 4")], "answer": ["8"]})]
    )
    with pytest.raises(ValueError, match=r"usage_gold: line 5.*'8'.*line 1"):
        build_sft_oracle_examples(_prompts(), conflicting, ORACLE, TASK_PARAMS)
    agreeing = pd.concat([_gold(), pd.DataFrame({"question": [Q.format("3 + 4")], "answer": [7]})])
    assert len(build_sft_oracle_examples(_prompts(), agreeing, ORACLE, TASK_PARAMS)[0]) == 3
    empty = _gold().assign(answer=["7", None, "2", "-2"])
    with pytest.raises(ValueError, match=r"line\(s\) \[2\] have an empty 'answer'"):
        build_sft_oracle_examples(_prompts(), empty, ORACLE, TASK_PARAMS)
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\]"):
        build_sft_oracle_examples(_prompts(), _gold()[["question"]], ORACLE, TASK_PARAMS)
    with pytest.raises(ValueError, match="none of the 4 train prompts"):
        build_sft_oracle_examples(_prompts(), _gold().iloc[2:3], ORACLE, TASK_PARAMS)
    assert [format_gold_answer(a) for a in ("1,000", " -3 ", "2.50", "Paris")] == [
        "1000",
        "-3",
        "2.5",
        "Paris",
    ]


def test_sft_oracle_trains_with_the_train_stage_budget_unless_overridden():
    train = {
        "algorithm": "dpo",
        "trainer": {"per_device_train_batch_size": 4, "max_length": 96},
        "rft": {"learning_rate": 1.0e-5, "num_train_epochs": 3},
        "lora": {"enabled": True, "r": 4},
    }
    train = TrainParams.model_validate(train)
    settings = ORACLE.train_settings(train)
    assert settings.algorithm == "rft"  # SFT on gold, whatever TAO's algorithm
    assert settings.rft.learning_rate == 1.0e-5 and settings.rft.num_train_epochs == 3
    assert settings.trainer.per_device_train_batch_size == 4 and settings.lora.r == 4
    override = SftOracleParams.model_validate(
        {"output_dir": "ckpt/oracle", "trainer": {"max_steps": 5}, "rft": {"learning_rate": 2e-5}}
    ).train_settings(train)
    assert override.output_dir == "ckpt/oracle" and override.trainer.max_steps == 5
    assert override.rft.learning_rate == 2e-5 and override.rft.num_train_epochs == 3
    assert override.trainer.max_length == 96
    assert train.trainer.passthrough() == {"per_device_train_batch_size": 4, "max_length": 96}
    with pytest.raises(ParameterError, match=r"unknown parameter 'sft_oracle.epochs'"):
        validate_block("sft_oracle", {"epochs": 3})
    with pytest.raises(ParameterError, match=r"'sft_oracle.trainer.max_stepz'; did you mean"):
        validate_block("sft_oracle", {"trainer": {"max_stepz": 1}})


def test_sft_oracle_pipeline_runs_in_kedro_session(kedro_project, tiny_policy):
    import mlflow
    import torch
    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset
    from taoflow.models import load_policy

    PolicyDataset(str(kedro_project / "data/06_models/base")).save(tiny_policy)
    (kedro_project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    _prompts().to_parquet(kedro_project / "data/03_primary/prompts.parquet")
    with (kedro_project / "data/01_raw/usage_gold.jsonl").open("w") as handle:
        for row in _gold().to_dict("records"):
            handle.write(json.dumps(row) + "\n")
    runtime = {
        "model": {"name_or_path": "tiny-random"},
        "train": {"trainer": {"per_device_train_batch_size": 2, "max_steps": 2, "max_length": 64}},
    }
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["sft_oracle"])
    while mlflow.active_run():
        mlflow.end_run()

    policy = load_policy(str(kedro_project / "data/06_models/sft_oracle/policy"))
    assert policy.lineage["algorithm"] == "sft_oracle" and policy.lineage["labels"] == "gold"
    assert policy.lineage["trainer_algorithm"] == "rft" and policy.lineage["global_step"] == 2
    before = dict(tiny_policy.model.named_parameters())
    changed = [
        n for n, p in policy.model.named_parameters() if not torch.equal(p.detach(), before[n])
    ]
    assert changed, "training left every weight unchanged"
    data = kedro_project / "data/05_model_input/sft_oracle"
    examples = pd.read_parquet(data / "examples.parquet")
    assert sorted(examples["completion"]) == ["-2", "4", "7"]
    assert len(pd.read_parquet(data / "rejects.parquet")) == 2
    assert not (kedro_project / "data/06_models/checkpoints/sft_oracle/round_1").exists()

    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    metrics = run.data.metrics
    assert metrics["sft_oracle.global_step"] == 2 and metrics["sft_oracle.n_examples"] == 3
    assert metrics["sft_oracle.data.n_rejects"] == 2 and np.isfinite(
        metrics["sft_oracle.train_loss"]
    )
    client = mlflow.MlflowClient()
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "sft_oracle.trainer.loss")]
    assert steps == [1, 2]
    assert not client.get_metric_history(run.info.run_id, "train.round_1.loss")


# --------------------------------------------------------------------------- best_of_n


def test_pick_best_takes_the_top_reward_and_the_earliest_sample_on_ties():
    scored = pd.DataFrame(
        {
            "benchmark": "b",
            "item_id": ["a"] * 4 + ["c", "c", "c"] + ["d"] * 3 + ["e", "e"],
            "sample": [0, 1, 2, 3] + [2, 0, 1] + [0, 1, 2] + [1, 0],
            "reward": [0.2, 0.9, 0.9, 0.1] + [0.7, np.nan, 0.5] + [0.3] * 3 + [np.nan] * 2,
        }
    )
    best = pick_best(scored.sample(frac=1.0, random_state=3)).set_index("item_id")
    assert best["sample"].to_dict() == {"a": 1, "c": 2, "d": 0, "e": 0}
    assert best["n_top"].to_dict() == {"a": 2, "c": 1, "d": 3, "e": 2}
    assert (best["n_samples"] == [4, 3, 3, 2]).all()


def _labeled_params(**changes) -> EvaluateParams:
    spec = {"name": "bench", "kind": "labeled", "source": "benchmark"}
    return EvaluateParams.model_validate(
        {
            "benchmarks": [spec],
            "k": 4,
            "n_bootstrap": 50,
            "best_of_n": {"enabled": True, "from": "base"},
            **changes,
        }
    )


def _outputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """base's hand-made outputs on 3 items: greedy + 4 samples with known votes and formats."""
    bench = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "question": ["2 + 3 =", "3 + 3 =", "1 + 3 ="],
            "answer": ["5", "6", "4"],
        }
    )
    samples = {
        # majority 5 (samples 1, 2 tie at the top) → sample 1
        "a": (["3", "5", "5", "7"], ["stop"] * 4),
        # 8 vs 6 two each: no majority, every format passes → all tie → sample 0 ("8", wrong)
        "b": (["8", "8", "8 is wrong, 6", "6"], ["stop"] * 4),
        # majority 4, but sample 2 hit the token cap (format penalty) → sample 3
        "c": (["9", "nothing", "4", "4"], ["stop", "stop", "length", "stop"]),
    }
    rows = []
    for item, (completions, finish) in samples.items():
        ref = bench.set_index("id").at[item, "answer"]
        question = bench.set_index("id").at[item, "question"]
        base = {"model": "base", "benchmark": "bench", "item_id": item, "prompt": question}
        rows.append(
            {**base, "mode": "greedy", "sample": 0, "completion": "5", "finish_reason": "stop"}
            | {"reference": ref}
        )
        for j, (text, reason) in enumerate(zip(completions, finish, strict=True)):
            rows.append(
                {
                    **base,
                    "mode": "sampled",
                    "sample": j,
                    "completion": text,
                    "finish_reason": reason,
                }
                | {"reference": ref}
            )
    frame = pd.DataFrame(rows).assign(n_tokens=1, logprob=0.0, seed=0)
    return frame, bench


def test_best_of_n_scores_each_items_samples_as_a_group_and_reports_accuracy_only():
    outputs, bench = _outputs()
    params = _labeled_params()
    inputs = {"outputs__base": {"shard": outputs}, "source__benchmark": bench}
    selected = select_best_of_n(params, SCORE, TaskParams.model_validate(TASK), **inputs)
    assert selected.set_index("item_id")["sample"].to_dict() == {"a": 1, "b": 0, "c": 3}
    assert (selected["model"] == "best_of_n").all() and (selected["source_model"] == "base").all()
    # labels never decide the choice: same pick with every reference changed
    relabeled = outputs.assign(reference="0")
    task = TaskParams.model_validate(TASK)
    again = select_best_of_n(params, SCORE, task, **{**inputs, "outputs__base": {"s": relabeled}})
    assert again["sample"].tolist() == selected["sample"].tolist()

    results, paired, per_prompt, metrics = compute_eval_results(
        params, task, 0, models=["base", "best_of_n"], best_of_n=selected, **inputs
    )
    rows = results.set_index(["model", "metric"])["value"]
    assert set(results.loc[results["model"] == "best_of_n", "metric"]) == {"accuracy"}
    assert rows["best_of_n", "accuracy"] == pytest.approx(2 / 3)  # a and c right, b wrong
    assert rows["base", "accuracy"] == pytest.approx(1 / 3)  # greedy "5" right on a only
    assert rows["base", "maj@4"] == pytest.approx((1 + 0.5 + 1) / 3)  # b: expected tie credit
    assert paired[["model", "metric"]].values.tolist() == [["best_of_n", "accuracy"]]
    assert (paired["wins"].iloc[0], paired["losses"].iloc[0]) == (1, 0)
    chosen = per_prompt[per_prompt["model"] == "best_of_n"].set_index("item_id")
    assert chosen["greedy_completion"].to_dict() == {"a": "5", "b": "8", "c": "4"}
    assert chosen["selected_sample"].to_dict() == {"a": 1, "b": 0, "c": 3}
    assert "evaluate.bench.best_of_n.accuracy" in metrics
    assert "evaluate.bench.best_of_n.pass_at_1" not in metrics


def test_best_of_n_settings_validate_against_the_evaluated_models():
    assert best_of_n_settings(EvaluateParams(), ["base"]) is None
    assert best_of_n_settings(_labeled_params(), ["base", "round_1"]) == {
        "from": "base",
        "name": "best_of_n",
    }
    with pytest.raises(ValueError, match="from 'round_9' is not an evaluated model"):
        best_of_n_settings(
            _labeled_params(best_of_n={"enabled": True, "from": "round_9"}), ["base"]
        )
    with pytest.raises(ValueError, match="differ from the evaluated models"):
        best_of_n_settings(_labeled_params(best_of_n={"enabled": True, "name": "base"}), ["base"])
    with pytest.raises(ValueError, match=r"best_of_n\.n\n  Extra inputs are not permitted"):
        EvaluateParams.model_validate({"best_of_n": {"enabled": True, "n": 4}})


def test_evaluate_pipeline_with_best_of_n_in_kedro_session(kedro_project, tiny_policy):
    import mlflow
    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset
    from taoflow.scoring import score_candidates

    PolicyDataset(str(kedro_project / "data/06_models/base")).save(tiny_policy)
    # stand-alone, evaluate reads base + round_1 (tao.rounds = 1) from the configuration
    PolicyDataset(str(kedro_project / "data/06_models/round_1/policy")).save(tiny_policy)
    (kedro_project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    holdout = pd.DataFrame([_prompt("2 + 2 =", "holdout"), _prompt("3 + 1 =", "holdout")])
    holdout.to_parquet(kedro_project / "data/03_primary/prompts.parquet")
    overrides = {
        "limit": 3,
        "k": 3,
        "max_new_tokens": 4,
        "n_bootstrap": 50,
        "best_of_n": {"enabled": True, "from": "base"},
    }
    runtime = {"evaluate": overrides, "tao": {"sft_oracle": False}}
    # a composed run's report: a stage run alone must leave it alone
    composed = kedro_project / "data/08_reporting/eval_report.md"
    composed.parent.mkdir(parents=True)
    composed.write_text("the composed run's report\n")
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["evaluate"])
    while mlflow.active_run():
        mlflow.end_run()

    assert composed.read_text() == "the composed run's report\n"
    assert sorted(p.name for p in composed.parent.iterdir()) == ["eval_report.md", "stages"]
    assert mlflow.MlflowClient().search_registered_models() == []  # only promote registers
    # its own results under its own folders (taoflow.config.stages)
    reporting = kedro_project / "data/08_reporting/stages/evaluate"
    assert (reporting / "stage_timings.md").exists()
    results = pd.read_parquet(reporting / "eval_results.parquet")
    assert list(dict.fromkeys(results["model"])) == ["base", "best_of_n", "round_1"]
    mine = results[results["model"] == "best_of_n"]
    assert mine[["benchmark", "metric"]].values.tolist() == [["chain_sum", "accuracy"]]
    assert (mine["n"] == 3).all()
    paired = pd.read_parquet(reporting / "eval_paired.parquet")
    paired = paired[paired["model"] == "best_of_n"]
    assert paired[["model", "benchmark", "metric"]].values.tolist() == [
        ["best_of_n", "chain_sum", "accuracy"]
    ]
    report = (reporting / "eval_report.md").read_text()
    assert "| best_of_n | " in report and "best_of_n vs base" in report
    # no generation of its own (no folder of outputs): the choice is among base's samples
    outputs = kedro_project / "data/07_model_output/stages/evaluate/evaluate"
    assert sorted(p.name for p in outputs.iterdir()) == [
        "base",
        "best_of_n.parquet",
        "label_free_scored.parquet",
        "round_1",
    ]
    base = pd.concat(pd.read_parquet(p) for p in sorted((outputs / "base").glob("*.parquet")))
    sampled = base[(base["benchmark"] == "chain_sum") & (base["mode"] == "sampled")]
    per_prompt = pd.read_parquet(reporting / "eval_per_prompt.parquet")
    chosen = per_prompt[per_prompt["model"] == "best_of_n"].set_index("item_id")
    # the score stage's own scorers, run here independently, pick the same samples
    conf = kedro_project / "conf/base"
    score = yaml.safe_load((conf / "parameters_score.yml").read_text())["score"]
    task = yaml.safe_load((conf / "parameters.yml").read_text())["task"]
    candidates = sampled.drop(columns="reference").assign(
        prompt_id=sampled["item_id"],
        candidate_id=sampled["item_id"] + "#" + sampled["sample"].astype(str),
    )
    messages = [
        [{"role": "system", "content": task["system_prompt"]}, {"role": "user", "content": p}]
        for p in chosen["prompt"]
    ]
    prompts = pd.DataFrame({"prompt_id": chosen.index, "messages": messages})
    scored, _ = score_candidates(candidates, prompts, score, task)
    expected = pick_best(scored).set_index("item_id")["sample"]
    assert chosen["selected_sample"].to_dict() == expected.to_dict()
    for item, row in chosen.iterrows():
        pick = sampled[(sampled["item_id"] == item) & (sampled["sample"] == row["selected_sample"])]
        assert row["greedy_completion"] == pick["completion"].iloc[0]

    run = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")[0]
    assert "evaluate.chain_sum.best_of_n.accuracy" in run.data.metrics
    assert "evaluate.chain_sum.best_of_n_vs_base.accuracy.diff" in run.data.metrics
