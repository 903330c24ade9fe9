"""The report's "Health" section: a Markdown table of every round's verdict and a figure.

The figure is a bare ``matplotlib.figure.Figure`` (no pyplot state), saved by
``matplotlib.MatplotlibDataset``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from taoflow.config.health import HealthThresholds
from taoflow.health.signals import _num
from taoflow.health.verdict import threshold_values

# The signals drawn in the report, with the rule (and the way its threshold maps onto the
# signal's axis) that guards each: (signal, rule, kind) where kind is "rise" (reference +
# threshold) or "ratio" (reference × threshold) or "absolute".
PLOTTED = (
    ("agreement_mean", "agreement_rise", "rise"),
    ("token_nll_mean", "entropy_ratio", "ratio"),
    ("answer_entropy_mean", "entropy_ratio", "ratio"),
    ("prompt_copy_share", "copy_share_rise", "rise"),
    ("length_mean", "length_ratio_min", "ratio"),
    ("max_tokens_share", "max_tokens_share_rise", "rise"),
    ("majority_off_base_support", "off_support_share", "absolute"),
    ("base_reward_under_policy", None, "absolute"),
)
# Drawn too when the rounds were judged against a frozen judge's answers (both its rules).
JUDGE_PLOTTED = (
    ("judge_agreement", "trusted_rise", "rise"),
    ("judge_agreement", "trusted_fall", "fall"),
)
TRUSTED_RULES = ("trusted_rise", "trusted_fall")


def _label(health: Mapping[str, Any], index: int) -> str:
    return str(health.get("namespace") or f"round_{health.get('round', index + 1)}")


def _threshold_line(kind: str, threshold: float | None, reference: float | None) -> float | None:
    if threshold is None:
        return None
    if kind == "absolute":
        return threshold
    if reference is None:
        return None
    if kind == "fall":
        return reference - threshold
    return reference * threshold if kind == "ratio" else reference + threshold


def _judged(healths: list[Mapping[str, Any]]) -> bool:
    """Whether any round carries the judge's agreement (then its columns and panel are shown)."""
    return any(
        "decided_by" in h or _num((h.get("signals") or {}).get("judge_agreement")) is not None
        for h in healths
    )


def _verdict_cell(health: Mapping[str, Any]) -> str:
    if health.get("collapsed"):
        return "**COLLAPSED**"
    if health.get("overruled"):
        return "ok (sharpening toward the judge)"
    return "not judged" if health.get("notes") else "ok"


def _decided_cell(health: Mapping[str, Any]) -> str:
    rules = list(health.get("decided_by") or [])
    if not rules:
        return "no rule tripped" if "decided_by" in health else "—"
    if "trusted_rise" in rules and health.get("overruled"):
        return "`trusted_rise` (overrules `consensus_collapse`)"
    return ", ".join(f"`{rule}`" for rule in rules)


def health_report(
    healths: Iterable[Mapping[str, Any]],
    thresholds: Mapping[str, Any] | HealthThresholds | None = None,
) -> tuple[str, Any]:
    """The report's "Health" section (Markdown) and a figure of the signals per round, thresholds drawn.

    ``healths`` are the ``{round}.health`` dicts in round order. The figure is a bare
    ``matplotlib.figure.Figure`` (no pyplot state), saved by ``matplotlib.MatplotlibDataset``.
    """
    healths = list(healths)
    limits = threshold_values(thresholds)
    judged = _judged(healths)
    if not judged:  # no judge: the judge's rules never ran, so they are not listed
        limits = {k: v for k, v in limits.items() if k not in TRUSTED_RULES}
    labels = [_label(h, i) for i, h in enumerate(healths)]
    judge_header = "judge agreement (base → policy) | decided by | " if judged else ""
    lines = [
        "## Health (label-free)",
        "",
        "Signals computed without labels on each round's candidates, compared with the base "
        "model's. A collapsed round is not used for the next round and its policy cannot be "
        "promoted.",
        "",
        "| round | verdict | agreement | token entropy | answer entropy | prompt copy | "
        f"mean length | hit cap | base reward under policy | {judge_header}reasons |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | "
        + ("--- | --- | " if judged else "")
        + "--- |",
    ]
    if judged:
        lines[0] = "## Health (label-free, and against the judge)"
        lines[4:4] = [
            "With the judge's reference answers, each probe is also scored by how often its "
            "answers equal the judge's (a trusted signal): sharpening toward the judge overrules "
            "a consensus collapse (`trusted_rise`), drifting away from it is a collapse "
            "(`trusted_fall`).",
            "",
        ]

    def fmt(value: Any, pct: bool = False) -> str:
        value = _num(value)
        if value is None:
            return "—"
        return f"{value:.0%}" if pct else f"{value:.2f}"

    for label, health in zip(labels, healths, strict=True):
        s = health.get("signals", {})
        judge_cells = ""
        if judged:
            base = (health.get("reference_signals") or {}).get("judge_agreement")
            judge_cells = (
                f"{fmt(base)} → {fmt(s.get('judge_agreement'))} | {_decided_cell(health)} | "
            )
        why = health.get("reasons") or health.get("overruled") or health.get("notes") or []
        lines.append(
            f"| {label} | {_verdict_cell(health)} | {fmt(s.get('agreement_mean'))} | "
            f"{fmt(s.get('token_nll_mean'))} | {fmt(s.get('answer_entropy_mean'))} | "
            f"{fmt(s.get('prompt_copy_share'), True)} | {fmt(s.get('length_mean'))} | "
            f"{fmt(s.get('max_tokens_share'), True)} | "
            f"{fmt(s.get('base_reward_under_policy'))} | {judge_cells}"
            f"{'; '.join(why) or '—'} |"
        )
    lines += [
        "",
        "Thresholds: "
        + ", ".join(f"`{k}`={v}" for k, v in limits.items() if v is not None)
        + " (see `conf/base/parameters_health.yml`).",
        "",
    ]
    return "\n".join(lines), _health_figure(healths, labels, limits, judged)


def _threshold_plot(
    ax: Any,
    x: np.ndarray,
    healths: list[Mapping[str, Any]],
    entry: tuple[str, str | None, str],
    *,
    limits: Mapping[str, Any],
    color: str,
) -> None:
    """The dashed line of ``entry``'s rule across rounds (where it has a threshold)."""
    name, rule, kind = entry
    limit_y = [
        _threshold_line(
            kind,
            _num(limits.get(rule)) if rule else None,
            _num((h.get("reference_signals") or {}).get(name)),
        )
        for h in healths
    ]
    if any(v is not None for v in limit_y):
        ly = np.array([np.nan if v is None else v for v in limit_y], dtype=float)
        ax.plot(x, ly, linestyle="--", color=color, label=f"threshold ({rule})")


def _health_figure(
    healths: list[Mapping[str, Any]],
    labels: list[str],
    limits: Mapping[str, Any],
    judged: bool = False,
) -> Any:
    """One panel per :data:`PLOTTED` signal across rounds, collapsed rounds and thresholds marked;
    with ``judged``, a ninth for the judge agreement (:data:`JUDGE_PLOTTED`)."""
    from matplotlib.figure import Figure

    panels: list[tuple[tuple[str, str | None, str], ...]] = [(p,) for p in PLOTTED]
    if judged:
        panels.append(JUDGE_PLOTTED)
    figure = Figure(figsize=(12, 9 if judged else 6), layout="constrained")
    axes = figure.subplots(3, 3).ravel() if judged else figure.subplots(2, 4).ravel()
    x = np.arange(len(healths))
    for ax, panel in zip(axes, panels, strict=True):
        name = panel[0][0]
        values = [_num(h.get("signals", {}).get(name)) for h in healths]
        y = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.plot(x, y, marker="o", color="tab:blue")
        bad = np.array([bool(h.get("collapsed")) for h in healths])
        if bad.any():
            ax.scatter(x[bad], y[bad], color="tab:red", zorder=3, label="collapsed")
        for entry in panel:
            color = "tab:green" if entry[1] == "trusted_rise" else "tab:red"
            _threshold_plot(ax, x, healths, entry, limits=limits, color=color)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(x, labels, fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    figure.suptitle(
        "Health per round: label-free signals and agreement with the judge"
        if judged
        else "Label-free health per round"
    )
    return figure
