"""Work done once for TAO rounds: a round's training is reused only when nothing that decides it
changed (starting policy, examples, scored rows, resolved train block, seed, code)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from taoflow.config.reuse import ReuseParams
from taoflow.config.train import TrainParams
from taoflow.models import load_policy
from taoflow.pipelines.train.nodes import build_train_examples, train
from taoflow.training import reuse as reuse_module
from taoflow.training import trainers
from tests.test_train import SCORED, TASK, make_prompts, tiny_params

SCORE = {"scorers": [{"name": "format", "type": "format", "weight": 1.0}]}


@pytest.fixture(scope="module")
def start(tiny_model_dir):
    return load_policy(str(tiny_model_dir))


def _settings(tmp_path, **extra) -> TrainParams:
    return TrainParams.model_validate(tiny_params(tmp_path, "rft", **extra))


def _reuse(tmp_path, **changes) -> ReuseParams:
    return ReuseParams.model_validate({"cache_dir": str(tmp_path / "cache"), **changes})


def _weights(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.state_dict().items()}


def _round(start, settings, reuse, *, scored=SCORED, examples=None, seed=0):
    prompts = make_prompts()
    if examples is None:
        examples, _, _ = build_train_examples(scored, prompts, settings, TASK)
    return train(
        train_examples=examples,
        scored=scored,
        prompts=prompts,
        input_policy=copy.deepcopy(start),
        train=settings,
        seed=seed,
        task=TASK,
        score=SCORE,
        reuse=reuse,
    )


class FakeTrainer:
    """Stands in for ``train_policy``: counts calls, nudges one weight, returns fixed numbers."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, policy, examples, settings, **kwargs):
        self.calls += 1
        with torch.no_grad():
            next(policy.model.parameters()).add_(0.01)
        policy.lineage.update(round=kwargs["round_"], seed=kwargs["seed"])
        return policy, {"train_loss": 1.5, "global_step": 2}, {}


def test_an_unchanged_round_is_reused_with_the_identical_weights(tmp_path, start, monkeypatch):
    settings, reuse = _settings(tmp_path), _reuse(tmp_path)
    first, metrics = _round(start, settings, reuse)
    assert metrics["reuse.train"] == {"value": 0.0, "step": 1}
    key = first.lineage["reuse_key"]
    assert (tmp_path / "cache" / "round_1.train" / key / "reuse.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("an unchanged round was trained again")

    monkeypatch.setattr(trainers, "train_policy", no_training)
    again, cached = _round(start, settings, reuse)
    assert cached["reuse.train"] == {"value": 1.0, "step": 1}
    assert again.lineage == first.lineage
    assert cached["train.train_loss"] == metrics["train.train_loss"]
    assert cached["train.round_1.loss"] == metrics["train.round_1.loss"]
    expected, got = _weights(first), _weights(again)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    base = _weights(start)
    assert any(not torch.equal(base[n], got[n]) for n in got), "the hit must be the trained policy"


def test_every_change_that_could_alter_the_round_misses(tmp_path, start, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(trainers, "train_policy", fake)
    settings, reuse = _settings(tmp_path), _reuse(tmp_path, keep=50)

    def calls(**kwargs) -> int:
        before = fake.calls
        _round(kwargs.pop("start", start), kwargs.pop("settings", settings), reuse, **kwargs)
        return fake.calls - before

    assert calls() == 1
    assert calls() == 0  # unchanged: hit
    examples, _, _ = build_train_examples(SCORED, make_prompts(), settings, TASK)
    edited = examples.copy()
    edited.loc[edited.index[0], "completion"] = "something else"
    assert calls(examples=edited) == 1, "changed training examples were served from the cache"
    assert calls(examples=examples.iloc[:-1]) == 1, "a dropped example hit"
    assert calls(settings=_settings(tmp_path, rft={"learning_rate": 7e-5})) == 1
    assert calls(settings=_settings(tmp_path, trainer={"max_steps": 3})) == 1
    assert calls(seed=1) == 1, "another seed was served from the cache"
    nudged = copy.deepcopy(start)
    with torch.no_grad():
        row = next(nudged.model.parameters())[1]
        row[0], row[1] = row[1].clone(), row[0].clone()  # same sums, other weights
    assert calls(start=nudged) == 1, "another starting policy was served from the cache"
    renamed = copy.deepcopy(start)
    renamed.lineage = {**renamed.lineage, "config_hash": "another-lineage"}
    assert calls(start=renamed) == 1, "another starting lineage was served from the cache"
    moved = copy.deepcopy(start)
    moved.lineage = {**moved.lineage, "name_or_path": str(tmp_path / "another" / "checkout")}
    assert calls(start=moved) == 0, "the same policy read from another folder missed"
    rescored = SCORED.assign(reward=SCORED["reward"] + 0.0)
    rescored.loc[rescored.index[-1], "completion"] = "unused text"
    assert calls(scored=rescored, examples=examples) == 1, "other scored rows hit (lineage)"
    monkeypatch.setattr(reuse_module, "code_version", lambda *a: "edited-training-code")
    assert calls() == 1, "a code change was served from the cache"
    monkeypatch.undo()
    monkeypatch.setattr(trainers, "train_policy", fake)
    assert calls() == 0  # back to the original code: its entry is still there


def test_force_retrains_and_disabled_keeps_no_key(tmp_path, start, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(trainers, "train_policy", fake)
    settings = _settings(tmp_path)
    _round(start, settings, _reuse(tmp_path))
    policy, metrics = _round(start, settings, _reuse(tmp_path, force=True))
    assert fake.calls == 2 and metrics["reuse.train"]["value"] == 0.0
    policy, metrics = _round(start, settings, _reuse(tmp_path, enabled=False))
    assert fake.calls == 3 and "reuse.train" not in metrics
    assert "reuse_key" not in policy.lineage
    policy, metrics = _round(start, settings, None)
    assert fake.calls == 4 and "reuse.train" not in metrics


def test_round_key_counts_grpo_inputs_only_for_grpo(tmp_path):
    prompts = make_prompts()
    other_prompts = pd.concat([prompts, make_prompts(5).iloc[4:]], ignore_index=True)
    rft, grpo = _settings(tmp_path), TrainParams.model_validate(tiny_params(tmp_path, "grpo"))

    def parts(settings, prompts_frame, score):
        return reuse_module.round_key_parts(1, SCORED, prompts_frame, settings, TASK, score, None)

    assert parts(rft, prompts, SCORE) == parts(rft, other_prompts, {"scorers": []})
    assert parts(grpo, prompts, SCORE) != parts(grpo, other_prompts, SCORE)
    assert parts(grpo, prompts, SCORE) != parts(grpo, prompts, {"scorers": []})
