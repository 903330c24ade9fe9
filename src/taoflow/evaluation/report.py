"""The evaluation report (Markdown: metrics with CIs, paired verdicts, regressions) and its plots."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.evaluate import EvaluateParams
from taoflow.evaluation.best_of_n import best_of_n_source


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def build_eval_report(
    results: pd.DataFrame,
    paired: pd.DataFrame,
    per_prompt: pd.DataFrame,
    params: EvaluateParams,
) -> str:
    """The Markdown report: metrics with CIs per model, paired verdicts, regressions."""
    confidence = int(round(params.confidence * 100))
    models = list(dict.fromkeys(results["model"]))
    out = ["# Evaluation report", ""]
    out.append(
        f"Values are means over items with {confidence}% bootstrap confidence intervals "
        f"({params.n_bootstrap} resamples over items). Paired differences are "
        "per-item (model − baseline): *better* / *worse* only when the interval excludes zero."
    )
    name = params.best_of_n.name
    if params.best_of_n.enabled and name in models:
        source = best_of_n_source(params)
        out += [
            "",
            f"`{name}` is {source}'s best of its k = {params.k} sampled "
            "completions per item, chosen by the score stage's label-free scorers (top reward; "
            "ties → earliest sample), with no generation of its own: its accuracy is the chosen "
            "answer's. pass@1, maj@k and pass@k do not apply to it (–); label-free benchmarks "
            "leave it out, since their reward is what chose it.",
        ]
    for variant in params.best_of_n.variants:
        if variant.name in models:
            source = variant.from_ or best_of_n_source(params)
            scorers = ", ".join(e.scorer_name for e in variant.scorers) or "the score stage's"
            refs = f"; reference answers: {variant.references}'s greedy ones" * bool(
                variant.references
            )
            out += ["", f"`{variant.name}` is {source}'s best-of-N by scorers {scorers}{refs}."]
    greedy_only = [m for m in models if params.greedy_only(m)]
    if greedy_only:
        out += [
            "",
            f"{', '.join(f'`{m}`' for m in greedy_only)}: evaluated by greedy completions only "
            "(accuracy; no k samples, no label-free rows).",
        ]
    for benchmark, rows in results.groupby("benchmark", sort=False):
        out += ["", f"## {benchmark}", ""]
        metrics = list(dict.fromkeys(rows["metric"]))
        table = []
        for model in models:
            cells = [model]
            for metric in metrics:
                hit = rows[(rows["model"] == model) & (rows["metric"] == metric)]
                if hit.empty:
                    cells.append("–")
                else:
                    r = hit.iloc[0]
                    cells.append(f"{_fmt(r.value)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]")
            table.append(cells)
        n = int(rows["n"].max())
        out += [_markdown_table(["model", *metrics], table), "", f"n = {n} items"]
        comp = paired[paired["benchmark"] == benchmark]
        if not comp.empty:
            table = []
            for r in comp.itertuples(index=False):
                verdict = "better" if r.better else "worse" if r.worse else "no clear difference"
                p = "–" if r.p_value is None or pd.isna(r.p_value) else f"{r.p_value:.3g}"
                table.append(
                    [
                        f"{r.model} vs {r.baseline}",
                        r.metric,
                        f"{_fmt(r.diff, True)} [{_fmt(r.ci_low, True)}, {_fmt(r.ci_high, True)}]",
                        f"{r.wins}/{r.losses}/{r.ties}",
                        p,
                        verdict,
                    ]
                )
            out += [
                "",
                "### Paired comparison",
                "",
                _markdown_table(
                    ["models", "metric", "difference", "wins/losses/ties", "McNemar p", "verdict"],
                    table,
                ),
            ]
        out += _regressions(per_prompt, benchmark, params)
    return "\n".join(out) + "\n"


def _regressions(per_prompt: pd.DataFrame, benchmark: str, params: EvaluateParams) -> list[str]:
    """Items the baseline got right and a tuned model got wrong (greedy): where it got worse."""
    limit = params.report_examples
    baseline = params.baseline
    rows = per_prompt[per_prompt["benchmark"] == benchmark]
    if "accuracy" not in rows.columns or limit <= 0:
        return []
    base = rows[rows["model"] == baseline].set_index("item_id")
    out = []
    for model in dict.fromkeys(rows["model"]):
        if model == baseline:
            continue
        tuned = rows[rows["model"] == model].set_index("item_id")
        worse = tuned.index[(base["accuracy"].reindex(tuned.index) == 1) & (tuned["accuracy"] == 0)]
        if len(worse) == 0:
            continue
        table = [
            [
                i,
                str(tuned.at[i, "prompt"])[:80],
                tuned.at[i, "reference"],
                str(base.at[i, "greedy_completion"])[:60],
                str(tuned.at[i, "greedy_completion"])[:60],
            ]
            for i in list(worse)[:limit]
        ]
        out += [
            "",
            f"### Where {model} got worse ({len(worse)} items right for {baseline}, wrong for {model})",
            "",
            _markdown_table(["item", "prompt", "reference", baseline, model], table),
        ]
    return out


def plot_metrics(results: pd.DataFrame, params: EvaluateParams) -> Any:
    """Metric per model with CI error bars, one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(results["benchmark"]))
    fig, axes = plt.subplots(
        1, max(len(benchmarks), 1), figsize=(6 * max(len(benchmarks), 1), 4), squeeze=False
    )
    models = list(dict.fromkeys(results["model"]))
    width = 0.8 / max(len(models), 1)
    for ax, benchmark in zip(axes[0], benchmarks, strict=False):
        rows = results[results["benchmark"] == benchmark]
        metrics = list(dict.fromkeys(rows["metric"]))
        x = np.arange(len(metrics))
        for j, model in enumerate(models):
            r = rows[rows["model"] == model].set_index("metric").reindex(metrics)
            errors = np.vstack([r["value"] - r["ci_low"], r["ci_high"] - r["value"]]).clip(min=0)
            ax.bar(
                x + (j - (len(models) - 1) / 2) * width,
                r["value"],
                width,
                yerr=errors,
                capsize=3,
                label=model,
            )
        ax.set_xticks(x, metrics)
        ax.set_title(benchmark)
        ax.set_ylabel(f"value ({params.confidence:.0%} CI)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_rewards(per_prompt: pd.DataFrame, params: EvaluateParams) -> Any:
    """Distribution of per-prompt mean reward, base vs tuned, on the label-free benchmarks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (
        per_prompt.dropna(subset=["mean_reward"])
        if "mean_reward" in per_prompt
        else per_prompt.iloc[:0]
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    if rows.empty:
        ax.text(0.5, 0.5, "no label-free benchmark evaluated", ha="center", va="center")
        ax.set_axis_off()
        return fig
    models = list(dict.fromkeys(rows["model"]))
    values = [rows.loc[rows["model"] == m, "mean_reward"].to_numpy() for m in models]
    bins = np.linspace(min(v.min() for v in values), max(v.max() for v in values) + 1e-9, 21)
    for model, v in zip(models, values, strict=True):
        ax.hist(v, bins=bins, alpha=0.5, label=f"{model} (mean {v.mean():.3f})")
    ax.set_xlabel("mean reward per prompt")
    ax.set_ylabel("prompts")
    ax.set_title("label-free reward: " + ", ".join(dict.fromkeys(rows["benchmark"])))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
