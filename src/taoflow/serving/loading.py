"""Which model answers: the registry's champion, or any model reference ``load_policy`` accepts."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple

from taoflow.models import Policy, load_policy, load_tokenizer, read_lineage
from taoflow.serving.config import CHAMPION

logger = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_LOGGED_MODEL_SOURCE = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)$")  # MLflow 3 log_model source
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def _hf_folders(root: Path) -> tuple[Path, Path]:
    """(weights folder, tokenizer folder) inside downloaded registry artifacts.

    A ``PolicyDataset`` folder has both in one place; an ``mlflow.transformers`` model keeps the
    tokenizer under ``components/tokenizer``. The shallowest match wins.
    """

    def shallowest(pattern: str) -> Path | None:
        found = sorted(root.rglob(pattern), key=lambda p: (len(p.parts), str(p)))
        return found[0].parent if found else None

    weights = shallowest("config.json")
    if weights is None:
        raise FileNotFoundError(
            f"Registry artifacts under {root} hold no Hugging Face model folder (no config.json)."
        )
    if any((weights / f).is_file() for f in _TOKENIZER_FILES):
        return weights, weights
    tokenizer = shallowest("tokenizer_config.json")
    if tokenizer is None:
        raise FileNotFoundError(f"Registry artifacts under {root} hold no tokenizer.")
    return weights, tokenizer


def _mlmodel_lineage(root: Path) -> dict:
    """Lineage evaluation's gate stores in the MLmodel metadata (``taoflow_lineage``), if any."""
    import json

    import yaml

    for mlmodel in sorted(root.rglob("MLmodel")):
        metadata = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
        if "taoflow_lineage" in metadata:
            try:
                return dict(json.loads(metadata["taoflow_lineage"]))
            except (TypeError, ValueError):
                return {}
    return {}


class RegistryRef(NamedTuple):
    """A registered model version a reference resolved to, and the alias it was reached by."""

    name: str
    version: str
    alias: str | None = None
    model_id: str | None = None  # the MLflow LoggedModel behind the version (MLflow 3), if any

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def resolve_registry_uri(ref: str, registered_model: str) -> RegistryRef | None:
    """The version ``champion`` / ``models:/name@alias`` / ``models:/name/3`` names; else None."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if ref == CHAMPION:
        ref = f"models:/{registered_model}@{CHAMPION}"
    match = _MODEL_URI.match(ref)
    if match is None:
        return None
    name, alias, version = match["name"], match["alias"], match["version"]
    client = MlflowClient()
    try:
        if alias:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, version)
    except MlflowException as err:
        raise LookupError(
            f"{ref} does not resolve in the MLflow registry ({err.message.splitlines()[0]}). "
            "Run `kedro run` until evaluation promotes a champion, or serve a model reference "
            "directly, e.g. `taoflow serve --model embedded`."
        ) from None
    return RegistryRef(name, str(found.version), alias, _logged_model_id(found))


def _logged_model_id(version: object) -> str | None:
    """The LoggedModel a registry version was made from: its ``model_id``, or its source URI."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = _LOGGED_MODEL_SOURCE.match(str(getattr(version, "source", "") or ""))
    return source["id"] if source else None


def load_served_policy(
    ref: str,
    registered_model: str = "taoflow-policy",
    cache_dir: str | Path = "data/06_models",
    dtype: str = "float32",
) -> tuple[Policy, str]:
    """Load what ``ref`` names; returns the policy and the version string traces are tagged with.

    Registry versions are downloaded once into ``cache_dir/served/<name>-v<version>`` and reused;
    their lineage also names the registered model, version, alias and logged model, so that the
    traces of what they answer can be tagged with them (``tracing.model_trace_tags``).
    """
    registry = resolve_registry_uri(ref, registered_model)
    if registry is None:
        policy = load_policy(ref, cache_dir=cache_dir, dtype=dtype)
        return policy, ref
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM

    name, version = registry.name, registry.version
    target = Path(cache_dir) / "served" / f"{name}-v{version}"
    if not target.is_dir() or not any(target.rglob("config.json")):
        logger.info("Downloading models:/%s/%s into %s", name, version, target)
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(target)
        )
    weights, tokenizer_dir = _hf_folders(target)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=getattr(torch, dtype))
    model.eval()
    lineage = read_lineage(weights) or _mlmodel_lineage(target)
    version_ref = registry.uri
    lineage.update({"name_or_path": version_ref, "registry_version": version_ref})
    lineage.update(registered_name=name, registered_version=version)
    if registry.alias:
        lineage["registered_alias"] = registry.alias
    if registry.model_id:
        lineage["logged_model_id"] = registry.model_id
    lineage.setdefault("name", name)
    policy = Policy(model=model, tokenizer=load_tokenizer(str(tokenizer_dir)), lineage=lineage)
    return policy, version_ref
