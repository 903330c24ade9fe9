"""How good is each scorer's signal? With labels after the fact, and without labels up front.

* :func:`scorer_audit` (gold answers, read-only, never in training): for every ``score_<name>``
  column and the combined ``reward``, how often the top-scored candidate's answer is right
  (precision of the preferred answer), how well scores separate right from wrong candidates
  within a prompt (AUC), overall and per confidence bucket.
* :func:`signal_quality` (no labels): how often independent scorers prefer the same answer, how
  many prompts carry any signal, and the share a ``train.gates`` block would keep — so a user
  without labels can tell whether a round is worth its compute before training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import answers_match

SCORER_AUDIT_COLUMNS = [
    "scorer",
    "bucket",
    "confidence_column",
    "n_prompts",
    "share",
    "precision",
    "auc",
    "n_mixed",
]
SIGNAL_COLUMNS = ["kind", "name", "value", "n_prompts"]
REWARD = "reward"


def scorer_columns(scored: pd.DataFrame) -> dict[str, str]:
    """Scorer name → its column: every ``score_<name>``, then the combined ``reward``."""
    out = {c.removeprefix("score_"): c for c in scored.columns if c.startswith("score_")}
    if REWARD in scored.columns:
        out[REWARD] = REWARD
    return out


def group_auc(scores: np.ndarray, correct: np.ndarray) -> float:
    """P(score of a right candidate > score of a wrong one), ties half: Mann-Whitney AUC."""
    pos, neg = scores[correct], scores[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def top_position(scores: np.ndarray) -> int:
    """Position of the top score in a group (missing scores rank last; ties → earliest)."""
    values = np.where(np.isnan(scores), -np.inf, scores)
    return int(np.argmax(values))


def confidence_column(scored: pd.DataFrame, scorer: str) -> str | None:
    """The column a scorer's confidence is read from: its own ``<name>_confidence`` or
    ``<name>_agreement`` when it writes one, else the group's answer ``agreement``."""
    for column in (f"{scorer}_confidence", f"{scorer}_agreement", "agreement"):
        if column in scored.columns:
            return column
    return None


def _bucket(value: float, bins: Sequence[float]) -> str:
    if np.isnan(value):
        return "none"
    for i, (low, high) in enumerate(zip(bins[:-1], bins[1:], strict=True)):
        if (value >= low if i == 0 else value > low) and value <= high:
            return f"confidence_{low:.2f}_{high:.2f}"
    return "none"


def _per_prompt(
    scored: pd.DataFrame, gold: Mapping[str, str], columns: dict[str, str]
) -> pd.DataFrame:
    """One row per (prompt with gold, scorer): top candidate right?, AUC, confidence."""
    rows = []
    for prompt_id, group in scored.groupby(scored["prompt_id"].astype(str), sort=True):
        if prompt_id not in gold:
            continue
        right = np.array(
            [a is not None and answers_match(a, gold[prompt_id]) for a in group["answer"]]
        )
        for scorer, column in columns.items():
            scores = pd.to_numeric(group[column], errors="coerce").to_numpy(dtype=float)
            conf_col = confidence_column(scored, scorer)
            confidence = (
                float(pd.to_numeric(group[conf_col], errors="coerce").max())
                if conf_col
                else float("nan")
            )
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "scorer": scorer,
                    "confidence_column": conf_col,
                    "confidence": confidence,
                    "top_correct": bool(right[top_position(scores)]),
                    "auc": group_auc(np.nan_to_num(scores, nan=-np.inf), right),
                }
            )
    return pd.DataFrame(
        rows,
        columns=["prompt_id", "scorer", "confidence_column", "confidence", "top_correct", "auc"],
    )


def scorer_audit(
    scored: pd.DataFrame, gold: Mapping[str, str], bins: Sequence[float]
) -> pd.DataFrame:
    """Precision of the preferred answer and within-prompt AUC per scorer, overall and per bucket.

    ``scored`` needs ``prompt_id``, ``answer`` and the score columns, rows of a prompt in
    candidate order (ties go to the earliest); ``gold`` maps prompt_id → gold answer (prompts
    without one are left out). ``auc`` averages over prompts with both right and wrong
    candidates (``n_mixed`` of them).
    """
    columns = scorer_columns(scored)
    per_prompt = _per_prompt(scored, gold, columns)
    rows = []
    for scorer in columns:
        part = per_prompt[per_prompt["scorer"] == scorer]
        n_all = len(part)
        if n_all == 0:
            continue
        buckets = part["confidence"].map(lambda v: _bucket(float(v), bins))
        groups = [("all", part)] + [(b, part[buckets == b]) for b in sorted(buckets.unique())]
        for bucket, rows_b in groups:
            mixed = rows_b["auc"].dropna()
            rows.append(
                {
                    "scorer": scorer,
                    "bucket": bucket,
                    "confidence_column": part["confidence_column"].iloc[0],
                    "n_prompts": len(rows_b),
                    "share": len(rows_b) / n_all,
                    "precision": float(rows_b["top_correct"].mean()),
                    "auc": float(mixed.mean()) if len(mixed) else float("nan"),
                    "n_mixed": len(mixed),
                }
            )
    return pd.DataFrame(rows, columns=SCORER_AUDIT_COLUMNS)


def _top_answers(scored: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Per prompt: each scorer's preferred answer and whether its scores vary (any signal)."""
    out: dict[str, dict[str, Any]] = {}
    for prompt_id, group in scored.groupby(scored["prompt_id"].astype(str), sort=True):
        row: dict[str, Any] = {}
        for scorer, column in columns.items():
            scores = pd.to_numeric(group[column], errors="coerce").to_numpy(dtype=float)
            row[f"top:{scorer}"] = group["answer"].iloc[top_position(scores)]
            finite = scores[~np.isnan(scores)]
            row[f"signal:{scorer}"] = bool(len(finite) and np.ptp(finite) > 1e-9)
        if "agreement" in group.columns:
            row["agreement"] = float(pd.to_numeric(group["agreement"], errors="coerce").max())
        out[prompt_id] = row
    return pd.DataFrame.from_dict(out, orient="index")


def _same(a: Any, b: Any) -> bool:
    missing = a is None or (isinstance(a, float) and np.isnan(a))
    missing_b = b is None or (isinstance(b, float) and np.isnan(b))
    return not missing and not missing_b and answers_match(str(a), str(b))


def signal_quality(
    scored: pd.DataFrame, gate_shares: dict[str, float] | None = None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Label-free estimate of a round's signal: (table, flat metrics).

    * ``signal_share.<scorer>``: prompts whose scores vary (a group scored all alike teaches
      nothing);
    * ``agreement.<a>__<b>``: prompts where scorers ``a`` and ``b`` prefer the same answer —
      independent scorers that agree are likelier right, ones that never agree cannot both be;
    * ``mean_agreement``: the groups' answer agreement (self-consistency);
    * ``gate.*``: share of prompts ``train.gates`` would keep (``gate_shares``, when given).
    """
    for column in ("prompt_id", "answer"):
        if column not in scored.columns:
            raise ValueError(f"scored: missing column {column!r}; has {list(scored.columns)}")
    columns = scorer_columns(scored)
    tops = _top_answers(scored, columns)
    n = len(tops)
    rows = []
    for scorer in columns:
        rows.append(("signal_share", scorer, float(tops[f"signal:{scorer}"].mean()), n))
    individual = [s for s in columns if s != REWARD]
    for a, b in combinations(individual, 2):
        same = [_same(x, y) for x, y in zip(tops[f"top:{a}"], tops[f"top:{b}"], strict=True)]
        rows.append(("agreement", f"{a}__{b}", float(np.mean(same)) if n else float("nan"), n))
    if "agreement" in tops.columns:
        rows.append(("mean_agreement", "answer", float(tops["agreement"].mean()), n))
    for name, value in (gate_shares or {}).items():
        rows.append(("gate", name, value, n))
    table = pd.DataFrame(rows, columns=SIGNAL_COLUMNS)
    values = {"n_prompts": float(n)}
    for row in table.itertuples(index=False):
        key = row.kind if row.kind == "mean_agreement" else f"{row.kind}.{row.name}"
        values[key] = row.value
    return table, values
