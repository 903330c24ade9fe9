"""Nodes of the ``prepare_base`` pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taoflow.config.shared import ModelParams
from taoflow.core.tracking import mlflow_metrics
from taoflow.models import Policy, load_policy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
else:  # resolvable by Kedro's type-hint checks without importing transformers at start-up
    PreTrainedTokenizerBase = Any


def prepare_base_model(
    model: Mapping[str, Any],
) -> tuple[Policy, PreTrainedTokenizerBase, dict[str, dict[str, float]]]:
    """Load the base model reference (converting the embedded GGUF once) as the run's ``base_model``.

    Every later stage reads ``base_model`` (or, for ingest, its tokenizer ``base_tokenizer``) from
    the catalog, so the reference is resolved in exactly one place and a hub model is fetched (or
    read from cache) once per run. ``model`` is validated here rather than typed as
    ``ModelParams``: Kedro would replace ``params:model`` for the whole run, and kedro-mlflow logs
    a model instance as one opaque param instead of ``model.name_or_path`` etc.
    """
    if not isinstance(model, ModelParams):
        model = ModelParams.model_validate(dict(model))
    policy = load_policy(model.name_or_path, cache_dir=model.cache_dir, dtype=model.dtype)
    policy.lineage.update({"round": 0, "algorithm": None})
    n_params = sum(p.numel() for p in policy.model.parameters())
    return (
        policy,
        policy.tokenizer,
        mlflow_metrics(
            {"n_parameters": n_params, "vocab_size": len(policy.tokenizer)}, prefix="base_model"
        ),
    )
