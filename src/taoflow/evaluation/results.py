"""Eval results: bootstrap CIs per (model, benchmark, metric) and paired comparisons with the
baseline, from the per-item scores; plus the MLflow metrics they log.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from taoflow.config.evaluate import BenchmarkSpec, EvaluateParams
from taoflow.core.ids import derive_seed
from taoflow.core.stats import bootstrap_ci, paired_comparison, win_scores
from taoflow.evaluation.benchmarks import metric_columns

RESULT_COLUMNS = ["model", "benchmark", "metric", "value", "n", "ci_low", "ci_high"]
PAIRED_COLUMNS = [
    "model",
    "baseline",
    "benchmark",
    "metric",
    "diff",
    "ci_low",
    "ci_high",
    "n",
    "wins",
    "losses",
    "ties",
    "p_value",
    "better",
    "worse",
]


def _has(frame: pd.DataFrame, metric: str) -> bool:
    """A derived model lacks the metrics that do not apply to it (and label-free rows)."""
    return len(frame) > 0 and metric in frame and bool(frame[metric].notna().any())


def _metric_rows(
    spec: BenchmarkSpec,
    metric: str,
    by_model: dict[str, pd.DataFrame],
    params: EvaluateParams,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One metric on one benchmark: each model's CI and each model's paired diff vs baseline."""
    baseline = params.baseline
    boot = {"n_resamples": params.n_bootstrap, "confidence": params.confidence}
    boot_seed = derive_seed(seed, "bootstrap", spec.name, metric)
    results, paired = [], []
    for model, frame in by_model.items():
        if not _has(frame, metric):
            continue
        est = bootstrap_ci(frame[metric].to_numpy(), seed=boot_seed, **boot)
        results.append({"model": model, "benchmark": spec.name, "metric": metric, **est.as_dict()})
        if model == baseline or not _has(by_model[baseline], metric):
            continue
        a, b = frame[metric].align(by_model[baseline][metric], join="inner")
        a, b = a.sort_index(), b.sort_index()  # the registry gate resamples in this order
        comparison = paired_comparison(a.to_numpy(), b.to_numpy(), seed=boot_seed, **boot)
        paired.append(
            {"model": model, "baseline": baseline, "benchmark": spec.name, "metric": metric}
            | comparison.as_dict()
        )
    return results, paired


def _win_rates(
    spec: BenchmarkSpec, by_model: dict[str, pd.DataFrame], params: EvaluateParams, seed: int
) -> list[dict[str, Any]]:
    """Each model's win rate against the baseline (per prompt: higher mean reward 1, equal ½)."""
    baseline = params.baseline
    rows = []
    for model, frame in by_model.items():
        if model == baseline or not _has(frame, "mean_reward"):
            continue
        a, b = frame["mean_reward"].align(by_model[baseline]["mean_reward"], join="inner")
        est = bootstrap_ci(
            win_scores(a.to_numpy(), b.to_numpy()),
            n_resamples=params.n_bootstrap,
            confidence=params.confidence,
            seed=derive_seed(seed, "bootstrap", spec.name, "win_rate"),
        )
        rows.append({"model": model, "benchmark": spec.name, "metric": "win_rate", **est.as_dict()})
    return rows


def eval_results(
    per_prompt: pd.DataFrame, params: EvaluateParams, seed: int, models: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-item scores → ``eval_results`` (CIs) and ``eval_paired`` (vs the baseline).

    Every metric is a mean over items, its CI a seeded bootstrap over items with the same
    resamples for every model; each other model is compared with the baseline on per-item
    differences (+ exact McNemar for 0/1 metrics). Label-free benchmarks add win rates.
    """
    if params.baseline not in models:
        raise ValueError(
            f"evaluate.baseline {params.baseline!r} is not an evaluated model: {models}"
        )
    results, paired = [], []
    present = set(per_prompt["benchmark"])
    for spec in params.enabled_benchmarks:
        if spec.name not in present:
            continue
        bench = per_prompt[per_prompt["benchmark"] == spec.name]
        by_model = {m: bench[bench["model"] == m].set_index("item_id") for m in models}
        for metric in metric_columns(spec, params.k):
            more, more_paired = _metric_rows(spec, metric, by_model, params, seed)
            results += more
            paired += more_paired
        if spec.kind == "label_free" and "win_rate" in spec.metric_names:
            results += _win_rates(spec, by_model, params, seed)
    return (
        pd.DataFrame(results, columns=RESULT_COLUMNS),
        pd.DataFrame(paired, columns=PAIRED_COLUMNS),
    )


def mlflow_key(metric: str) -> str:
    """MLflow metric names allow no ``@``: ``pass@8`` → ``pass_at_8``."""
    return metric.replace("@", "_at_")


def result_metrics(results: pd.DataFrame, paired: pd.DataFrame, n_models: int) -> dict[str, float]:
    """The flat MLflow metrics of the results: value and CI per row, diff and CI per comparison."""
    metrics: dict[str, Any] = {}
    for row in results.itertuples(index=False):
        key = f"{row.benchmark}.{row.model}.{mlflow_key(row.metric)}"
        metrics.update({key: row.value, f"{key}.ci_low": row.ci_low, f"{key}.ci_high": row.ci_high})
    for row in paired.itertuples(index=False):
        key = f"{row.benchmark}.{row.model}_vs_{row.baseline}.{mlflow_key(row.metric)}"
        metrics.update(
            {f"{key}.diff": row.diff, f"{key}.ci_low": row.ci_low, f"{key}.ci_high": row.ci_high}
        )
    metrics["n_models"] = n_models
    return metrics
