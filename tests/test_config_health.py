"""Typed ``health``, ``generate`` and ``audit`` blocks: a typo stops validation with path + hint."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taoflow.config.audit import AuditParams
from taoflow.config.base import ParameterError, validate_block
from taoflow.config.generate import GenerateParams
from taoflow.config.health import HealthParams
from taoflow.health import DEFAULT_PROBE, DEFAULT_THRESHOLDS

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"
DIRECT = {"weight": 1.0, "temperature": 0.8}


def _block(stage: str) -> dict:
    return yaml.safe_load((CONF / f"parameters_{stage}.yml").read_text())[stage]


@pytest.mark.parametrize(
    ("block", "value", "message"),
    [
        ("health", {"enabeld": True}, r"'health\.enabeld'; did you mean 'enabled'\?"),
        (
            "health",
            {"thresholds": {"agreement_rse": 0.3}},
            r"'health\.thresholds\.agreement_rse'; did you mean 'agreement_rise'\?",
        ),
        (
            "health",
            {"probe": {"n_sample": 4}},
            r"'health\.probe\.n_sample'; did you mean 'n_samples'\?",
        ),
        (
            "generate",
            {"num_candidate": 4, "strategies": {"direct": DIRECT}},
            r"'generate\.num_candidate'; did you mean 'num_candidates'\?",
        ),
        (
            "generate",
            {"strategies": {"direct": {**DIRECT, "temprature": 0.5}}},
            r"'generate\.strategies\.direct\.temprature'; did you mean 'temperature'\?",
        ),
        (
            "audit",
            {"agreement_bin": [0, 1]},
            r"'audit\.agreement_bin'; did you mean 'agreement_bins'\?",
        ),
    ],
)
def test_unknown_keys_name_the_path_and_the_nearest_key(block, value, message):
    with pytest.raises(ParameterError, match=f"unknown parameter {message}"):
        validate_block(block, value)


def test_invalid_values_are_errors():
    with pytest.raises(ParameterError, match=r"generate\.backend"):
        validate_block("generate", {"backend": "nope", "strategies": {"direct": DIRECT}})
    with pytest.raises(ParameterError, match=r"generate\.strategies\.direct\.top_p"):
        validate_block("generate", {"strategies": {"direct": {**DIRECT, "top_p": 0}}})
    with pytest.raises(ParameterError, match=r"generate\.strategies.*positive weight"):
        validate_block("generate", {"strategies": {"direct": {**DIRECT, "weight": 0}}})
    with pytest.raises(ParameterError, match=r"generate\.strategies"):
        validate_block("generate", {})
    with pytest.raises(ParameterError, match=r"health\.thresholds\.entropy_ratio"):
        validate_block("health", {"thresholds": {"entropy_ratio": "half"}})


def test_shipped_blocks_validate_and_keep_their_values():
    health = validate_block("health", _block("health"))
    assert isinstance(health, HealthParams)
    assert health.thresholds.model_dump() == DEFAULT_THRESHOLDS  # YAML and model agree
    assert health.probe.model_dump() == DEFAULT_PROBE
    generate = validate_block("generate", _block("generate"))
    assert isinstance(generate, GenerateParams)
    assert (
        list(generate.strategies) == ["direct"]
        and generate.strategies["direct"].max_new_tokens == 32
    )
    assert validate_block("audit", _block("audit")) == AuditParams()


def test_a_null_threshold_disables_its_rule():
    health = validate_block("health", {"thresholds": {"copy_share_rise": None}})
    assert health.thresholds.copy_share_rise is None and health.thresholds.min_prompts == 4
