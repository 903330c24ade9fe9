"""The evaluate and promote blocks: unknown or misspelt keys stop validation with path + hint."""

from __future__ import annotations

import pytest
import yaml

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.evaluate import EvaluateParams
from taoflow.config.promote import PromoteParams

from .conftest import PROJECT_ROOT

LABELED = {"name": "bench", "kind": "labeled", "source": "benchmark"}


def _shipped(block: str) -> dict:
    path = PROJECT_ROOT / "conf" / "base" / f"parameters_{block}.yml"
    return yaml.safe_load(path.read_text())[block]


def test_shipped_blocks_validate():
    evaluate = validate_block("evaluate", _shipped("evaluate"))
    assert isinstance(evaluate, EvaluateParams)
    assert [b.name for b in evaluate.enabled_benchmarks] == ["chain_sum", "holdout"]
    assert evaluate.best_of_n.from_ == "base" and evaluate.best_of_n.enabled
    promote = validate_block("promote", _shipped("promote"))
    assert isinstance(promote, PromoteParams) and promote.registered_model_name == "taoflow-policy"


def test_unknown_evaluate_key_names_path_and_suggestion():
    with pytest.raises(ParameterError, match=r"'evaluate\.n_bootstrp'; did you mean 'n_bootstrap'"):
        validate_block("evaluate", {"n_bootstrp": 10})


def test_misspelt_benchmark_key_names_index_and_suggestion():
    bad = {"benchmarks": [{**LABELED, "promt_field": "q"}]}
    with pytest.raises(
        ParameterError, match=r"'evaluate\.benchmarks\.0\.promt_field'; did you mean 'prompt_field'"
    ):
        validate_block("evaluate", bad)


def test_misspelt_best_of_n_key_names_path_and_suggestion():
    with pytest.raises(ParameterError, match=r"'evaluate\.best_of_n\.enabeld'; did you mean"):
        validate_block("evaluate", {"best_of_n": {"enabeld": True}})


def test_unknown_promote_key_names_path_and_suggestion():
    with pytest.raises(ParameterError, match=r"'promote\.min_ci_lo'; did you mean 'min_ci_low'"):
        validate_block("promote", {"min_ci_lo": 0.1})


def test_benchmark_checks_are_one_line_errors():
    with pytest.raises(ParameterError, match=r"unknown metrics \['bleu@k'\]"):
        validate_block("evaluate", {"benchmarks": [{**LABELED, "metrics": ["bleu@k"]}]})
    with pytest.raises(ParameterError, match="duplicate benchmark name"):
        validate_block("evaluate", {"benchmarks": [LABELED, LABELED]})
    with pytest.raises(ParameterError, match=r"evaluate\.benchmarks\.0\.name"):
        validate_block("evaluate", {"benchmarks": [{**LABELED, "name": "my bench"}]})
