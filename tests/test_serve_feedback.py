"""The feedback scorer: user ratings become a partial, label-free reward."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from taoflow.scoring.factory import import_object
from taoflow.scoring.feedback import FeedbackScorer, feedback_value, served_feedback


def meta(served: str | None, *values: float, name: str = "user_feedback") -> str:
    feedback = [{"name": name, "value": v, "source": "HUMAN", "rationale": None} for v in values]
    return json.dumps(
        {"trace_id": "tr-1", "served_response": served, "model_version": "v1", "feedback": feedback}
    )


def frame(completions: list[str], prompt_meta: str | None, prompt_id: str = "p1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": prompt_id,
            "candidate_id": [f"{prompt_id}-{i}" for i in range(len(completions))],
            "completion": completions,
            "meta": prompt_meta,
        }
    )


def test_feedback_values_average_and_ignore_other_assessments():
    items = [
        {"name": "user_feedback", "value": 1.0},
        {"name": "user_feedback", "value": 0.0},
        {"name": "judge", "value": 0.0},
        {"name": "user_feedback", "value": "great"},
    ]
    assert feedback_value(items) == 0.5
    assert feedback_value([]) is None
    assert served_feedback(meta("7", 1.0)) == ("7", 1.0)
    assert served_feedback("not json") == (None, None)
    assert served_feedback(None) == (None, None)


def test_scorer_gives_user_score_to_the_served_text_and_neutral_elsewhere():
    scorer = FeedbackScorer(neutral=0.5)
    candidates = pd.concat(
        [
            frame(["The answer is  7.", "the answer is 7.", "8"], meta("The answer is 7.", 0.0)),
            frame(["3", "4"], meta(None), prompt_id="p2"),  # no feedback: constant column
        ],
        ignore_index=True,
    )
    result = scorer.score(candidates)
    assert list(result.scores) == [0.0, 0.0, 0.5, 0.5, 0.5]
    assert result.columns["matched"] == [True, True, False, False, False]
    assert result.metrics == {"groups_with_feedback": 1.0, "matched": 2.0}


def test_answer_matching_spreads_a_thumbs_down_to_the_same_wrong_answer():
    scorer = FeedbackScorer(match="answer", neutral=0.5, task={"answer": {"kind": "last_number"}})
    result = scorer.score(frame(["It is 9", "9", "10"], meta("= 9", 0.0)))
    assert list(result.scores) == [0.0, 0.0, 0.5]


def test_scorer_reads_served_rows_when_the_frame_has_no_meta():
    candidates = pd.DataFrame(
        {
            "prompt_id": ["p1"] * 3,
            "candidate_id": ["a", "b", "s"],
            "completion": ["5", "6", "6"],
            "strategy": ["sample", "sample", "served"],
            "feedback_score": [np.nan, np.nan, 1.0],
        }
    )
    assert list(FeedbackScorer(neutral=0.0).score(candidates).scores) == [0.0, 1.0, 1.0]


def test_scorer_is_loadable_by_python_path_and_validates_config():
    cls = import_object("taoflow.scoring.feedback:FeedbackScorer")
    assert cls is FeedbackScorer
    with pytest.raises(ValueError, match="match must be"):
        FeedbackScorer(match="fuzzy")
