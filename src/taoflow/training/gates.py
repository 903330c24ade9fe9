"""Trust gates (pure): which usable scored rows a trainer may learn from (``train.gates``).

A label-free reward is sometimes wrong; these gates keep only the rows whose reward there is a
reason to trust — a confident judge, a clear majority, a real reward contrast — before the
algorithm's own selection runs. Every dropped row is returned with a reason naming its gate,
and each gate reports the share of prompts it kept. With every gate off nothing here runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from taoflow.config.train import GateParams
from taoflow.core.answers import normalize_answer

# Internal column: the judge agrees with the candidate's answer (``chosen_from: judge``).
JUDGE_AGREES = "judge_agrees"
GATE_ORDER = ("min_judge_confidence", "min_vote_share", "min_reward_margin", "drop_no_contrast")


@dataclass
class GateOutcome:
    """The rows every active gate kept, the dropped rows with their reasons, per-gate shares."""

    kept: pd.DataFrame
    dropped: list[tuple[pd.DataFrame, str]] = field(default_factory=list)
    kept_share: dict[str, float] = field(default_factory=dict)


def _column(frame: pd.DataFrame, name: str, gate: str) -> pd.Series:
    if name not in frame.columns:
        raise ValueError(
            f"train.gates.{gate} reads column {name!r}, which scored lacks (it has "
            f"{sorted(frame.columns)}); configure the scorer that writes it or name the column"
        )
    return frame[name]


def judge_agrees(frame: pd.DataFrame, gates: GateParams) -> pd.Series:
    """Whether the judge agrees with each candidate.

    With a judge answer: the candidate's normalised ``answer`` equals it (no judge answer: no).
    Without that column: the judge's score is at least ``judge_agree_score``.
    """
    if gates.judge_answer_column in frame.columns and "answer" in frame.columns:
        judge = [_normalized(a) for a in frame[gates.judge_answer_column]]
        own = [_normalized(a) for a in frame["answer"]]
        agrees = [j is not None and j == o for j, o in zip(judge, own, strict=True)]
        return pd.Series(agrees, index=frame.index, dtype=bool)
    score = pd.to_numeric(_column(frame, gates.judge_score_column, "chosen_from"), errors="coerce")
    return (score >= gates.judge_agree_score).fillna(False).astype(bool)


def _normalized(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return normalize_answer(str(value))


def _no_contrast(group: pd.DataFrame, judge: bool) -> bool:
    """Fewer than two rows, equal rewards, or (judge choice) one verdict for the whole group."""
    if len(group) < 2 or group["reward"].nunique() <= 1:
        return True
    return judge and group[JUDGE_AGREES].nunique() <= 1


def _group_mask(frame: pd.DataFrame, keep_group: pd.Series) -> pd.Series:
    """Row mask from a per-prompt boolean."""
    return frame["prompt_id"].map(keep_group).fillna(False).astype(bool)


def apply_gates(usable: pd.DataFrame, gates: GateParams) -> GateOutcome:
    """Run the active gates in order on usable rows (reward finite, completion present)."""
    frame = usable.copy()
    if gates.judge_choice:
        frame[JUDGE_AGREES] = judge_agrees(frame, gates).to_numpy()
    outcome = GateOutcome(kept=frame)
    for gate in GATE_ORDER:
        value = getattr(gates, gate)
        if value is None or value is False:
            continue
        before = frame["prompt_id"].nunique()
        if gate == "min_judge_confidence":
            confidence = pd.to_numeric(
                _column(frame, gates.judge_confidence_column, gate), errors="coerce"
            )
            keep = (confidence >= value).fillna(False).astype(bool)
            reason = f"gate min_judge_confidence: judge confidence < {value} (or missing)"
        elif gate == "min_vote_share":
            share = pd.to_numeric(_column(frame, gates.vote_share_column, gate), errors="coerce")
            per_group = share.groupby(frame["prompt_id"]).max()
            keep = _group_mask(frame, (per_group >= value).fillna(False))
            reason = f"gate min_vote_share: majority share < {value}"
        elif gate == "min_reward_margin":
            grouped = frame.groupby("prompt_id")["reward"]
            spread = grouped.max() - grouped.min()
            keep = _group_mask(frame, spread >= value)
            reason = f"gate min_reward_margin: group reward spread < {value}"
        else:
            flags = {
                pid: not _no_contrast(group, gates.judge_choice)
                for pid, group in frame.groupby("prompt_id", sort=False)
            }
            keep = _group_mask(frame, pd.Series(flags, dtype=bool))
            reason = "gate drop_no_contrast: no usable contrast left in the group"
        if (~keep).any():
            outcome.dropped.append((frame[~keep], reason))
        frame = frame[keep]
        after = frame["prompt_id"].nunique()
        outcome.kept_share[gate] = after / before if before else 0.0
    outcome.kept = frame
    return outcome


def keep_shares(scored: pd.DataFrame, gates: GateParams) -> dict[str, float]:
    """Label-free estimate before training: the share of prompts each active gate keeps (in gate
    order, each after the previous ones) and all of them together; ``{}`` with every gate off."""
    if not gates.active:
        return {}
    usable = scored[scored["reward"].notna() & scored["completion"].notna()]
    n_prompts = usable["prompt_id"].nunique()
    outcome = apply_gates(usable, gates)
    values = {f"{gate}.keep_share": share for gate, share in outcome.kept_share.items()}
    values["keep_share"] = outcome.kept["prompt_id"].nunique() / n_prompts if n_prompts else 0.0
    return values
