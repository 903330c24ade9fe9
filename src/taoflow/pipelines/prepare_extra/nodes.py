"""Nodes of the ``prepare_extra`` pipeline: models evaluated beside the run's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.shared import ModelParams
from taoflow.core.tracking import mlflow_metrics
from taoflow.models import Policy, load_policy


def prepare_extra_model(
    evaluate: EvaluateParams, model: Mapping[str, Any], *, name: str
) -> tuple[Policy, dict[str, dict[str, float]]]:
    """Load ``evaluate.extra_models[name]`` (e.g. the frozen judge) as ``extra_policy_<name>``.

    Resolving a reference (converting an embedded GGUF, fetching a hub model) is this node's job
    alone, as ``prepare_base`` does for the base model: evaluate's nodes only read the saved
    folder. ``model`` (``params:model``) gives the cache folder.
    """
    if not isinstance(model, ModelParams):
        model = ModelParams.model_validate(dict(model))
    extra = evaluate.extra_models[name]
    policy = load_policy(extra.model, cache_dir=model.cache_dir, dtype=extra.dtype)
    policy.lineage.update({"round": 0, "algorithm": None, "evaluated_as": name})
    n_params = sum(p.numel() for p in policy.model.parameters())
    return policy, mlflow_metrics({"n_parameters": n_params}, prefix=f"extra_model.{name}")
