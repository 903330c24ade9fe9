"""Typed ``train`` / ``sft_oracle`` / ``reward_model`` blocks: TRL knobs pass through by TRL's names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.train import TrainParams, trl_config_class, trl_default
from taoflow.training import trl_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("block", "value", "match"),
    [
        ("train", {"algoritm": "dpo"}, r"'train.algoritm'; did you mean 'algorithm'"),
        ("train", {"dpo": {"betta": 0.1}}, r"'train.dpo.betta'; did you mean 'beta'"),
        ("train", {"rft": {"min_rewrd": 0.5}}, r"'train.rft.min_rewrd'; did you mean 'min_reward'"),
        (
            "train",
            {"trainer": {"learning_rte": 1e-5}},
            r"'train.trainer.learning_rte'; did you mean 'learning_rate'",
        ),
        ("train", {"lora": {"rank": 8}}, r"'train.lora.rank'"),
        (
            "train",
            {"early_stopping": {"patiense": 2}},
            r"'train.early_stopping.patiense'; did you mean 'patience'",
        ),
        ("sft_oracle", {"mach": "exact"}, r"'sft_oracle.mach'; did you mean 'match'"),
        ("sft_oracle", {"rft": {"betta": 1}}, r"'sft_oracle.rft.betta'"),
        (
            "reward_model",
            {"pairs": {"min_reward_gp": 1}},
            r"'reward_model.pairs.min_reward_gp'; did you mean 'min_reward_gap'",
        ),
        ("reward_model", {"trainig": {}}, r"'reward_model.trainig'; did you mean 'training'"),
    ],
)
def test_unknown_keys_name_the_path_and_the_nearest_key(block, value, match):
    with pytest.raises(ParameterError, match=match):
        validate_block(block, value)


def test_trl_fields_pass_and_reserved_ones_do_not():
    train = validate_block(
        "train", {"dpo": {"loss_type": ["ipo"]}, "grpo": {"epsilon": 0.3}, "lora": {"bias": "all"}}
    )
    assert train.dpo.passthrough() == {"loss_type": ["ipo"]}
    assert train.grpo.passthrough() == {"epsilon": 0.3}
    assert train.lora.passthrough() == {"bias": "all"}
    with pytest.raises(ParameterError, match="'train.trainer.output_dir'"):
        validate_block("train", {"trainer": {"output_dir": "x"}})  # train.output_dir is ours
    with pytest.raises(ParameterError, match="'train.algorithm'"):
        validate_block("train", {"algorithm": "ppo"})


def test_cross_field_checks_use_trl_defaults_where_unset():
    with pytest.raises(ParameterError, match="multiple of num_generations"):
        validate_block("train", {"algorithm": "grpo", "grpo": {"num_generations": 3}})
    with pytest.raises(ParameterError, match="must be >= 2 for kto"):
        validate_block("train", {"algorithm": "kto", "trainer": {"per_device_train_batch_size": 1}})
    with pytest.raises(ParameterError, match="warmup_steps"):
        validate_block("train", {"trainer": {"warmup_steps": 1.5}})


@pytest.mark.parametrize("algorithm", ["dpo", "rft", "kto", "grpo"])
def test_trl_config_gets_yaml_values_and_otherwise_trl_defaults(algorithm, tmp_path):
    raw = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"]
    train = TrainParams.model_validate({**raw, "algorithm": algorithm})
    config = trl_config(train, tmp_path, seed=11, peft=False)
    assert isinstance(config, trl_config_class(algorithm))
    assert (config.seed, config.data_seed, config.output_dir) == (11, 11, str(tmp_path))
    for key, value in raw[algorithm].items():
        if key in train.algo.passthrough():
            got = getattr(config, key)
            assert got == value or str(got) == str(value) or got == [value], key
    if algorithm != "grpo":
        assert config.max_length == raw["trainer"]["max_length"]
    assert config.per_device_train_batch_size == (
        raw["grpo"]["per_device_train_batch_size"]
        if algorithm == "grpo"
        else raw["trainer"]["per_device_train_batch_size"]
    )
    cls = trl_config_class(algorithm)
    untouched = "adam_beta2"  # set nowhere in YAML: TRL's own default
    assert getattr(config, untouched) == trl_default(cls, untouched)


def test_trainer_max_steps_caps_the_algorithms_own():
    raw = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"]
    grpo = TrainParams.model_validate({**raw, "algorithm": "grpo"})
    assert grpo.effective("max_steps") == raw["grpo"]["max_steps"]
    capped = TrainParams.model_validate(
        {**raw, "algorithm": "grpo", "trainer": {**raw["trainer"], "max_steps": 2}}
    )
    assert capped.effective("max_steps") == 2


def test_lora_makes_dpo_use_the_adapter_free_reference(tmp_path):
    train = TrainParams.model_validate(
        {"trainer": {"use_cpu": True, "bf16": False}, "dpo": {"precompute_ref_log_probs": True}}
    )
    assert trl_config(train, tmp_path, seed=0, peft=False).precompute_ref_log_probs is True
    assert trl_config(train, tmp_path, seed=0, peft=True).precompute_ref_log_probs is False


def test_sft_oracle_overrides_apply_key_by_key():
    train = TrainParams.model_validate(
        {"trainer": {"max_steps": 7}, "rft": {"learning_rate": 1e-5}}
    )
    oracle = validate_block("sft_oracle", {"rft": {"num_train_epochs": 4}})
    merged = oracle.train_settings(train)
    assert merged.algorithm == "rft" and merged.output_dir == oracle.output_dir
    assert merged.rft.passthrough() == {"learning_rate": 1e-5, "num_train_epochs": 4}
    assert merged.trainer.passthrough() == {"max_steps": 7}
