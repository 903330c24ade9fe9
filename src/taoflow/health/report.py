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


def _label(health: Mapping[str, Any], index: int) -> str:
    return str(health.get("namespace") or f"round_{health.get('round', index + 1)}")


def _threshold_line(kind: str, threshold: float | None, reference: float | None) -> float | None:
    if threshold is None:
        return None
    if kind == "absolute":
        return threshold
    if reference is None:
        return None
    return reference * threshold if kind == "ratio" else reference + threshold


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
    labels = [_label(h, i) for i, h in enumerate(healths)]
    lines = [
        "## Health (label-free)",
        "",
        "Signals computed without labels on each round's candidates, compared with the base "
        "model's. A collapsed round is not used for the next round and its policy cannot be "
        "promoted.",
        "",
        "| round | verdict | agreement | token entropy | answer entropy | prompt copy | "
        "mean length | hit cap | base reward under policy | reasons |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value: Any, pct: bool = False) -> str:
        value = _num(value)
        if value is None:
            return "—"
        return f"{value:.0%}" if pct else f"{value:.2f}"

    for label, health in zip(labels, healths, strict=True):
        s = health.get("signals", {})
        verdict = "**COLLAPSED**" if health.get("collapsed") else "ok"
        if not health.get("collapsed") and health.get("notes"):
            verdict = "not judged"
        lines.append(
            f"| {label} | {verdict} | {fmt(s.get('agreement_mean'))} | "
            f"{fmt(s.get('token_nll_mean'))} | {fmt(s.get('answer_entropy_mean'))} | "
            f"{fmt(s.get('prompt_copy_share'), True)} | {fmt(s.get('length_mean'))} | "
            f"{fmt(s.get('max_tokens_share'), True)} | "
            f"{fmt(s.get('base_reward_under_policy'))} | "
            f"{'; '.join(health.get('reasons') or health.get('notes') or []) or '—'} |"
        )
    lines += [
        "",
        "Thresholds: "
        + ", ".join(f"`{k}`={v}" for k, v in limits.items() if v is not None)
        + " (see `conf/base/parameters_health.yml`).",
        "",
    ]
    return "\n".join(lines), _health_figure(healths, labels, limits)


def _health_figure(
    healths: list[Mapping[str, Any]], labels: list[str], limits: Mapping[str, Any]
) -> Any:
    """One panel per :data:`PLOTTED` signal across rounds, collapsed rounds and thresholds marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 6), layout="constrained")
    axes = figure.subplots(2, 4).ravel()
    x = np.arange(len(healths))
    for ax, (name, rule, kind) in zip(axes, PLOTTED, strict=True):
        values = [_num(h.get("signals", {}).get(name)) for h in healths]
        y = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.plot(x, y, marker="o", color="tab:blue")
        bad = np.array([bool(h.get("collapsed")) for h in healths])
        if bad.any():
            ax.scatter(x[bad], y[bad], color="tab:red", zorder=3, label="collapsed")
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
            ax.plot(x, ly, linestyle="--", color="tab:red", label=f"threshold ({rule})")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(x, labels, fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    figure.suptitle("Label-free health per round")
    return figure
