"""``MlflowPolicyDataset``: a :class:`PolicyDataset` that also logs the saved policy to MLflow.

Logging happens here, at save time, rather than inside the node that trains: nodes stay pure,
and any stage that writes a policy gets it logged the same way. The policy becomes an MLflow
model (``transformers`` flavour, like the registry gate's, so ``mlflow.transformers.load_model``
and ``mlflow.pyfunc.load_model`` both give back a generator) in the run kedro-mlflow opened,
with its lineage as run tags, model tags and model metadata.

Policies are logged as MLflow chat models (``task="llm/v1/chat"``): their signature is MLflow's
chat schema (``messages`` plus ``max_tokens``, ``temperature``, ...), with an input example, so
``mlflow.pyfunc.load_model(uri).predict({"messages": [...]})`` answers like an OpenAI chat
endpoint, while ``mlflow.transformers.load_model`` still gives back the generation pipeline.
"""

import importlib.metadata
import json
import logging
from typing import Any

from taoflow.cards import policy_card
from taoflow.core.lazy import lazy_module
from taoflow.datasets.policy import PolicyDataset
from taoflow.models import Policy

logger = logging.getLogger(__name__)
mlflow = lazy_module("mlflow")  # imported on first use (taoflow.core.lazy)

# What MLflow shows as the model's input example (and its serving example).
CHAT_INPUT_EXAMPLE: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Answer with the final number only."},
        {"role": "user", "content": "What is 17 + 25?"},
    ],
    "max_tokens": 16,
    "temperature": 0.7,
}


def _pip_requirements() -> list[str]:
    """Pinned runtime requirements, so MLflow does not infer them (slow; imports torchvision)."""
    reqs = []
    for name in ("transformers", "torch", "accelerate", "tokenizers", "safetensors"):
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return reqs


def _flat_tags(prefix: str, lineage: dict[str, Any]) -> dict[str, str]:
    tags = {}
    for key, value in lineage.items():
        if isinstance(value, dict):
            tags.update(_flat_tags(f"{prefix}.{key}", value))
        elif value is not None:
            tags[f"{prefix}.{key}"] = str(value)[:5000]
    return tags


def log_policy_model(policy: Policy, name: str, **kwargs: Any) -> Any:
    """Log ``policy`` as an MLflow chat model named ``name`` in the active run (``ModelInfo``).

    ``kwargs`` go to ``mlflow.transformers.log_model`` (``registered_model_name``, ``tags``).
    MLflow checks the input example by answering it with the logged model (sampling): the RNG
    state is restored afterwards, so logging never changes what the rest of the run draws.
    """
    import torch

    # In-memory components: transformers 5 checkpoints cannot be logged by path.
    with torch.random.fork_rng():
        return mlflow.transformers.log_model(
            transformers_model={"model": policy.model, "tokenizer": policy.tokenizer},
            name=name,
            task="llm/v1/chat",
            input_example=CHAT_INPUT_EXAMPLE,
            pip_requirements=_pip_requirements(),
            metadata={"taoflow_lineage": json.dumps(policy.lineage, sort_keys=True, default=str)},
            **kwargs,
        )


class MlflowPolicyDataset(PolicyDataset):
    """Save the policy folder, then log it as an MLflow model with its lineage as tags.

    ``artifact_path`` names the model in the run (e.g. ``round_1-policy``). Nothing is logged
    when no MLflow run is active (plain ``python`` use, tests of other stages) or when
    ``log_model`` is false (large models you do not want copied into the artifact store).
    """

    def __init__(
        self,
        path: str,
        artifact_path: str = "policy",
        log_model: bool = True,
        dtype: str = "float32",
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(path=path, dtype=dtype, metadata=metadata)
        self._artifact_path = artifact_path
        self._log_model = log_model

    def save(self, data: Policy) -> None:
        super().save(data)
        if not self._log_model or mlflow.active_run() is None:
            return
        tags = _flat_tags(f"policy.{self._artifact_path}", data.lineage)
        mlflow.set_tags(tags)
        info = log_policy_model(
            data,
            self._artifact_path,
            tags=_flat_tags("lineage", data.lineage),
            model_card=policy_card(data.lineage),
        )
        logger.info("Logged policy %s to MLflow as %s", self._path, info.model_uri)

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "artifact_path": self._artifact_path}
