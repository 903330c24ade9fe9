"""``judge``: reward agreement with a frozen judge stronger than the policy (as TAO does).

The judge's outputs arrive as data — the ``judge`` stage's ``judge_references`` (one reference
answer per prompt) or a round's ``judgements`` (a verdict per (prompt, answer)) — handed to the
scorer by the score node as its ``references`` context; the scorer never loads a model or a file.

* reference rows: the candidate's extracted answer is compared with the judge's: exactly
  (:func:`taoflow.core.answers.answers_match`) for checkable tasks, by MiniLM cosine similarity
  (the ``semantic_consensus`` embedder) for free-form ones (``compare: auto`` picks by the task's
  extractor: ``full`` is free-form);
* verdict rows: the judge's P(correct) for the candidate's (prompt, answer).

Without judge data (the evaluate stage, GRPO's online rewards) or for a prompt the judge has no
answer to, a candidate scores ``missing_value`` and is counted as failed: a constant within a
group, so it moves no advantage.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import answers_match, extract_answer, normalize_answer
from taoflow.scoring.base import ScoreResult

logger = logging.getLogger(__name__)


class JudgeScorer:
    """Extra columns: ``answer`` (the judge's answer or label) and ``confidence`` (its vote share,
    or its P(correct)); in ``scored`` they are ``<name>_answer`` and ``<name>_confidence``."""

    def __init__(
        self,
        *,
        task: dict[str, Any] | None = None,
        references: pd.DataFrame | None = None,
        answer: dict[str, Any] | None = None,
        compare: str = "auto",
        scale_by_confidence: bool = False,
        agree_value: float = 1.0,
        disagree_value: float = 0.0,
        missing_value: float = 0.0,
        model: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        name: str = "judge",
    ):
        if compare not in ("auto", "exact", "semantic"):
            raise ValueError(f"{name}: compare must be auto, exact or semantic, got {compare!r}")
        self.name = name
        self.extractor = answer or (task or {}).get("answer") or {"kind": "last_number"}
        extract_answer("0", self.extractor)  # a misconfigured extractor fails now
        kind = dict(self.extractor).get("kind", "last_number")
        self.semantic = compare == "semantic" or (compare == "auto" and kind == "full")
        self.scale_by_confidence = bool(scale_by_confidence)
        self.agree_value, self.disagree_value = float(agree_value), float(disagree_value)
        self.missing_value = float(missing_value)
        self.embedder_options = {"model": model, "batch_size": batch_size, "device": device}
        self._embedder: Any = None
        self.references = references
        if references is None:
            logger.info("%s: no judge data given; every candidate scores missing_value", name)

    @property
    def verdicts(self) -> bool:
        refs = self.references
        return refs is not None and "score" in refs.columns and "answer" in refs.columns

    def _similarity(self, left: list[str], right: list[str]) -> np.ndarray:
        if self._embedder is None:
            from taoflow.scoring.semantic import SemanticConsensusScorer

            self._embedder = SemanticConsensusScorer(**self.embedder_options)
        if not left:
            return np.zeros(0)
        embedded = self._embedder.embed(left + right)
        a, b = embedded[: len(left)], embedded[len(left) :]
        return np.clip((a * b).sum(axis=1), -1.0, 1.0)

    def _reference_scores(
        self, frame: pd.DataFrame, answers: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray, list[Any], np.ndarray]:
        table = self.references.drop_duplicates("prompt_id", keep="last").set_index("prompt_id")
        n = len(frame)
        scores, failed = np.full(n, self.missing_value), np.ones(n, dtype=bool)
        judge_answers: list[Any] = [None] * n
        confidence = np.zeros(n)
        pending: list[tuple[int, str, str]] = []
        for i, pid in enumerate(frame["prompt_id"]):
            if pid not in table.index or pd.isna(table.at[pid, "judge_answer"]):
                continue
            reference = str(table.at[pid, "judge_answer"])
            judge_answers[i], confidence[i], failed[i] = (
                reference,
                table.at[pid, "judge_confidence"],
                False,
            )
            if self.semantic:
                pending.append((i, answers[i] or str(frame["completion"].iloc[i]), reference))
            else:
                match = answers_match(answers[i], reference)
                scores[i] = self.agree_value if match else self.disagree_value
        if pending:
            rows = [p[0] for p in pending]
            scores[rows] = self._similarity([p[1] for p in pending], [p[2] for p in pending])
        if self.scale_by_confidence:
            scores = np.where(failed, scores, scores * confidence)
        return scores, failed, judge_answers, confidence

    def _verdict_scores(
        self, frame: pd.DataFrame, answers: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray, list[Any], np.ndarray]:
        refs = self.references.dropna(subset=["score"])
        table = {
            (str(p), str(a)): (float(s), label)
            for p, a, s, label in zip(
                refs["prompt_id"], refs["answer"], refs["score"], refs["judge_answer"], strict=True
            )
        }
        n = len(frame)
        scores, failed = np.full(n, self.missing_value), np.ones(n, dtype=bool)
        labels: list[Any] = [None] * n
        confidence = np.zeros(n)
        for i, pid in enumerate(frame["prompt_id"]):
            found = table.get((str(pid), str(answers[i]))) if answers[i] is not None else None
            if found is None:
                continue
            scores[i], labels[i], failed[i] = found[0], found[1], False
            confidence[i] = found[0]
        return scores, failed, labels, confidence

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        answers = [
            normalize_answer(extract_answer(c, self.extractor))
            for c in frame["completion"].astype(str)
        ]
        n = len(frame)
        if self.references is None:
            scores, failed = np.full(n, self.missing_value), np.ones(n, dtype=bool)
            judge_answers, confidence = [None] * n, np.zeros(n)
        elif self.verdicts:
            scores, failed, judge_answers, confidence = self._verdict_scores(frame, answers)
        else:
            scores, failed, judge_answers, confidence = self._reference_scores(frame, answers)
        judged = ~failed
        metrics = {"missing": float(failed.sum()), "judged": float(judged.sum())}
        weights = {"agreement_rate": float(judged.sum()), "verdict_mean": float(judged.sum())}
        if judged.any() and not self.verdicts:
            pairs = zip(answers, judge_answers, judged, strict=True)
            metrics["agreement_rate"] = float(
                np.mean([answers_match(a, j) for a, j, ok in pairs if ok])
            )
        elif judged.any():
            metrics["verdict_mean"] = float(scores[judged].mean())
        return ScoreResult(
            scores=scores,
            failed=failed,
            columns={"answer": judge_answers, "confidence": confidence.tolist()},
            metrics=metrics,
            metric_weights={k: v for k, v in weights.items() if k in metrics},
        )
