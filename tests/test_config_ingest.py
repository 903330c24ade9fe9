"""The ingest, score and serve blocks: a misspelt key stops validation with its path + a hint."""

from __future__ import annotations

import pytest

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.ingest import IngestParams
from taoflow.config.score import CustomScorerParams, FormatParams, MajorityVoteParams
from taoflow.serving.config import ServeConfig

SCORERS = [{"name": "majority_vote", "type": "majority_vote", "weight": 1.0}]


@pytest.mark.parametrize(
    ("block", "value", "match"),
    [
        ("ingest", {"max_prompt": 3}, r"'ingest\.max_prompt'; did you mean 'max_prompts'\?"),
        ("ingest", {"pii": {"kind": ["email"]}}, r"'ingest\.pii\.kind'; did you mean 'kinds'\?"),
        (
            "ingest",
            {"traces": {"span_nam": "x"}},
            r"'ingest\.traces\.span_nam'; did you mean 'span_name'\?",
        ),
        (
            "ingest",
            {"files": {"usage": {"maping": {}}}},
            r"unknown parameter 'ingest\.files\.usage\.maping'",  # under a name: path only
        ),
        (
            "score",
            {"scorers": SCORERS, "advantge": {}},
            r"'score\.advantge'; did you mean 'advantage'\?",
        ),
        (
            "score",
            {"scorers": [{"type": "majority_vote", "tie": "all"}]},
            r"'score\.scorers\.0\.tie'; did you mean 'ties'\?",
        ),
        (
            "score",
            {"scorers": SCORERS, "advantage": {"normalise_std": True}},
            r"'score\.advantage\.normalise_std'; did you mean 'normalize_std'\?",
        ),
        ("serve", {"max_tokenz": 3}, r"'serve\.max_tokenz'; did you mean 'max_tokens_cap'\?"),
        (
            "serve",
            {"capture": {"enable": False}},
            r"'serve\.capture\.enable'; did you mean 'enabled'\?",
        ),
    ],
)
def test_misspelt_keys_name_path_and_suggestion(block, value, match):
    with pytest.raises(ParameterError, match=match):
        validate_block(block, value)


def test_bad_values_are_named():
    with pytest.raises(ParameterError, match=r"ingest\.holdout_fraction"):
        validate_block("ingest", {"holdout_fraction": 1.5})
    with pytest.raises(ParameterError, match=r"ingest\.pii\.kinds.*unknown PII kind"):
        validate_block("ingest", {"pii": {"kinds": ["ssn"]}})
    with pytest.raises(ParameterError, match=r"score\.scorers\.0.*unknown type 'nope'"):
        validate_block("score", {"scorers": [{"type": "nope"}]})
    with pytest.raises(ParameterError, match="duplicate scorer names"):
        validate_block("score", {"scorers": SCORERS * 2})
    with pytest.raises(ParameterError, match="default_max_tokens"):
        validate_block("serve", {"max_tokens_cap": 8, "default_max_tokens": 16})


def test_scorer_entries_get_their_type_model():
    score = validate_block(
        "score",
        {
            "scorers": [
                {"name": "majority_vote", "ties": "all"},  # type from the name
                {"type": "format", "weight": 0.1, "require_answer": False},
                {"name": "mine", "type": "my_pkg.mod:Scorer", "anything": 1},
            ]
        },
    )
    first, second, third = score.scorers
    assert isinstance(first, MajorityVoteParams) and first.options() == {"ties": "all"}
    assert isinstance(second, FormatParams) and second.as_entry() == {
        "name": "format",
        "type": "format",
        "weight": 0.1,
        "require_answer": False,
    }
    assert isinstance(third, CustomScorerParams) and third.options() == {"anything": 1}
    assert score.advantage.normalize_std is True


def test_defaults():
    ingest = IngestParams()
    assert ingest.traces.enabled and ingest.pii.kinds == ["email", "phone", "card"]
    assert ingest.max_prompt_tokens == 256 and ingest.holdout_fraction == 0.1
    assert ServeConfig().capture.experiment == "taoflow-serve"
