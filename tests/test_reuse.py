"""Work done once: yardstick trainings reused only when nothing that decides them changed."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from taoflow.config.reuse import ReuseParams
from taoflow.config.sft_oracle import SftOracleParams
from taoflow.config.train import TrainParams
from taoflow.pipelines.judge_distill.nodes import train_judge_distill
from taoflow.pipelines.sft_oracle.nodes import build_sft_oracle_examples, train_sft_oracle
from taoflow.training import reuse as reuse_module
from taoflow.training import supervised
from tests.test_baselines import TASK_PARAMS, _gold, _prompts
from tests.test_train import base_train


def _train(**trainer) -> TrainParams:
    """conf/base's train block, cut down to two tiny steps (``trainer`` overrides on top)."""
    params = base_train()
    params["trainer"].update(
        {"per_device_train_batch_size": 2, "max_steps": 2, "max_length": 64, **trainer}
    )
    return TrainParams.model_validate(params)


TRAIN = _train()


@pytest.fixture()
def examples() -> pd.DataFrame:
    frame, _, _ = build_sft_oracle_examples(_prompts(), _gold(), SftOracleParams(), TASK_PARAMS)
    return frame


def _oracle(tmp_path, **changes) -> SftOracleParams:
    return SftOracleParams.model_validate({"output_dir": str(tmp_path / "ckpt"), **changes})


def _reuse(tmp_path, **changes) -> ReuseParams:
    return ReuseParams.model_validate({"cache_dir": str(tmp_path / "cache"), **changes})


def _weights(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.state_dict().items()}


class FakeTrainer:
    """Stands in for ``train_policy``: counts calls, nudges one weight, returns fixed metrics."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, policy, examples, settings, **kwargs):
        self.calls += 1
        with torch.no_grad():
            next(policy.model.parameters()).add_(0.01)
        policy.lineage.update(seed=kwargs["seed"])
        return policy, {"train_loss": 1.5, "global_step": 2}, {}


def test_unchanged_inputs_reuse_the_cached_training_without_training(
    tmp_path, tiny_policy, examples, monkeypatch
):
    params, reuse = _oracle(tmp_path), _reuse(tmp_path)
    first, metrics = train_sft_oracle(
        examples, copy.deepcopy(tiny_policy), params, TRAIN, 7, reuse=reuse
    )
    assert metrics["reuse.sft_oracle"]["value"] == 0.0
    key = first.lineage["reuse_key"]
    entry = tmp_path / "cache" / "sft_oracle" / key
    assert (entry / "config.json").is_file() and (entry / "reuse.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("an unchanged training was run again")

    monkeypatch.setattr(supervised, "train_policy", no_training)
    again, cached_metrics = train_sft_oracle(
        examples, copy.deepcopy(tiny_policy), params, TRAIN, 7, reuse=reuse
    )
    assert cached_metrics["reuse.sft_oracle"]["value"] == 1.0
    assert again.lineage == first.lineage and again.lineage["reuse_key"] == key
    # the training's own numbers and curves come back with the hit
    assert cached_metrics["sft_oracle.train_loss"] == metrics["sft_oracle.train_loss"]
    assert cached_metrics["sft_oracle.trainer.loss"] == metrics["sft_oracle.trainer.loss"]
    expected, got = _weights(first), _weights(again)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    # the trained weights differ from the base: the hit is the training, not the input
    base = _weights(tiny_policy)
    assert any(not torch.equal(base[n], got[n]) for n in got)


def test_every_change_that_could_alter_the_result_misses(
    tmp_path, tiny_policy, examples, monkeypatch
):
    fake = FakeTrainer()
    monkeypatch.setattr(supervised, "train_policy", fake)
    params, reuse = _oracle(tmp_path), _reuse(tmp_path, keep=50)

    def run(*, examples=examples, params=params, seed=7, base=None, reuse=reuse, train=TRAIN):
        before = fake.calls
        policy, metrics = train_sft_oracle(
            examples, base or copy.deepcopy(tiny_policy), params, train, seed, reuse=reuse
        )
        return fake.calls - before, policy, metrics

    assert run()[0] == 1
    assert run()[0] == 0  # unchanged: hit
    one_row = examples.copy()
    one_row.loc[one_row.index[0], "completion"] = "8"
    assert run(examples=one_row)[0] == 1, "a changed example row was served from the cache"
    assert run(examples=examples.iloc[:-1])[0] == 1, "a dropped example row hit"
    assert run(params=_oracle(tmp_path, rft={"learning_rate": 7e-5}))[0] == 1
    assert run(params=_oracle(tmp_path, completion_template="{answer}"))[0] == 0  # same value
    assert run(train=_train(max_steps=3))[0] == 1
    assert run(seed=8)[0] == 1, "another seed was served from the cache"
    nudged = copy.deepcopy(tiny_policy)
    with torch.no_grad():
        weight = next(nudged.model.parameters())
        row = weight[1]  # row 0 of the embedding is the (all-zero) padding token
        row[0], row[1] = row[1].clone(), row[0].clone()  # same sums, other weights
    assert not torch.equal(weight, next(tiny_policy.model.parameters()))
    assert run(base=nudged)[0] == 1, "other base weights were served from the cache"
    renamed = copy.deepcopy(tiny_policy)
    renamed.lineage = {**renamed.lineage, "round": 3}
    assert run(base=renamed)[0] == 1, "another base lineage was served from the cache"
    monkeypatch.setattr(reuse_module, "code_version", lambda *a: "edited-training-code")
    assert run()[0] == 1, "a code change was served from the cache"
    monkeypatch.undo()
    monkeypatch.setattr(supervised, "train_policy", fake)
    assert run()[0] == 0  # back to the original code: its entry is still there
    calls, _, metrics = run(reuse=_reuse(tmp_path, force=True))
    assert calls == 1 and metrics["reuse.sft_oracle"]["value"] == 0.0
    calls, policy, metrics = run(reuse=_reuse(tmp_path, enabled=False))
    assert calls == 1 and "reuse.sft_oracle" not in metrics
    assert "reuse_key" not in policy.lineage


def test_stages_keep_apart_and_a_broken_entry_is_retrained(
    tmp_path, tiny_policy, examples, monkeypatch
):
    from taoflow.config.judge_distill import JudgeDistillParams

    fake = FakeTrainer()
    monkeypatch.setattr(supervised, "train_policy", fake)
    reuse = _reuse(tmp_path)
    oracle, _ = train_sft_oracle(
        examples, copy.deepcopy(tiny_policy), _oracle(tmp_path), TRAIN, 7, reuse=reuse
    )
    distill_params = JudgeDistillParams.model_validate({"output_dir": str(tmp_path / "ckpt")})
    distilled, metrics = train_judge_distill(
        examples, copy.deepcopy(tiny_policy), distill_params, TRAIN, 7, reuse=reuse
    )
    assert fake.calls == 2 and metrics["reuse.judge_distill"]["value"] == 0.0
    assert distilled.lineage["reuse_key"] != oracle.lineage["reuse_key"]
    # an entry whose metadata is gone (a half-copied cache) is not trusted
    entry = tmp_path / "cache" / "sft_oracle" / oracle.lineage["reuse_key"]
    (entry / "reuse.json").unlink()
    train_sft_oracle(examples, copy.deepcopy(tiny_policy), _oracle(tmp_path), TRAIN, 7, reuse=reuse)
    assert fake.calls == 3
    assert json.loads((entry / "reuse.json").read_text())["parts"]["seed"] == 7


def test_the_cache_keeps_the_latest_used_entries_per_stage(
    tmp_path, tiny_policy, examples, monkeypatch
):
    fake = FakeTrainer()
    monkeypatch.setattr(supervised, "train_policy", fake)
    reuse = _reuse(tmp_path, keep=2)

    def key(seed: int) -> str:
        policy, _ = train_sft_oracle(
            examples, copy.deepcopy(tiny_policy), _oracle(tmp_path), TRAIN, seed, reuse=reuse
        )
        return policy.lineage["reuse_key"]

    first, second = key(1), key(2)
    assert key(1) == first and fake.calls == 2  # a hit makes seed 1 the latest used
    third = key(3)
    kept = {p.name for p in (tmp_path / "cache" / "sft_oracle").iterdir()}
    assert kept == {first, third} and second not in kept


def test_a_rerun_in_kedro_session_reuses_and_tags_mlflow(kedro_project, tiny_policy):
    import mlflow
    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset

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
    for _ in range(2):
        with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
            session.run(pipeline_names=["sft_oracle"])
        while mlflow.active_run():
            mlflow.end_run()

    first, second = sorted(
        mlflow.search_runs(experiment_names=["taoflow"], output_format="list"),
        key=lambda r: r.info.start_time,
    )
    assert first.data.metrics["reuse.sft_oracle"] == 0.0
    assert second.data.metrics["reuse.sft_oracle"] == 1.0
    key = second.data.tags["reuse_key.sft_oracle"]
    assert key == first.data.tags["reuse_key.sft_oracle"]
    assert (kedro_project / "data/06_models/cache/sft_oracle" / key / "reuse.json").is_file()
    assert (
        second.data.metrics["sft_oracle.train_loss"] == first.data.metrics["sft_oracle.train_loss"]
    )
