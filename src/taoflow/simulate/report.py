"""What the user sees: accuracy per cycle with paired CIs, the feedback reward model, the gate.

Per cycle, the served champion after the cycle is the promoted policy when the gate promoted,
else the champion that was served. Its per-item greedy accuracy on the gate benchmark is paired
(:func:`taoflow.core.stats.paired_comparison`, evaluation's bootstrap) with the base model's
(cycle 1's ``base`` row) and with the champion it replaces (this cycle's ``base`` row: every
cycle starts from the champion, so evaluation re-measures it beside the new round).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.stats import paired_comparison
from taoflow.simulate.cycles import CycleResult

METRIC = "accuracy"


def _benchmark(result: CycleResult) -> str:
    metric = str(result.decision.get("metric") or "")
    frame = result.per_prompt
    if "/" in metric:
        return metric.rsplit("/", 1)[0]
    return str(frame.loc[frame[METRIC].notna(), "benchmark"].iloc[0])


def _candidate(frame: pd.DataFrame) -> str:
    rounds = sorted(
        (m for m in frame["model"].unique() if str(m).startswith("round_")),
        key=lambda m: int(str(m).split("_")[1]),
    )
    return rounds[-1]


def _scores(frame: pd.DataFrame, benchmark: str, model: str) -> pd.Series:
    rows = frame[(frame["benchmark"] == benchmark) & (frame["model"] == model)]
    return rows.set_index(rows["item_id"].astype(str))[METRIC].astype(float).sort_index()


def _gate(decision: dict[str, Any]) -> str:
    """champion (promoted), challenger (refused), or why nothing was registered."""
    if decision.get("alias"):
        return str(decision["alias"])
    reason = str(decision.get("reason") or "")
    return "same weights as a registered version" if "already registered" in reason else "off"


def _paired(a: pd.Series, b: pd.Series, seed: int) -> dict[str, float]:
    common = a.index.intersection(b.index)
    got = paired_comparison(a[common].to_numpy(), b[common].to_numpy(), seed=seed)
    return {"diff": got.diff, "ci_low": got.ci_low, "ci_high": got.ci_high}


def summarise(results: Sequence[CycleResult], seed: int = 0) -> pd.DataFrame:
    """One row per cycle (plus cycle 0, the base): champion accuracy, CIs, data, gate."""
    if not results:
        return pd.DataFrame()
    bench = _benchmark(results[0])
    base = _scores(results[0].per_prompt, bench, "base")
    rows: list[dict[str, Any]] = [{"cycle": 0, "champion": "base", "accuracy": base.mean()}]
    for result in results:
        frame = result.per_prompt
        served = _scores(frame, bench, "base")  # the champion this cycle started from
        candidate = _scores(frame, bench, _candidate(frame))
        promoted = bool(result.decision.get("promoted"))
        champion = candidate if promoted else served
        row: dict[str, Any] = {
            "cycle": result.cycle,
            "champion": f"v{result.decision.get('version')}" if promoted else "kept",
            "accuracy": champion.mean(),
            "candidate_accuracy": candidate.mean(),
            "gate": _gate(result.decision),
            "gate_diff": result.decision.get("diff"),
        }
        for name, other in (("base", base), ("prev", served)):
            paired = _paired(champion, other, seed)
            row.update({f"vs_{name}_{k}": v for k, v in paired.items()})
        row["rm_eval_accuracy"] = result.reward_model.get("eval_accuracy")
        row["rm_trained"] = bool(result.reward_model.get("trained"))
        for key in (
            "prompts_sent",
            "requests",
            "feedback_events",
            "feedback_late_from_previous",
            "feedback_pairs",
            "prompts_from_traces",
        ):
            row[key] = result.counts.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return str(value)


def _count(value: Any) -> str:
    return "—" if value is None or pd.isna(value) else str(int(value))


def _ci(row: pd.Series, name: str) -> str:
    if pd.isna(row.get(f"vs_{name}_diff")):
        return "—"
    return (
        f"{row[f'vs_{name}_diff']:+.3f} [{row[f'vs_{name}_ci_low']:+.3f}, "
        f"{row[f'vs_{name}_ci_high']:+.3f}]"
    )


def cycle_table(summary: pd.DataFrame, title: str = "") -> str:
    """The per-cycle Markdown table (README-ready)."""
    header = [
        "cycle",
        "champion",
        "greedy acc.",
        "vs base (95% CI)",
        "vs previous champion (95% CI)",
        "candidate acc.",
        "gate",
        "feedback RM pair acc. (held-out)",
        "prompts sent",
        "feedback events",
        "feedback pairs",
    ]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for _, row in summary.iterrows():
        cells = [
            str(int(row["cycle"])),
            str(row["champion"]),
            _fmt(row["accuracy"]),
            _ci(row, "base"),
            _ci(row, "prev"),
            _fmt(row.get("candidate_accuracy")),
            str(row.get("gate") if row["cycle"] else "—"),
            _fmt(row.get("rm_eval_accuracy")),
            *(_count(row.get(k)) for k in ("prompts_sent", "feedback_events", "feedback_pairs")),
        ]
        lines.append("| " + " | ".join(c.replace("nan", "—") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_cycles(summaries: dict[str, pd.DataFrame]) -> Any:
    """Accuracy per cycle (one line per simulation), with the paired CI vs base as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, summary in summaries.items():
        left.plot(summary["cycle"], summary["accuracy"], marker="o", label=name)
        later = summary[summary["cycle"] > 0]
        diff = later["vs_base_diff"].astype(float)
        err = np.vstack([diff - later["vs_base_ci_low"], later["vs_base_ci_high"] - diff])
        right.errorbar(later["cycle"], diff, yerr=err, marker="o", capsize=4, label=name)
    left.set(xlabel="cycle", ylabel="greedy accuracy", title="served champion")
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set(xlabel="cycle", ylabel="champion − base", title="paired difference, 95% CI")
    for axis in (left, right):
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend()
    fig.tight_layout()
    return fig
