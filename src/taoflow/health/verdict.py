"""The collapse detector and the registry gate built on its verdicts.

Healthy training sharpens too (agreement rises), so no rule fires on agreement alone: the
consensus rule needs agreement up *and* entropy down, and the other rules look for the
degenerate shapes collapse takes (copying the prompt, length collapse or blow-up, a consensus
the base never sampled). Where a frozen judge's reference answers exist, the judge agreement
(:mod:`taoflow.health.trusted`) tells the two apart: sharpening toward the judge overrules the
consensus rule (``trusted_rise``), losing the judge flags a collapse (``trusted_fall``). Pure
functions of signal dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taoflow.config.health import HealthThresholds
from taoflow.health.signals import _num

# Thresholds of every rule (``None`` disables one): the model's defaults, written once there.
DEFAULT_THRESHOLDS: dict[str, float | int | None] = HealthThresholds().model_dump()


@dataclass
class Verdict:
    """Outcome of :func:`detect_collapse`; ``checks`` keeps every rule's value and threshold."""

    collapsed: bool
    reasons: list[str]
    signals: dict[str, Any]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # With the judge's agreement in the signals: the rules that decided (those whose reasons
    # stand, or ``trusted_rise`` when it overruled) and the reasons it overruled. None: no judge.
    decided_by: list[str] | None = None
    overruled: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "collapsed": bool(self.collapsed),
            "reasons": list(self.reasons),
            "signals": dict(self.signals),
            "checks": dict(self.checks),
            "notes": list(self.notes),
        }
        if self.decided_by is not None:
            data.update(decided_by=list(self.decided_by), overruled=list(self.overruled))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            collapsed=bool(data.get("collapsed", False)),
            reasons=list(data.get("reasons", [])),
            signals=dict(data.get("signals", {})),
            checks=dict(data.get("checks", {})),
            notes=list(data.get("notes", [])),
            decided_by=None if data.get("decided_by") is None else list(data["decided_by"]),
            overruled=list(data.get("overruled", [])),
        )


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def threshold_values(thresholds: Any = None) -> dict[str, Any]:
    """Thresholds as a dict over :data:`DEFAULT_THRESHOLDS` (a partial mapping or the model)."""
    if isinstance(thresholds, HealthThresholds):
        thresholds = thresholds.model_dump()
    return {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}


class _Checks:
    """Accumulates each rule's value/threshold/tripped and the reasons of tripped rules, in order."""

    def __init__(self) -> None:
        self.checks: dict[str, dict[str, Any]] = {}
        self.reasons: list[str] = []
        self.rules: list[str] = []  # the rule behind each reason

    def add(
        self, name: str, value: float | None, threshold: Any, tripped: bool, why: str, *, rule: str
    ) -> None:
        self.checks[name] = {"value": value, "threshold": _num(threshold), "tripped": bool(tripped)}
        if tripped:
            self.reasons.append(why)
            self.rules.append(rule)

    def drop(self, rule: str) -> list[str]:
        """Withdraw the reasons of ``rule`` (its checks stay as measured); returns them."""
        dropped = [why for why, r in zip(self.reasons, self.rules, strict=True) if r == rule]
        kept = [(why, r) for why, r in zip(self.reasons, self.rules, strict=True) if r != rule]
        self.reasons, self.rules = [w for w, _ in kept], [r for _, r in kept]
        return dropped


def _consensus_rule(out: _Checks, signals: dict, ref: dict, limits: dict) -> None:
    """Agreement up by ``agreement_rise`` *and* entropy down to ``entropy_ratio`` × the base's."""
    agreement, ref_agreement = _num(signals.get("agreement_mean")), _num(ref.get("agreement_mean"))
    token, ref_token = _num(signals.get("token_nll_mean")), _num(ref.get("token_nll_mean"))
    if token is not None and ref_token is not None:
        entropy_name, entropy, ref_entropy = "token entropy (-logprob/token)", token, ref_token
    else:
        entropy_name = "answer entropy"
        entropy = _num(signals.get("answer_entropy_mean"))
        ref_entropy = _num(ref.get("answer_entropy_mean"))
    if limits.get("agreement_rise") is None or limits.get("entropy_ratio") is None:
        return
    rise = None if agreement is None or ref_agreement is None else agreement - ref_agreement
    if ref_entropy is not None and entropy is not None and ref_entropy <= 0:
        ratio = 1.0 if entropy <= 0 else math.inf
    else:
        ratio = _ratio(entropy, ref_entropy)
    tripped = (
        rise is not None
        and ratio is not None
        and rise >= limits["agreement_rise"]
        and ratio <= limits["entropy_ratio"]
    )
    out.checks["agreement_rise"] = {
        "value": rise,
        "threshold": _num(limits["agreement_rise"]),
        "tripped": tripped,
    }
    out.add(
        "entropy_ratio",
        ratio,
        limits["entropy_ratio"],
        tripped,
        f"consensus collapse: agreement {ref_agreement:.2f} → {agreement:.2f} while "
        f"{entropy_name} fell {ref_entropy:.2f} → {entropy:.2f}"
        if tripped
        else "",
        rule="consensus_collapse",
    )


def _shape_rules(out: _Checks, signals: dict, ref: dict, limits: dict) -> None:
    """Prompt copying, length collapse, length blow-up, off-support consensus."""
    copy, ref_copy = _num(signals.get("prompt_copy_share")), _num(ref.get("prompt_copy_share"))
    if limits.get("copy_share_rise") is not None and copy is not None and ref_copy is not None:
        rise = copy - ref_copy
        out.add(
            "copy_share_rise",
            rise,
            limits["copy_share_rise"],
            rise >= limits["copy_share_rise"],
            f"prompt copying: {copy:.0%} of answers copy a prompt span (base {ref_copy:.0%})",
            rule="prompt_copy",
        )

    length, ref_length = _num(signals.get("length_mean")), _num(ref.get("length_mean"))
    ratio = _ratio(length, ref_length)
    if limits.get("length_ratio_min") is not None and ratio is not None:
        out.add(
            "length_ratio_min",
            ratio,
            limits["length_ratio_min"],
            ratio <= limits["length_ratio_min"],
            f"length collapse: mean length {ref_length:.1f} → {length:.1f} tokens",
            rule="length_collapse",
        )

    capped, ref_capped = _num(signals.get("max_tokens_share")), _num(ref.get("max_tokens_share"))
    if limits.get("max_tokens_share_rise") is not None and capped is not None:
        rise = capped - (ref_capped or 0.0)
        out.add(
            "max_tokens_share_rise",
            rise,
            limits["max_tokens_share_rise"],
            rise >= limits["max_tokens_share_rise"],
            f"length blow-up: {capped:.0%} of completions hit the token cap (base "
            f"{ref_capped or 0:.0%})",
            rule="length_blowup",
        )

    off = _num(signals.get("majority_off_base_support"))
    if limits.get("off_support_share") is not None and off is not None:
        out.add(
            "off_support_share",
            off,
            limits["off_support_share"],
            off >= limits["off_support_share"],
            f"off-support consensus: on {off:.0%} of prompts the majority answer is one the base "
            "never sampled",
            rule="off_support",
        )


def _trusted_rules(out: _Checks, signals: dict, ref: dict, limits: dict) -> list[str]:
    """Judge agreement fell by ``trusted_fall``: collapse; rose by ``trusted_rise``: the consensus
    rule's reasons are withdrawn (sharpening toward the judge). Returns the withdrawn reasons."""
    rise = _num(signals.get("judge_agreement_rise"))
    if rise is None:
        return []
    value, base = _num(signals.get("judge_agreement")), _num(ref.get("judge_agreement"))
    moved = (
        f"{base:.2f} → {value:.2f}" if value is not None and base is not None else f"{rise:+.2f}"
    )
    fall = limits.get("trusted_fall")
    if fall is not None:
        out.add(
            "trusted_fall",
            -rise,
            fall,
            -rise >= fall,
            f"judge agreement fell: {moved} of probe answers equal the judge's reference answer",
            rule="trusted_fall",
        )
    limit = limits.get("trusted_rise")
    if limit is None:
        return []
    tripped = rise >= limit
    out.checks["trusted_rise"] = {"value": rise, "threshold": _num(limit), "tripped": tripped}
    if not tripped:
        return []
    return [
        f"sharpening toward the judge, not collapse (judge agreement {moved}): {why}"
        for why in out.drop("consensus_collapse")
    ]


def detect_collapse(
    signals: Mapping[str, Any],
    reference_signals: Mapping[str, Any] | None,
    thresholds: Mapping[str, Any] | HealthThresholds | None = None,
) -> Verdict:
    """Flag the collapse signature: consensus up while diversity/entropy falls, copying, length collapse.

    Rules (each disabled by a ``None`` threshold):

    * ``consensus_collapse``: agreement rose by ≥ ``agreement_rise`` over the reference *and* the
      entropy (token-level when both frames have log-probs, else answer entropy) fell to
      ≤ ``entropy_ratio`` × the reference's;
    * ``prompt_copy``: the share of answers copying a prompt span rose by ≥ ``copy_share_rise``;
    * ``length_collapse``: mean length ≤ ``length_ratio_min`` × the reference's;
    * ``length_blowup``: the share hitting the token cap rose by ≥ ``max_tokens_share_rise``;
    * ``off_support``: ≥ ``off_support_share`` of prompts have a consensus answer the base never
      sampled (needs the reference *frame* in the signals; sharpening methods cannot get there).

    With the judge's agreement in the signals (``judge_agreement``, ``judge_agreement_rise``: see
    :func:`taoflow.health.trusted.trusted_signals`):

    * ``trusted_fall``: agreement with the judge fell by ≥ ``trusted_fall`` — collapsed, even
      when every label-free rule is silent;
    * ``trusted_rise``: agreement with the judge rose by ≥ ``trusted_rise`` — a consensus
      collapse is overruled (recorded in ``overruled``), the other rules stand.

    ``decided_by`` then names the rules behind the verdict. Without the judge's signals these
    rules are skipped and the verdict is the label-free one, unchanged.

    Fewer than ``min_prompts`` voting groups is not judged (a note says so) rather than guessed.
    """
    limits = threshold_values(thresholds)
    signals = dict(signals)
    ref = dict(reference_signals or {})

    n_groups = int(signals.get("n_groups") or 0)
    min_prompts = limits.get("min_prompts") or 0
    if n_groups < min_prompts:
        note = (
            f"only {n_groups} prompt groups with ≥2 candidates (< min_prompts={min_prompts}): "
            "not judged"
        )
        return Verdict(False, [], signals, {}, [note])

    out = _Checks()
    _consensus_rule(out, signals, ref, limits)
    _shape_rules(out, signals, ref, limits)
    if _num(signals.get("judge_agreement_rise")) is None:
        return Verdict(bool(out.reasons), out.reasons, signals, out.checks, [])
    overruled = _trusted_rules(out, signals, ref, limits)
    decided_by = list(dict.fromkeys(out.rules)) or (["trusted_rise"] if overruled else [])
    return Verdict(bool(out.reasons), out.reasons, signals, out.checks, [], decided_by, overruled)


def _as_verdict_dict(item: Any) -> dict[str, Any] | None:
    if isinstance(item, Verdict):
        return item.to_dict()
    if isinstance(item, Mapping):
        if "collapsed" in item:
            return dict(item)
        if isinstance(item.get("health"), Mapping):  # a policy lineage carrying its verdict
            return _as_verdict_dict(item["health"])
    return None


def promotion_blocked(health_verdicts: Any) -> tuple[bool, str]:
    """Whether the registry gate must refuse ``champion``, and why (label-free metrics notwithstanding).

    Accepts one verdict or health dict, a list of them, or a mapping ``name → verdict``; a policy
    lineage with a ``health`` entry works too. Any collapsed verdict blocks. No verdict at all
    does not block (the gate's other checks still apply), but says so.
    """
    if health_verdicts is None:
        return False, "no health verdict recorded"
    if isinstance(health_verdicts, Verdict) or _as_verdict_dict(health_verdicts) is not None:
        items = [("policy", health_verdicts)]
    elif isinstance(health_verdicts, Mapping):
        items = list(health_verdicts.items())
    else:
        items = [(f"#{i}", v) for i, v in enumerate(health_verdicts)]
    blocked = []
    seen = 0
    for name, item in items:
        verdict = _as_verdict_dict(item)
        if verdict is None:
            continue
        seen += 1
        if verdict.get("collapsed"):
            label = f"round {verdict['round']}" if verdict.get("round") is not None else name
            reasons = "; ".join(verdict.get("reasons") or ["collapsed"])
            blocked.append(f"{label}: {reasons}")
    if blocked:
        return True, "collapse detected — " + " | ".join(blocked)
    return (
        False,
        f"{seen} health verdict(s), none collapsed" if seen else "no health verdict recorded",
    )
