"""taoflow's HF `evaluate` metric modules, loaded by path offline, against hand-computed values."""

from __future__ import annotations

from math import comb

import pytest

from taoflow.metrics import BUILTIN, load_metric, metric_path


def test_shipped_modules_load_offline_by_path():
    for name in BUILTIN:
        assert (metric_path(name) / f"{name}.py").is_file()
        assert load_metric(name).name == name
    with pytest.raises(KeyError, match="no shipped metric"):
        metric_path("rouge")


def test_answer_accuracy_normalises_numbers_and_extracts():
    metric = load_metric("answer_accuracy")
    out = metric.compute(
        predictions=["1,000", "7.0", None, "-3"], references=["1000", "7", "3", "3"]
    )
    assert out["scores"] == [1, 1, 0, 0]
    assert out["accuracy"] == pytest.approx(0.5)
    out = metric.compute(
        predictions=["3 + 4 = 7", "so it is 12.", ""],
        references=["7", "12.0", "0"],
        extractor={"kind": "last_number"},
    )
    assert out["scores"] == [1, 1, 0]


def test_pass_at_k_is_the_unbiased_estimator():
    metric = load_metric("pass_at_k")
    # item 1: n=4, c=2; item 2: n=4, c=0; item 3: n=4, c=4
    predictions = [["5", "4", "5.0", "x"], ["1", "2", None, "3"], ["9", "9", "9", "9"]]
    out = metric.compute(predictions=predictions, references=["5", "7", "9"], k=[1, 2, 3])
    assert out["n_correct"] == [2, 0, 4]
    # by hand: pass@2 for n=4, c=2 is 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert out["scores@2"] == pytest.approx([1 - 1 / 6, 0.0, 1.0])
    assert out["scores@3"] == pytest.approx([1.0, 0.0, 1.0])  # n - c = 2 < 3: always a hit
    assert out["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)  # pass@1 = fraction correct
    assert out["scores@2"][0] == pytest.approx(1 - comb(4 - 2, 2) / comb(4, 2))
    with pytest.raises(ValueError, match="k <= n"):
        metric.compute(predictions=[["1", "2"]], references=["1"], k=3)


@pytest.mark.parametrize(
    ("tie_rule", "expected"),
    [
        ("expected", [0.5, 1.0, 0.0, 0.0]),
        ("first", [0.0, 1.0, 0.0, 0.0]),
        ("strict", [0.0, 1.0, 0.0, 0.0]),
    ],
)
def test_maj_at_k_tie_rules(tie_rule, expected):
    metric = load_metric("maj_at_k")
    predictions = [
        ["3", "5", "5.0", "3"],  # tie 3 vs 5 (3 first); reference 5
        ["1", None, "1", "2"],  # clear majority 1; the abstention does not vote
        [None, None, None, None],  # nothing to vote on
        ["4", "4", "8", "8"],  # tie, reference absent
    ]
    out = metric.compute(
        predictions=predictions, references=["5", "1", "0", "6"], tie_rule=tie_rule
    )
    assert out["scores"] == pytest.approx(expected)
    assert out["tied"] == [2, 1, 0, 2]
    assert out["majority"] == ["3", "1", None, "4"]


def test_maj_at_k_uses_first_k_samples():
    metric = load_metric("maj_at_k")
    out = metric.compute(predictions=[["2", "2", "7", "7", "7"]], references=["2"], k=3)
    assert out["scores"] == [1.0]
    out = metric.compute(predictions=[["2", "2", "7", "7", "7"]], references=["2"])
    assert out["scores"] == [0.0]
    with pytest.raises(ValueError, match="unknown tie_rule"):
        metric.compute(predictions=[["1"]], references=["1"], tie_rule="coin")
