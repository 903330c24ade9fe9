"""promote: wiring. One node registers the final evaluated policy (champion or challenger).

``create_pipeline(models=..., health=...)``: ``models`` as given to ``evaluate`` (display name →
policy dataset; default: the configured ones, :func:`taoflow.evaluation.models.configured_models`);
``health`` (round name → health verdict dataset, e.g. ``{"round_1": "round_1.health"}``; the
composed ``tao`` pipeline passes every round's; stand-alone none, so no health guard). The
registered model is ``promote.model``, else the last model that is not ``evaluate.baseline``;
with only the baseline there is nothing to register and no node.
"""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any

from kedro.pipeline import Pipeline, node

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.graph import graph_parameters
from taoflow.config.promote import PromoteParams
from taoflow.evaluation.models import configured_models
from taoflow.pipelines.promote.nodes import promote_policy


def create_pipeline(
    models: dict[str, str] | None = None,
    health: dict[str, str] | None = None,
    **kwargs: Any,
) -> Pipeline:
    """Build ``promote`` for the final one of ``models``, guarded by ``health``."""
    graph = graph_parameters()
    evaluate: EvaluateParams = graph.get("evaluate") or EvaluateParams()
    promote: PromoteParams = graph.get("promote") or PromoteParams()
    models = configured_models(graph) if models is None else models
    tuned = [m for m in models if m != evaluate.baseline]
    final = promote.model or (tuned[-1] if tuned else None)
    if final is None:
        return Pipeline([])
    if final not in models:
        raise ValueError(f"promote.model {final!r} is not an evaluated model: {list(models)}")
    func = update_wrapper(partial(promote_policy, model_name=final), promote_policy)
    return Pipeline(
        [
            node(
                func,
                inputs={
                    "policy": models[final],
                    "per_prompt": "eval_per_prompt",
                    "promote": "params:promote",
                    "evaluate": "params:evaluate",
                    "task": "params:task",
                    "seed": "params:seed",
                    **(health or {}),
                },
                outputs=["promotion_decision", "promotion_report"],
                name="promote_policy",
            )
        ],
        tags="promote",
    )
