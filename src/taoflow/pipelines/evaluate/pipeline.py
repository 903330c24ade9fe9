"""evaluate: wiring. One generation node per model, then scoring, statistics, report and gate.

Which models and benchmark sources are wired is decided when the pipeline is built (Kedro
pipelines are static): ``create_pipeline(models=...)`` names them explicitly (the composed
``tao`` pipeline passes every round's policy); stand-alone, the base model plus every
``round_<k>.policy`` that exists in the catalog are evaluated. A benchmark marked
``optional: true`` whose source dataset does not exist yet (e.g. ``prompts`` before any ingest)
is left out instead of failing the run. With ``evaluate.best_of_n.enabled`` a derived model
``best_of_n`` is reported too: one selection node over the ``from`` model's sampled outputs, no
generation node of its own.
"""

from __future__ import annotations

import logging
from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.evaluate.nodes import (
    OUTPUTS_PREFIX,
    SOURCE_PREFIX,
    benchmark_specs,
    best_of_n_settings,
    build_eval_report,
    compute_eval_results,
    gate_policy,
    generate_eval_outputs,
    plot_metrics,
    plot_rewards,
    score_label_free_outputs,
    select_best_of_n,
)

logger = logging.getLogger(__name__)

BASE = {"base": "base_model"}
MAX_ROUNDS = 100


def _bind(func, **kwargs):
    """``functools.partial`` that keeps the function's name and docstring (Kedro node names)."""
    return update_wrapper(partial(func, **kwargs), func)


class _GraphCatalog:
    """The project's catalog, built lazily from the resolved config, to ask what exists."""

    def __init__(self) -> None:
        self._catalog: Any = None
        self._failed = False

    def _get(self):
        if self._catalog is None and not self._failed:
            from kedro.io import DataCatalog

            from taoflow.config.graph import graph_config

            try:
                self._catalog = DataCatalog.from_config(
                    graph_config("catalog"), credentials=graph_config("credentials")
                )
            except Exception:  # noqa: BLE001 - no usable catalog: assume nothing optional exists
                logger.warning(
                    "evaluate: could not build the catalog to discover inputs", exc_info=True
                )
                self._failed = True
        return self._catalog

    def exists(self, name: str) -> bool:
        catalog = self._get()
        if catalog is None or name not in catalog:
            return False
        try:
            return bool(catalog.exists(name))
        except Exception:  # noqa: BLE001
            return False

    def filepath(self, name: str) -> str | None:
        catalog = self._get()
        if catalog is None or name not in catalog:
            return None
        try:
            described = catalog.get(name)._describe()
        except Exception:  # noqa: BLE001
            return None
        path = described.get("filepath") or described.get("path")
        return str(path) if path else None


def discover_models(catalog: _GraphCatalog) -> dict[str, str]:
    """``base_model`` plus ``round_1.policy``, ``round_2.policy``, … while they exist."""
    models = dict(BASE)
    for k in range(1, MAX_ROUNDS + 1):
        name = f"round_{k}.policy"
        if not catalog.exists(name):
            break
        models[f"round_{k}"] = name
    return models


def create_pipeline(
    models: dict[str, str] | None = None,
    health: dict[str, str] | None = None,
    produced: set[str] | frozenset[str] = frozenset(),
    **kwargs: Any,
) -> Pipeline:
    """Build ``evaluate`` for ``models`` (display name → policy dataset; default: discovered).

    The last non-baseline model is the one the registry gate registers (``evaluate.gate.model``
    overrides); with only the baseline there is no gate node. ``health`` (round name → health
    dataset, e.g. ``{"round_1": "round_1.health"}``) feeds the gate's collapse guard.
    ``produced`` names datasets the composed pipeline itself writes (``prompts`` under ``tao``):
    an optional benchmark reading one is always wired, so a project's first run evaluates the
    same benchmarks as its later runs.
    """
    from taoflow.config.graph import graph_parameters

    params = graph_parameters().get("evaluate") or {}
    catalog = _GraphCatalog()
    if models is None:
        models = discover_models(catalog)
    if not models:
        raise ValueError("evaluate: no models to evaluate")
    baseline = params.get("baseline", "base")
    sources: dict[str, str] = {}
    for spec in benchmark_specs(params):
        source = spec["source"]
        if spec.get("optional") and source not in produced and not catalog.exists(source):
            logger.info(
                "evaluate: skipping benchmark %r (%s does not exist yet)", spec["name"], source
            )
            continue
        sources[SOURCE_PREFIX + source] = source
    label_free = any(
        s["kind"] == "label_free" and SOURCE_PREFIX + s["source"] in sources
        for s in benchmark_specs(params)
    )
    source_paths = {name: path for name in sources.values() if (path := catalog.filepath(name))}
    common = {"params": "params:evaluate", "task": "params:task", "seed": "params:seed"}

    nodes = []
    outputs = {}
    for name, dataset in models.items():
        out = f"eval_outputs_{name}"
        outputs[OUTPUTS_PREFIX + name] = out
        nodes.append(
            node(
                _bind(generate_eval_outputs, model_name=name, source_paths=source_paths),
                inputs={"policy": dataset, **common, **sources},
                outputs=out,
                name=f"evaluate_generate_{name}",
            )
        )
    if label_free:
        nodes.append(
            node(
                score_label_free_outputs,
                inputs={
                    "params": "params:evaluate",
                    "score": "params:score",
                    "task": "params:task",
                    **outputs,
                    **sources,
                },
                outputs="eval_label_free_scored",
                name="evaluate_score_label_free",
            )
        )
    result_inputs = {**common, **outputs}
    if label_free:
        result_inputs["label_free_scored"] = "eval_label_free_scored"
    reported = list(models)
    best_of_n = best_of_n_settings(params, reported)
    if best_of_n is not None:
        # A derived model: picks among the `from` model's samples, generates nothing itself.
        source = best_of_n["from"]
        nodes.append(
            node(
                select_best_of_n,
                inputs={
                    "params": "params:evaluate",
                    "score": "params:score",
                    "task": "params:task",
                    OUTPUTS_PREFIX + source: outputs[OUTPUTS_PREFIX + source],
                    **sources,
                },
                outputs="eval_best_of_n",
                name="evaluate_select_best_of_n",
            )
        )
        reported.insert(reported.index(source) + 1, best_of_n["name"])
        result_inputs["best_of_n"] = "eval_best_of_n"
    nodes.append(
        node(
            _bind(compute_eval_results, models=reported),
            inputs=result_inputs,
            outputs=["eval_results", "eval_paired", "eval_per_prompt", "evaluate_metrics"],
            name="evaluate_compute_results",
        )
    )
    report_inputs = {
        "results": "eval_results",
        "paired": "eval_paired",
        "per_prompt": "eval_per_prompt",
        "params": "params:evaluate",
    }
    tuned = [m for m in models if m != baseline]
    final = (params.get("gate") or {}).get("model") or (tuned[-1] if tuned else None)
    if final is not None:
        if final not in models:
            raise ValueError(
                f"evaluate.gate.model {final!r} is not an evaluated model: {list(models)}"
            )
        nodes.append(
            node(
                _bind(gate_policy, model_name=final),
                inputs={
                    "policy": models[final],
                    "per_prompt": "eval_per_prompt",
                    "params": "params:evaluate",
                    "task": "params:task",
                    "seed": "params:seed",
                    **(health or {}),
                },
                outputs="eval_gate",
                name="evaluate_registry_gate",
            )
        )
        report_inputs["gate"] = "eval_gate"
    nodes += [
        node(
            build_eval_report, inputs=report_inputs, outputs="eval_report", name="evaluate_report"
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
    return Pipeline(nodes, tags="evaluate")
