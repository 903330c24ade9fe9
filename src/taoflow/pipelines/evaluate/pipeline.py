"""evaluate: wiring. One generation node per model, then scoring, statistics, report and plots.

The graph follows the configuration only, never files on disk. ``create_pipeline(models=...)``
names the models (display name → policy dataset; the composed ``tao`` pipeline passes its own).
Stand-alone (``kedro run --pipeline evaluate``) it evaluates ``base``, ``sft_oracle`` when
``tao.sft_oracle``, and ``round_1`` … ``round_k`` for k = ``tao.rounds`` — the models a ``tao``
run of the same configuration produced. Every enabled benchmark's source is an input (the
label-free ``holdout`` benchmark reads ``prompts``); ``enabled: false`` leaves one out. With
``evaluate.best_of_n.enabled`` a derived model is reported too: one selection node over the
``from`` model's sampled outputs, no generation node of its own; each
``evaluate.best_of_n.variants`` entry adds one more (its own scorers, ``eval_selected_<name>``).
``evaluate.extra_models`` (e.g. the frozen judge) are evaluated beside the others from the
``extra_policy_<name>`` datasets the ``prepare_extra`` stage saves.
"""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Pipeline, node

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.graph import graph_parameters
from taoflow.evaluation.benchmarks import benchmark_sources
from taoflow.evaluation.best_of_n import SELECTED_PREFIX, best_of_n_settings, best_of_n_variants
from taoflow.evaluation.models import configured_models, extra_model_datasets
from taoflow.evaluation.outputs import OUTPUTS_PREFIX
from taoflow.pipelines.evaluate.nodes import (
    build_eval_report,
    compute_eval_results,
    generate_eval_outputs,
    plot_metrics,
    plot_rewards,
    score_label_free_outputs,
    select_best_of_n,
)

COMMON = {"params": "params:evaluate", "task": "params:task", "seed": "params:seed"}
SCORING = {"params": "params:evaluate", "score": "params:score", "task": "params:task"}


def _bind(func, **kwargs):
    """``functools.partial`` that keeps the function's name and docstring (Kedro node names)."""
    return update_wrapper(partial(func, **kwargs), func)


def _generation_nodes(models: dict[str, str], sources: dict[str, str]) -> list:
    return [
        node(
            _bind(generate_eval_outputs, model_name=name),
            inputs={"policy": dataset, **COMMON, "generate": "params:generate", **sources},
            outputs=f"eval_outputs_{name}",
            name=f"evaluate_generate_{name}",
        )
        for name, dataset in models.items()
    ]


def _report_nodes(label_free: bool) -> list:
    nodes = [
        node(
            build_eval_report,
            inputs={
                "results": "eval_results",
                "paired": "eval_paired",
                "per_prompt": "eval_per_prompt",
                "params": "params:evaluate",
            },
            outputs="eval_report",
            name="evaluate_report",
        ),
        node(
            plot_metrics,
            inputs=["eval_results", "params:evaluate"],
            outputs="eval_metrics_plot",
            name="evaluate_plot_metrics",
        ),
    ]
    if label_free:
        nodes.append(
            node(
                plot_rewards,
                inputs=["eval_per_prompt", "params:evaluate"],
                outputs="eval_reward_plot",
                name="evaluate_plot_rewards",
            )
        )
    return nodes


def _variant_node(variant: dict, outputs: dict[str, str], sources: dict[str, str]) -> Any:
    """One best-of-N variant: its picks among the ``from`` model's samples (plus references)."""
    used = [variant["from"]] + ([variant["references"]] if variant["references"] else [])
    inputs = {OUTPUTS_PREFIX + m: outputs[OUTPUTS_PREFIX + m] for m in used}
    return node(
        _bind(select_best_of_n, variant=variant["name"]),
        inputs={**SCORING, **inputs, **sources},
        outputs=f"eval_selected_{variant['name']}",
        name=f"evaluate_select_{variant['name']}",
    )


def create_pipeline(models: dict[str, str] | None = None, **kwargs: Any) -> Pipeline:
    """Build ``evaluate`` for ``models`` (display name → policy dataset; default: configured)."""
    graph = graph_parameters()
    params: EvaluateParams = graph.get("evaluate") or EvaluateParams()
    models = configured_models(graph) if models is None else models
    models = {**models, **extra_model_datasets(params)}
    if not models:
        raise ValueError("evaluate: no models to evaluate")
    sources = benchmark_sources(params)
    label_free = any(s.kind == "label_free" for s in params.enabled_benchmarks)
    outputs = {OUTPUTS_PREFIX + name: f"eval_outputs_{name}" for name in models}
    nodes = _generation_nodes(models, sources)
    result_inputs = {**COMMON, **outputs}
    if label_free:
        nodes.append(
            node(
                score_label_free_outputs,
                inputs={**SCORING, **outputs, **sources},
                outputs="eval_label_free_scored",
                name="evaluate_score_label_free",
            )
        )
        result_inputs["label_free_scored"] = "eval_label_free_scored"
    reported = list(models)
    best = best_of_n_settings(params, reported)
    if best is not None:
        # A derived model: picks among the `from` model's samples, generates nothing itself.
        source = OUTPUTS_PREFIX + best["from"]
        nodes.append(
            node(
                select_best_of_n,
                inputs={**SCORING, source: outputs[source], **sources},
                outputs="eval_best_of_n",
                name="evaluate_select_best_of_n",
            )
        )
        reported.insert(reported.index(best["from"]) + 1, best["name"])
        result_inputs["best_of_n"] = "eval_best_of_n"
    for variant in best_of_n_variants(params, list(models)):
        nodes.append(_variant_node(variant, outputs, sources))
        after = best["name"] if best is not None and best["from"] == variant["from"] else None
        anchor = reported.index(after or variant["from"])
        while anchor + 1 < len(reported) and reported[anchor + 1] not in models:
            anchor += 1  # after the derived rows already placed behind the same model
        reported.insert(anchor + 1, variant["name"])
        result_inputs[SELECTED_PREFIX + variant["name"]] = f"eval_selected_{variant['name']}"
    nodes.append(
        node(
            _bind(compute_eval_results, models=reported),
            inputs=result_inputs,
            outputs=["eval_results", "eval_paired", "eval_per_prompt", "evaluate_metrics"],
            name="evaluate_compute_results",
        )
    )
    return Pipeline(nodes + _report_nodes(label_free), tags="evaluate")
