"""Nodes of the ``evaluate`` pipeline: is the tuned model better, by how much, and where worse?

Flow: one generation node per model writes that model's outputs as resumable shards (greedy and
k sampled completions per benchmark item, same seeds for every model) → label-free items are
scored with the run's scorers → per-item metric scores through taoflow's HF ``evaluate`` modules
→ bootstrap CIs and paired comparisons with the baseline → report and plots. The work lives in
:mod:`taoflow.evaluation`; the registry gate is the ``promote`` stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.generate import GenerateParams
from taoflow.core.tracking import mlflow_metrics
from taoflow.evaluation import best_of_n, outputs, report, results, scoring
from taoflow.evaluation.benchmarks import as_task
from taoflow.models import Policy

# ``task`` (params:task) is typed Any: a mapping, or TaskParams once some node types the block
# (Kedro then validates it for every node); ``score`` (params:score) is passed through untyped
# until its model lands.


def generate_eval_outputs(
    policy: Policy,
    params: EvaluateParams,
    task: Any,
    seed: int,
    generate: GenerateParams,
    *,
    model_name: str,
    **sources: pd.DataFrame,
) -> dict[str, Callable[[], pd.DataFrame]]:
    """One model's completions on every benchmark item, as lazy resumable shards.

    ``generate.backend`` (and ``generate.vllm``) picks the generation backend, as for candidates.
    """
    return outputs.generate_eval_outputs(
        policy,
        params,
        as_task(task),
        seed,
        model_name=model_name,
        sources=sources,
        generate=generate,
    )


def score_label_free_outputs(
    params: EvaluateParams, score: Any, task: Any, **inputs: Any
) -> pd.DataFrame:
    """Every model's label-free samples scored with the run's scorers (``params:score``)."""
    return scoring.score_label_free(
        outputs.load_outputs(inputs), params, score, as_task(task), inputs
    )


def select_best_of_n(
    params: EvaluateParams, score: Any, task: Any, *, variant: str | None = None, **inputs: Any
) -> pd.DataFrame:
    """best-of-N's pick per labeled item among the ``from`` model's samples (no generation).

    ``variant`` names an ``evaluate.best_of_n.variants`` entry (its own scorers and references);
    None = the ``best_of_n`` row picked by the score stage's scorers.
    """
    chosen = next((v for v in params.best_of_n.variants if v.name == variant), None)
    if variant is not None and chosen is None:
        raise ValueError(f"evaluate.best_of_n.variants has no entry {variant!r}")
    return best_of_n.select_best_of_n(
        outputs.load_outputs(inputs), params, score, as_task(task), inputs, variant=chosen
    )


def compute_eval_results(
    params: EvaluateParams, task: Any, seed: int, *, models: list[str], **inputs: Any
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Per-item scores → ``eval_results`` (CIs), ``eval_paired`` (vs baseline), per-prompt table.

    ``inputs``: every model's ``outputs__<model>``, ``label_free_scored`` when a label-free
    benchmark is wired, ``best_of_n`` when best-of-N is enabled, ``selected__<variant>`` per
    best-of-N variant.
    """
    derived = {}
    if inputs.get("best_of_n") is not None:
        derived[params.best_of_n.name] = inputs["best_of_n"]
    for key, frame in inputs.items():
        if key.startswith(best_of_n.SELECTED_PREFIX):
            derived[key.removeprefix(best_of_n.SELECTED_PREFIX)] = frame
    per_prompt = scoring.per_prompt_scores(
        outputs.load_outputs(inputs),
        inputs.get("label_free_scored"),
        params,
        as_task(task),
        models,
        derived=derived,
    )
    table, paired = results.eval_results(per_prompt, params, seed, models)
    metrics = results.result_metrics(table, paired, len(models))
    return table, paired, per_prompt, mlflow_metrics(metrics, prefix="evaluate")


def build_eval_report(
    results: pd.DataFrame, paired: pd.DataFrame, per_prompt: pd.DataFrame, params: EvaluateParams
) -> str:
    """The Markdown report: metrics with CIs per model, paired verdicts, regressions."""
    return report.build_eval_report(results, paired, per_prompt, params)


def plot_metrics(results: pd.DataFrame, params: EvaluateParams) -> Any:
    """Metric per model with CI error bars, one panel per benchmark."""
    return report.plot_metrics(results, params)


def plot_rewards(per_prompt: pd.DataFrame, params: EvaluateParams) -> Any:
    """Distribution of per-prompt mean reward per model on the label-free benchmarks."""
    return report.plot_rewards(per_prompt, params)
