"""What the user sees: accuracy per cycle with paired CIs, the feedback reward model, the gate.

Per cycle, the served champion after the cycle is the promoted policy when the gate promoted,
else the champion that was served. Its per-item greedy accuracy on the gate benchmark is paired
(:func:`taoflow.core.stats.paired_comparison`, evaluation's bootstrap) with the base model's
(cycle 1's ``base`` row) and with the champion it replaces (this cycle's ``base`` row: every
cycle starts from the champion, so evaluation re-measures it beside the new round).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.stats import paired_comparison
from taoflow.simulate.cycles import CYCLE_TAG, EXPERIMENT, CycleResult

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


def versus(a: pd.Series, b: pd.Series, seed: int = 0) -> dict[str, float]:
    """Paired difference ``a − b`` on the items both were scored on, with its 95% CI."""
    common = a.index.intersection(b.index)
    got = paired_comparison(a[common].to_numpy(), b[common].to_numpy(), seed=seed)
    return {"diff": got.diff, "ci_low": got.ci_low, "ci_high": got.ci_high}


def _champion(result: CycleResult, bench: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(champion after the cycle, champion it started from, the cycle's candidate), per item."""
    frame = result.per_prompt
    served = _scores(frame, bench, "base")  # the champion this cycle started from
    candidate = _scores(frame, bench, _candidate(frame))
    return (candidate if result.decision.get("promoted") else served), served, candidate


def final_champion(results: Sequence[CycleResult]) -> pd.Series:
    """Per-item greedy accuracy of the champion after the last cycle (to pair simulations)."""
    return _champion(results[-1], _benchmark(results[0]))[0]


def summarise(results: Sequence[CycleResult], seed: int = 0) -> pd.DataFrame:
    """One row per cycle (plus cycle 0, the base): champion accuracy, CIs, data, gate."""
    if not results:
        return pd.DataFrame()
    bench = _benchmark(results[0])
    base = _scores(results[0].per_prompt, bench, "base")
    first_round = _scores(results[0].per_prompt, bench, _candidate(results[0].per_prompt))
    rows: list[dict[str, Any]] = [{"cycle": 0, "champion": "base", "accuracy": base.mean()}]
    for result in results:
        champion, served, candidate = _champion(result, bench)
        promoted = bool(result.decision.get("promoted"))
        row: dict[str, Any] = {
            "cycle": result.cycle,
            "champion": f"v{result.decision.get('version')}" if promoted else "kept",
            "accuracy": champion.mean(),
            "candidate_accuracy": candidate.mean(),
            "gate": _gate(result.decision),
            "gate_diff": result.decision.get("diff"),
        }
        for name, other in (("base", base), ("prev", served), ("first_round", first_round)):
            paired = versus(champion, other, seed)
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


def load_results(root: Path, name: str) -> list[CycleResult]:
    """A finished simulation's cycles, read back from its workspace (MLflow runs, cycle files).

    Rebuilds the report of a simulation without running it again (``simulate.py --report-only``).
    """
    import mlflow

    if not (Path(root) / "mlflow.db").is_file():
        raise ValueError(f"{root}: no simulation here (no mlflow.db); run it first")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{Path(root) / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise ValueError(f"{root}: no {EXPERIMENT} runs; run the simulation first")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`taoflow.simulation` = '{name}'"
    )
    if not runs:
        raise ValueError(f"{root}: no finished cycle of simulation {name!r}")
    results = []
    for run in sorted(runs, key=lambda r: int(r.data.tags[CYCLE_TAG])):
        cycle = int(run.data.tags[CYCLE_TAG])
        folder = Path(root) / "cycles" / f"cycle_{cycle}"
        metrics = run.data.metrics
        result = CycleResult(cycle=cycle, served=run.data.tags.get("taoflow.served_model", ""))
        result.run_id = run.info.run_id
        result.counts = {k: v for k, v in metrics.items() if not k.startswith("reward_model.")}
        prefix = len("reward_model.")
        result.reward_model = {
            k[prefix:]: v for k, v in metrics.items() if k.startswith("reward_model.")
        }
        result.decision = json.loads((folder / "promotion_decision.json").read_text())
        result.per_prompt = pd.read_parquet(folder / "eval_per_prompt.parquet")
        results.append(result)
    return results


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
        "vs cycle 1's round (95% CI)",
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
            _ci(row, "first_round"),
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
