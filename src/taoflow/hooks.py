"""Run-level provenance: every run records what produced it.

kedro-mlflow opens the MLflow run and logs parameters; this hook adds what it does not: the
git commit (and whether the tree was dirty), the versions of the packages results depend on,
the fully resolved configuration as an artifact, and content hashes of the run's input files.
It also seeds every RNG from ``params:seed`` before the first node runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import yaml
from kedro.framework.hooks import hook_impl

from taoflow.config import remember_config_loader
from taoflow.utils import seed_everything

logger = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "taoflow",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "evaluate",
    "kedro",
    "kedro-datasets",
    "kedro-mlflow",
    "mlflow",
    "pandas",
    "reasoning-gym",
    "sentence-transformers",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide results ('missing' when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def git_state(path: Path) -> dict[str, str]:
    """Commit and dirty flag of the repository holding ``path`` (empty outside git)."""

    def _git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def file_digest(path: Path, max_files: int = 2000) -> str | None:
    """sha256 of a file, or of a folder's files in name order; None when it does not exist."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files[:max_files]:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _dataset_path(dataset: Any) -> Path | None:
    for attr in ("_filepath", "_path", "_normalized_path"):
        value = getattr(dataset, attr, None)
        if value:
            return Path(str(value))
    return None


class ReproducibilityHook:
    """Logs commit, versions, resolved config and input hashes into the run kedro-mlflow opened."""

    def __init__(self) -> None:
        self._context = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._context = context

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        params = self._context.params if self._context is not None else {}
        if "seed" in params:
            seed_everything(int(params["seed"]))
        if mlflow.active_run() is None:
            return
        project_path = Path(run_params.get("project_path") or Path.cwd())
        tags = {f"version.{k}": v for k, v in package_versions().items()}
        tags.update(git_state(project_path))
        tags["kedro_env"] = str(run_params.get("env") or "local")
        for name in sorted(pipeline.inputs()):
            if name.startswith("params:") or name == "parameters":
                continue
            try:
                dataset = catalog.get(name)
            except Exception:  # noqa: BLE001 - provenance must never break a run
                continue
            path = _dataset_path(dataset) if dataset is not None else None
            digest = (
                file_digest(project_path / path if path and not path.is_absolute() else path)
                if path
                else None
            )
            if digest:
                tags[f"input_sha256.{name}"] = digest[:16]
        mlflow.set_tags(tags)
        resolved = {"parameters": params}
        if self._context is not None:
            try:
                resolved["catalog"] = self._context.config_loader["catalog"]
            except Exception:  # noqa: BLE001
                logger.debug("catalog config not available for logging", exc_info=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "resolved_config.yml"
            out.write_text(yaml.safe_dump(resolved, sort_keys=True, default_flow_style=False))
            mlflow.log_artifact(str(out), artifact_path="config")


class PipelineConfigHook:
    """Hands the session's config loader to the pipeline registry (graph-shaping settings)."""

    @hook_impl
    def after_context_created(self, context) -> None:
        remember_config_loader(context.config_loader)
