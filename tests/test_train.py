"""The train stage: example builders, fail-fast checks, each TRL algorithm, resume, a Kedro run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import TrainerCallback

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.shared import TaskParams
from taoflow.config.train import DPOParams, KTOParams, RFTParams, TrainParams
from taoflow.core.ids import frame_hash
from taoflow.datasets import MlflowPolicyDataset, PolicyDataset
from taoflow.models import load_policy
from taoflow.training import (
    build_dpo_pairs,
    build_examples,
    build_kto_examples,
    build_rft_examples,
    check_lineage,
    check_lora_targets,
    make_grpo_reward,
    train_policy,
)

TASK = TaskParams(system_prompt="Answer with the final number only.")


def make_prompts(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "messages": [[{"role": "user", "content": f"What is {i} + 3?"}] for i in range(n)],
            "source": "test",
            "split": "train",
            "meta": "{}",
        }
    )


def make_scored(rewards: dict[str, list[float]], round_: int = 1) -> pd.DataFrame:
    """One row per candidate; completion text encodes (prompt, rank) so pairs are checkable."""
    rows = []
    for prompt_id, values in rewards.items():
        for j, reward in enumerate(values):
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "candidate_id": f"{prompt_id}-c{j}",
                    "round": round_,
                    "completion": f"answer {prompt_id} {j}",
                    "finish_reason": "stop",
                    "reward": reward,
                    "zero_signal": len(set(values)) <= 1,
                }
            )
    return pd.DataFrame(rows)


def accounted(scored: pd.DataFrame, used_ids: set[str], rejects: pd.DataFrame) -> bool:
    """Nothing dropped silently: every scored row is used or rejected with a reason."""
    ids = set(rejects["candidate_id"]) | used_ids
    return ids == set(scored["candidate_id"]) and rejects["reason"].notna().all()


# ---------------------------------------------------------------- example builders (pure, fast)


def test_dpo_pairs_respect_margin_ties_and_zero_signal():
    scored = make_scored(
        {
            "p0": [1.0, 0.0, 1.0, 0.0],  # two pairs possible
            "p1": [1.0, 1.0, 1.0, 1.0],  # zero signal: no pair
            "p2": [0.6, 0.5, 0.6, 0.5],  # gap 0.1 < min_margin
            "p3": [0.0, 1.1, 0.1, 1.0],  # best is c1, worst is c0
        }
    )
    settings = DPOParams.model_validate({"min_margin": 0.5, "pairs_per_prompt": 2})
    pairs, rejects = build_dpo_pairs(scored, make_prompts(), settings, TASK)
    assert set(pairs["prompt_id"]) == {"p0", "p3"}
    assert (pairs["chosen_reward"] - pairs["rejected_reward"] >= 0.5).all()
    p3 = pairs[pairs["prompt_id"] == "p3"]
    assert p3.iloc[0][["chosen_id", "rejected_id"]].tolist() == ["p3-c1", "p3-c0"]
    assert p3.iloc[1][["chosen_id", "rejected_id"]].tolist() == ["p3-c3", "p3-c2"]
    # ties are broken by candidate id, so the choice does not depend on row order
    p0 = pairs[pairs["prompt_id"] == "p0"]
    assert p0[["chosen_id", "rejected_id"]].values.tolist() == [
        ["p0-c0", "p0-c3"],
        ["p0-c2", "p0-c1"],
    ]
    assert (rejects.loc[rejects["prompt_id"] == "p1", "reason"] == "zero-signal group").all()
    assert rejects.loc[rejects["prompt_id"] == "p2", "reason"].str.contains("min_margin").all()
    # prompts are framed with the task's system prompt, completions as assistant text
    assert pairs["prompt"].iloc[0][0] == {"role": "system", "content": TASK.system_prompt}
    used = set(pairs["chosen_id"]) | set(pairs["rejected_id"])
    assert accounted(scored, used, rejects)
    shuffled = scored.sample(frac=1.0, random_state=3)
    again, _ = build_dpo_pairs(shuffled, make_prompts(), settings, TASK)
    pd.testing.assert_frame_equal(pairs, again)


def test_dpo_never_pairs_equal_rewards_even_with_zero_margin():
    scored = make_scored({"p0": [1.0, 1.0, 0.0]})
    scored["zero_signal"] = False
    pairs, _ = build_dpo_pairs(
        scored,
        make_prompts(1),
        DPOParams.model_validate({"min_margin": 0.0, "pairs_per_prompt": 3}),
    )
    assert len(pairs) == 1 and (pairs["chosen_reward"] > pairs["rejected_reward"]).all()


def test_dpo_keeps_truncated_candidates_out_of_chosen():
    scored = make_scored({"p0": [1.0, 0.9, 0.0]})
    scored.loc[0, "finish_reason"] = "length"
    pairs, _ = build_dpo_pairs(
        scored, make_prompts(1), DPOParams.model_validate({"min_margin": 0.5})
    )
    assert pairs["chosen_id"].tolist() == ["p0-c1"]


def test_unusable_rows_are_rejected_with_reasons():
    prompts = make_prompts(3)
    prompts.loc[2, "split"] = "holdout"
    scored = make_scored({"p0": [1.0, 0.0, float("nan")], "p2": [1.0, 0.0], "px": [1.0, 0.0]})
    pairs, rejects = build_dpo_pairs(scored, prompts, DPOParams())
    reasons = rejects.set_index("candidate_id")["reason"]
    assert reasons["p0-c2"] == "reward is missing/NaN"
    assert reasons["p2-c0"].startswith("holdout prompt")
    assert reasons["px-c0"] == "prompt_id not in prompts"
    assert accounted(scored, set(pairs["chosen_id"]) | set(pairs["rejected_id"]), rejects)


def test_rft_keeps_top_k_above_threshold_and_kto_labels_by_reward():
    scored = make_scored({"p0": [1.0, 0.2, 1.1, 0.9], "p1": [0.0, 0.0, 0.0, 0.0]})
    rft, rejects = build_rft_examples(
        scored, make_prompts(), RFTParams.model_validate({"min_reward": 0.5, "top_k": 2})
    )
    assert rft["candidate_id"].tolist() == ["p0-c2", "p0-c0"]
    assert accounted(scored, set(rft["candidate_id"]), rejects)
    kto, rejects = build_kto_examples(
        scored, make_prompts(), KTOParams.model_validate({"threshold": 0.5, "max_per_prompt": 2})
    )
    assert kto.groupby("prompt_id")["label"].apply(list).to_dict() == {
        "p0": [True, False],  # best and worst of the group
        "p1": [False, False],  # unanimous groups still teach KTO
    }
    assert accounted(scored, set(kto["candidate_id"]), rejects)


def test_parameters_file_and_every_experiment_env_validate():
    import yaml

    from tests.conftest import PROJECT_ROOT

    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_train.yml").read_text())
    TrainParams.model_validate(params["train"])
    for env in ("dpo", "rft", "kto", "grpo", "lora"):
        override = yaml.safe_load((PROJECT_ROOT / f"conf/{env}/parameters_train.yml").read_text())
        merged = {**params["train"], **override["train"]}
        for key, block in override["train"].items():
            if isinstance(block, dict):
                merged[key] = {**params["train"][key], **block}
        TrainParams.model_validate(merged)  # every experiment env is a valid configuration


# ---------------------------------------------------------------- fail fast, before compute


def test_bad_configurations_fail_fast_with_clear_messages(tiny_policy):
    with pytest.raises(ParameterError, match="train.algorithm"):
        validate_block("train", {"algorithm": "ppo"})
    with pytest.raises(ParameterError, match=r"'train.dpo.bta'; did you mean 'beta'"):
        validate_block("train", {"algorithm": "dpo", "dpo": {"bta": 0.1}})
    with pytest.raises(ParameterError, match="multiple of num_generations"):
        validate_block(
            "train",
            {"algorithm": "grpo", "grpo": {"num_generations": 3, "per_device_train_batch_size": 8}},
        )
    flat = make_scored({"p0": [1.0, 0.9], "p1": [0.5, 0.5]})
    with pytest.raises(ValueError, match="no preference pairs.*min_margin=0.5"):
        build_examples(flat, make_prompts(), TrainParams.model_validate({"algorithm": "dpo"}))
    with pytest.raises(ValueError, match=r"\['qkv'\] match no module.*q_proj"):
        check_lora_targets(tiny_policy.model, ["q_proj", "qkv"])
    check_lora_targets(tiny_policy.model, ["q_proj", "v_proj"])


def test_scored_data_from_another_policy_is_refused():
    scored = make_scored({"p0": [1.0, 0.0]}, round_=2)
    with pytest.raises(ValueError, match="round 2.*round 0"):
        check_lineage(scored, {"name": "tiny-random", "base_model": "tiny-random", "round": 0})
    assert check_lineage(scored, {"name": "x", "round": 1}) == 2
    scored["base_model"] = "other-model"
    with pytest.raises(ValueError, match="different model"):
        check_lineage(scored, {"name": "x", "base_model": "tiny-random", "round": 1})


def test_lora_targets_are_checked_before_training(tiny_model_dir, tmp_path):
    settings = TrainParams.model_validate(
        {"output_dir": str(tmp_path), "lora": {"enabled": True, "target_modules": ["nope"]}}
    )
    scored = make_scored({"p0": [1.0, 0.0]})
    examples, _ = build_examples(scored, make_prompts(1), settings, TASK)
    with pytest.raises(ValueError, match="match no module"):
        train_policy(
            load_policy(str(tiny_model_dir)),
            examples,
            settings,
            seed=0,
            round_=1,
            data_hashes={},
        )
    assert not (tmp_path / "round_1").exists()  # failed before any checkpoint or step


# ---------------------------------------------------------------- training with TRL (tiny model)


def base_train() -> dict:
    """conf/base's train block: the trainer knobs a run gets (TRL's defaults elsewhere)."""
    import yaml

    from tests.conftest import PROJECT_ROOT

    return yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_train.yml").read_text())["train"]


def tiny_params(tmp_path, algorithm: str, **extra) -> dict:
    """conf/base's train block, cut down to a few tiny steps."""
    params = base_train()
    params.update(algorithm=algorithm, output_dir=str(tmp_path / "ckpt"))
    params["trainer"].update(per_device_train_batch_size=4, max_steps=2, max_length=64)
    params["grpo"].update(num_generations=4, per_device_train_batch_size=8, max_completion_length=6)
    for key, value in extra.items():
        if isinstance(value, dict):
            params.setdefault(key, {}).update(value)
        else:
            params[key] = value
    return params


SCORED = make_scored({f"p{i}": [1.0, 0.0, 1.0, 0.0] for i in range(4)})


@pytest.mark.parametrize(
    ("algorithm", "lora"), [("rft", False), ("dpo", True), ("kto", False), ("grpo", False)]
)
def test_each_algorithm_trains_a_few_steps_and_changes_weights(
    algorithm, lora, tiny_model_dir, tmp_path, mlflow_uri
):
    import mlflow

    settings = TrainParams.model_validate(tiny_params(tmp_path, algorithm, lora={"enabled": lora}))
    prompts = make_prompts()
    examples, _ = build_examples(SCORED, prompts, settings, TASK)
    calls = []

    def stub_score(candidates, prompts_frame):
        """Stands in for the score stage: rewards longer completions; records what it saw."""
        calls.append(candidates)
        return candidates.assign(reward=candidates["completion"].str.len().astype(float)), {}

    reward_fn = make_grpo_reward(stub_score, prompts, round_=1, max_completion_length=6)
    policy = load_policy(str(tiny_model_dir))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    with mlflow.start_run() as run:
        trained, metrics, curves = train_policy(
            policy,
            examples,
            settings,
            seed=0,
            round_=1,
            data_hashes={"scored": frame_hash(SCORED)},
            reward_fn=reward_fn,
        )
    assert metrics["global_step"] == 2
    after = trained.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if lora:  # merged weights moved only where adapters were; the adapter is kept
        assert changed and all("self_attn" in k for k in changed)
        assert trained.adapter is not None
    else:
        assert len(changed) == len(before)
    assert trained.lineage["round"] == 1 and trained.lineage["algorithm"] == algorithm
    assert trained.lineage["base_model"] == "tiny-random"
    # per-step curves come back for the node's metrics output; nothing is logged directly
    assert [m["step"] for m in curves["train.round_1.loss"]] == [1, 2]
    assert not mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    if algorithm == "grpo":  # the scorer saw whole groups, as the score stage would
        assert len(calls) >= 1
        assert calls[0].groupby("prompt_id").size().eq(4).all()
        assert {"candidate_id", "completion", "finish_reason", "round"} <= set(calls[0].columns)
    if lora:  # the saved policy reloads (merged weights + adapter/) and generates
        path = tmp_path / "policy"
        PolicyDataset(path=str(path)).save(trained)
        assert (path / "adapter" / "adapter_config.json").is_file()
        reloaded = PolicyDataset(path=str(path)).load()
        assert reloaded.lineage["algorithm"] == "dpo"
        for name, value in reloaded.model.state_dict().items():
            assert torch.allclose(value, after[name])
        batch = reloaded.tokenizer.apply_chat_template(
            [[{"role": "user", "content": "What is 1 + 3?"}]],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = reloaded.model.generate(**batch, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == batch["input_ids"].shape[1] + 3


class Interrupt(TrainerCallback):
    """Simulates a killed run: raises once the checkpoint of step ``at`` is on disk."""

    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_training_resumes_and_ends_at_the_same_step(tiny_model_dir, tmp_path):
    params = tiny_params(tmp_path, "rft", keep_checkpoints=True)
    params["trainer"].update(max_steps=4, save_steps=1, save_total_limit=2, warmup_steps=0)
    settings = TrainParams.model_validate(params)
    examples, _ = build_examples(SCORED, make_prompts(), settings, TASK)
    kwargs = {"seed": 0, "round_": 1, "data_hashes": {"scored": frame_hash(SCORED)}}

    elsewhere = settings.model_copy(update={"output_dir": str(tmp_path / "straight")})
    straight, m_straight, _ = train_policy(
        load_policy(str(tiny_model_dir)), examples, elsewhere, **kwargs
    )
    assert not m_straight["resumed"]
    with pytest.raises(KeyboardInterrupt):
        train_policy(
            load_policy(str(tiny_model_dir)), examples, settings, callbacks=[Interrupt(2)], **kwargs
        )
    assert (tmp_path / "ckpt" / "round_1" / "checkpoint-2").is_dir()
    resumed, m_resumed, _ = train_policy(
        load_policy(str(tiny_model_dir)), examples, settings, **kwargs
    )
    assert m_resumed["resumed"] and resumed.lineage["resumed_from"] == "checkpoint-2"
    assert m_resumed["global_step"] == m_straight["global_step"] == 4
    for name, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[name], atol=1e-6), name
    # a different dataset invalidates the checkpoints: a fresh start, not a resume
    fresh, m_fresh, _ = train_policy(
        load_policy(str(tiny_model_dir)),
        examples,
        settings,
        **{**kwargs, "data_hashes": {"scored": "changed"}},
    )
    assert not m_fresh["resumed"] and m_fresh["global_step"] == 4


# ---------------------------------------------------------------- the pipeline through Kedro


def test_train_pipeline_runs_in_kedro_session(kedro_project, tiny_model_dir):
    import mlflow
    import yaml
    from kedro.framework.session import KedroSession

    data = kedro_project / "data" / "05_model_input" / "handmade"
    data.mkdir(parents=True)
    make_prompts().to_parquet(data / "prompts.parquet")
    SCORED.to_parquet(data / "scored.parquet")
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(
        yaml.safe_dump(
            {
                "prompts": {
                    "type": "pandas.ParquetDataset",
                    "filepath": str(data / "prompts.parquet"),
                },
                "round_1.scored": {
                    "type": "pandas.ParquetDataset",
                    "filepath": str(data / "scored.parquet"),
                },
                # opt in to logging the policy as an MLflow model (off in conf/base)
                "round_1.policy": {
                    "type": "taoflow.datasets.MlflowPolicyDataset",
                    "path": "data/06_models/round_1/policy",
                    "artifact_path": "round_1-policy",
                    "log_model": True,
                },
            }
        )
    )
    PolicyDataset(path=str(kedro_project / "data/06_models/base")).save(
        load_policy(str(tiny_model_dir))
    )
    runtime = {
        "model": {"name_or_path": "tiny-random"},
        "train": {
            "algorithm": "dpo",
            "trainer": {"per_device_train_batch_size": 4, "max_steps": 2, "max_length": 64},
        },
    }
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["train"])

    policy = load_policy(str(kedro_project / "data/06_models/round_1/policy"))
    assert policy.lineage["round"] == 1 and policy.lineage["algorithm"] == "dpo"
    assert policy.lineage["data_hashes"]["scored"] == frame_hash(
        pd.read_parquet(data / "scored.parquet")
    )
    examples = pd.read_parquet(kedro_project / "data/05_model_input/round_1/train_examples.parquet")
    assert len(examples) == 4 and {"chosen", "rejected"} <= set(examples.columns)
    assert not (kedro_project / "data/06_models/checkpoints/round_1").exists()

    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["train.global_step"] == 2 and metrics["train.data.n_examples"] == 4
    client = mlflow.MlflowClient()
    for name in ("loss", "rewards/margins", "rewards/accuracies", "learning_rate"):
        steps = [
            m.step for m in client.get_metric_history(run.info.run_id, f"train.round_1.{name}")
        ]
        assert steps == [1, 2], name
    assert run.data.tags["policy.round_1-policy.algorithm"] == "dpo"
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert [m.name for m in logged] == ["round_1-policy"]
    info = mlflow.models.get_model_info(logged[0].model_uri)
    assert "messages" in info.signature.inputs.input_names()  # a chat model, with an example
    assert info.saved_input_example_info["type"] == "json_object"
    assert run.info.run_name == "train"
    assert np.isfinite(metrics["train.train_loss"])


def test_mlflow_policy_dataset_is_silent_without_a_run(tiny_policy, tmp_path):
    ds = MlflowPolicyDataset(path=str(tmp_path / "p"), artifact_path="x")
    ds.save(tiny_policy)  # no active run: saves, logs nothing, raises nothing
    assert ds.load().lineage["base_model"] == "tiny-random"


def test_grpo_node_stops_on_collapse_and_records_why(tiny_model_dir, tmp_path, mlflow_uri):
    """The train node arms the collapse guard for online RL: tripped, it stops and says so."""
    import mlflow

    from taoflow.pipelines.train.nodes import build_train_examples, train

    trip_at_once = {  # any reward change with any entropy counts as collapse
        "reward_rise": -1.0e9,
        "entropy_ratio": 1.0e9,
        "baseline_logs": 1,
        "patience": 1,
    }
    params = TrainParams.model_validate(
        tiny_params(
            tmp_path,
            "grpo",
            trainer={"max_steps": 4, "logging_steps": 1},
            early_stopping=trip_at_once,
        )
    )
    prompts = make_prompts()
    examples, _, _ = build_train_examples(SCORED, prompts, params, TASK)
    score = {"scorers": [{"name": "format", "type": "format", "weight": 1.0}]}
    with mlflow.start_run():
        policy, metrics = train(
            train_examples=examples,
            scored=SCORED,
            prompts=prompts,
            input_policy=load_policy(str(tiny_model_dir)),
            train=params,
            seed=0,
            task=TASK,
            score=score,
        )
    summary = policy.lineage["early_stopping"]
    assert summary["stopped"] and summary["reason"]
    assert summary["stopped_step"] < 4
    assert metrics["train.early_stopped"]["value"] == 1.0
    assert metrics["train.round_1.loss"][0]["step"] == 1  # the per-step curves ride along
