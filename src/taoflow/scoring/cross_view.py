"""``cross_view``: agreement with the answers given to *other wordings* of the same prompt.

Some candidates of each prompt answer a rewritten view of it (``task.views``, picked per
generate strategy with ``view:``; the ``strategy`` column says which). A model that merely
echoes its own first guess agrees with itself under one wording; an answer that survives a
rewrite is more likely right. So a candidate is rewarded when its answer equals the majority
answer among the candidates of the prompt's OTHER views — never its own view's, so a view
cannot vote for itself.

* A candidate's view is ``views[strategy]`` when the entry maps its strategy, else the strategy
  name itself (strategies answering the same wording can be merged under one view name).
* Rows without a ``strategy`` column all share one view: there is no other view to agree with.
* No answer: ``no_answer_value``; no majority among the other views (none answered, a tie
  under ``ties: none``, a share below ``min_agreement``, or no other view): ``no_majority_value``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import extract_answer, normalize_answer
from taoflow.scoring.base import GroupScorer, ScoreResult
from taoflow.scoring.majority import MajorityVoteScorer, vote

SINGLE_VIEW = "prompt"


class CrossViewScorer(MajorityVoteScorer):
    """``agree_value`` when the answer matches the other views' majority, else ``disagree_value``.

    Same knobs as the majority vote (``views`` maps a strategy to the view it answers; by
    default each strategy is its own view); only the group a candidate is compared with differs.
    """

    def __init__(
        self,
        *,
        task: dict[str, Any] | None = None,
        answer: dict[str, Any] | None = None,
        views: dict[str, str] | None = None,
        ties: str = "none",
        min_agreement: float = 0.0,
        agree_value: float = 1.0,
        disagree_value: float = 0.0,
        no_answer_value: float = 0.0,
        no_majority_value: float = 0.0,
        name: str = "cross_view",
    ):
        super().__init__(
            task=task,
            answer=answer,
            ties=ties,
            min_agreement=min_agreement,
            agree_value=agree_value,
            disagree_value=disagree_value,
            no_answer_value=no_answer_value,
            no_majority_value=no_majority_value,
            name=name,
        )
        self.views = dict(views or {})

    def view_of(self, strategy: Any) -> str:
        """The view a strategy's candidates answer."""
        return self.views.get(str(strategy), str(strategy))

    def score_group(self, group: pd.DataFrame) -> ScoreResult:
        agree, disagree, no_answer, no_majority = self.values
        answers = [
            normalize_answer(extract_answer(text, self.extractor)) for text in group["completion"]
        ]
        if "strategy" in group.columns:
            views = [self.view_of(s) for s in group["strategy"]]
        else:
            views = [SINGLE_VIEW] * len(group)
        majorities: dict[str, Any] = {}
        for view in dict.fromkeys(views):
            others = [a for a, v in zip(answers, views, strict=True) if v != view]
            majorities[view] = vote(others, self.ties, self.min_agreement) if others else None
        scores, other_answer, other_share = [], [], []
        for answer, view in zip(answers, views, strict=True):
            result = majorities[view]
            winners = result.winners if result is not None else frozenset()
            other_answer.append(result.majority if result is not None else None)
            other_share.append(result.agreement if result is not None else 0.0)
            if answer is None:
                scores.append(no_answer)
            elif not winners:
                scores.append(no_majority)
            else:
                scores.append(agree if answer in winners else disagree)
        return ScoreResult(
            scores=scores,
            answers=answers,
            columns={
                "view": views,
                "other_views_answer": other_answer,
                "other_views_agreement": other_share,
            },
        )

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        result = GroupScorer.score(self, frame)  # per group; the vote's own metrics do not apply
        views = pd.DataFrame(
            {
                "prompt_id": frame["prompt_id"].to_numpy(),
                "view": result.columns.get("view", [SINGLE_VIEW] * len(frame)),
            }
        )
        n_views = views.groupby("prompt_id", sort=False)["view"].nunique()
        judged = np.array(
            [a is not None for a in result.columns.get("other_views_answer", [])], dtype=bool
        )
        answers = result.answers or [None] * len(frame)
        agreed = np.array(
            [
                a is not None and a == o
                for a, o in zip(answers, result.columns.get("other_views_answer", []), strict=True)
            ],
            dtype=bool,
        )
        result.metrics = {
            "single_view_share": float((n_views <= 1).mean()) if len(n_views) else 0.0,
            "agree_share": float(agreed[judged].mean()) if judged.any() else 0.0,
        }
        result.metric_weights = {
            "single_view_share": float(len(n_views)),
            "agree_share": float(judged.sum()),
        }
        return result
