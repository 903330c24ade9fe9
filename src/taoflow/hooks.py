"""Run-level provenance: every run records what produced it.

kedro-mlflow opens the MLflow run and logs parameters; this hook adds what it does not: the
git commit (and whether the tree was dirty), the versions of the packages results depend on,
the fully resolved configuration as an artifact, and content hashes of the run's input files.
It also seeds every RNG from ``params:seed`` before the first node runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import yaml
from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks import MlflowHook
from pydantic import BaseModel

from taoflow.config.stages import stage_name, stage_path
from taoflow.core import locks
from taoflow.core.files import atomic_path
from taoflow.core.ids import seed_everything
from taoflow.core.secrets import env_secrets, mask_secrets, referenced_env_vars
from taoflow.mlflow_run import (
    DESCRIPTION_TAG,
    FILE_INPUTS,
    log_file_input,
    run_description,
    run_name,
)

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


def dataset_paths(dataset: Any) -> dict[str, Path]:
    """The files a dataset reads: ``{"": path}``, or one per source of a multi-source dataset
    (``UsageFilesDataset``: ``{source_name: path}``)."""
    sources = getattr(dataset, "_sources", None)
    if isinstance(sources, dict):
        return {
            str(name): Path(str(spec["filepath"]))
            for name, spec in sources.items()
            if isinstance(spec, dict) and spec.get("filepath")
        }
    path = _dataset_path(dataset)
    return {"": path} if path is not None else {}


def input_digests(dataset: Any, project_path: Path) -> dict[str, str]:
    """sha256 of each file a dataset reads (key as :func:`dataset_paths`); several sources also
    get ``""``: the hash of their names and digests, the dataset's one content hash."""
    digests = {}
    for key, path in dataset_paths(dataset).items():
        digest = file_digest(path if path.is_absolute() else project_path / path)
        if digest:
            digests[key] = digest
    if digests and "" not in digests:
        combined = hashlib.sha256()
        for key in sorted(digests):
            combined.update(f"{key}={digests[key]};".encode())
        digests[""] = combined.hexdigest()
    return digests


def pipeline_names(run_params: dict[str, Any]) -> list[str]:
    """The pipelines a run was asked for (as kedro-mlflow reads them; none: ``__default__``)."""
    names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
    return [names] if isinstance(names, str) else list(names)


def _graph_parameters() -> dict[str, Any]:
    from taoflow.config.graph import graph_parameters

    try:
        return graph_parameters()
    except Exception:  # noqa: BLE001 - a name falls back to the pipeline's; validation reports
        logger.debug("validated parameters not available for the run name", exc_info=True)
        return {}


def plain_parameters(value: Any) -> Any:
    """Typed parameter models → plain dicts, recursively (what MLflow params and YAML expect)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: plain_parameters(item) for key, item in value.items()}
    return value


RUN_LOCK = "data/.taoflow-run.lock"
MLFLOW_SETUP_LOCK = "data/.taoflow-mlflow-setup.lock"


def context_secrets(context) -> tuple[str, ...]:
    """Current values of the env variables the context's configuration interpolates."""
    try:
        conf_source = context.config_loader.conf_source
    except AttributeError:
        return ()
    return env_secrets(referenced_env_vars(conf_source))


class TrackingHook(MlflowHook):
    """kedro-mlflow's hook, fed plain values: nodes receive typed parameter models, which
    kedro-mlflow would log as one opaque string instead of one MLflow param per knob
    (``generate.num_candidates``).

    Its MLflow setup (which creates and migrates a fresh store) runs under a project lock, so
    two sessions starting together wait for each other instead of racing the migration.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        self._secrets = context_secrets(context)
        lock = Path(context.project_path) / MLFLOW_SETUP_LOCK
        locks.acquire(lock, blocking=True, purpose="MLflow setup")
        try:
            super().after_context_created(context)
        finally:
            locks.release(lock)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        """kedro-mlflow's run start, named after what runs (``tao-dpo-2rounds``) unless mlflow.yml
        sets ``tracking.run.name`` (or ``id``), and described from the configuration."""
        names = pipeline_names(run_params)
        params = _graph_parameters()
        run_options = self.mlflow_config.tracking.run
        generated = run_options.name is None and run_options.id is None
        if generated:
            run_options.name = run_name(names, params)
        try:
            super().before_pipeline_run(run_params, pipeline, catalog)
        finally:
            if generated:
                run_options.name = None
        run = mlflow.active_run() if self._is_mlflow_enabled else None
        if run is not None and DESCRIPTION_TAG not in run.data.tags:
            description = run_description(names, run_params.get("env"), params)
            mlflow.set_tag(
                DESCRIPTION_TAG, mask_secrets(description, getattr(self, "_secrets", ()))
            )

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict[str, Any], is_async: bool) -> None:
        super().before_node_run(node, catalog, plain_parameters(inputs), is_async)

    def _log_param(self, name: str, value: Any) -> None:
        """Every logged parameter passes here: values from the environment are masked."""
        secrets = getattr(self, "_secrets", ())
        super()._log_param(mask_secrets(name, secrets), mask_secrets(value, secrets))


class RunLockHook:
    """One ``kedro run`` at a time per project: a second one stops before its first node (and
    before kedro-mlflow opens its run), naming the run that holds the project."""

    def __init__(self) -> None:
        self._lock: Path | None = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        project_path = Path(run_params.get("project_path") or Path.cwd())
        lock = project_path / RUN_LOCK
        locks.acquire(lock, purpose="taoflow run")
        self._lock = lock

    def _release(self) -> None:
        if self._lock is not None:
            locks.release(self._lock)
            self._lock = None

    @hook_impl(trylast=True)
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._release()

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._release()


class ReproducibilityHook:
    """Logs commit, versions, resolved config and input hashes into the run kedro-mlflow opened."""

    def __init__(self) -> None:
        self._context = None
        self._secrets: tuple[str, ...] = ()

    @hook_impl
    def after_context_created(self, context) -> None:
        self._context = context
        self._secrets = context_secrets(context)

    def _raw_parameters(self) -> dict[str, Any]:
        """The resolved parameters as plain YAML values (``context.params`` holds typed models)."""
        if self._context is None:
            return {}
        return dict(self._context.config_loader["parameters"])

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        params = self._raw_parameters()
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
            digests = input_digests(dataset, project_path) if dataset is not None else {}
            for key, digest in digests.items():
                tags[f"input_sha256.{name}" + (f".{key}" if key else "")] = digest[:16]
            if name in FILE_INPUTS and "" in digests:
                paths = dataset_paths(dataset)
                _log_file_input_safely(name, digests[""][:16], paths, project_path, self._secrets)
        mlflow.set_tags(mask_secrets(tags, self._secrets))
        resolved = {"parameters": params}
        if self._context is not None:
            try:
                resolved["catalog"] = self._context.config_loader["catalog"]
            except Exception:  # noqa: BLE001
                logger.debug("catalog config not available for logging", exc_info=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "resolved_config.yml"
            # Values from the environment (credentials in URIs) never reach the artifact.
            resolved = mask_secrets(resolved, self._secrets)
            out.write_text(yaml.safe_dump(resolved, sort_keys=True, default_flow_style=False))
            mlflow.log_artifact(str(out), artifact_path="config")

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        """Tag the run with the cache key of each policy a reusable training returned."""
        if mlflow.active_run() is None:
            return
        for name, value in outputs.items():
            key = (getattr(value, "lineage", None) or {}).get("reuse_key")
            if isinstance(key, str):
                mlflow.set_tag(f"reuse_key.{name.removesuffix('.policy')}", key)


def _log_file_input_safely(
    name: str, digest: str, paths: dict[str, Path], project_path: Path, secrets: tuple[str, ...]
) -> None:
    try:
        path = next(iter(paths.values())) if len(paths) == 1 else None
        path = project_path / path if path is not None and not path.is_absolute() else path
        log_file_input(name, digest, FILE_INPUTS[name], path=path, secrets=secrets)
    except Exception:  # noqa: BLE001 - provenance must never break a run
        logger.warning("could not log %s as a run input", name, exc_info=True)


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): start-up included."""
    try:
        with open("/proc/self/stat") as handle:
            started = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def stage_of(node) -> str:
    """The stage a node belongs to: the pipeline package its function lives in."""
    module = getattr(node.func, "__module__", "") or ""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["taoflow", "pipelines"]:
        return parts[2]
    return "other"


class StageTimingHook:
    """Wall time and peak memory per node and per stage, logged to MLflow and written as a table.

    A node's time runs from loading its first input to saving its last output: stages such as
    ``generate`` do their work lazily while their sharded output is saved. Peak RSS is sampled
    every 0.2 s while a node is current, so each stage reports its own peak rather than the
    process-wide high-water mark. (Sequential runner: nodes do not overlap.) Start-up, from
    the process's start to its first node's first input, is recorded beside the stages.
    """

    interval = 0.2

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._node = None
        self._started = 0.0
        self._ended: float | None = None
        self._peak = 0
        self._stop: threading.Event | None = None
        self._startup: float | None = None

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def _enter(self, node) -> None:
        if self._node is node:
            return
        if self._startup is None:
            self._startup = process_age()
        self._finish()
        self._node, self._started, self._ended = node, time.perf_counter(), None
        self._peak = _rss_bytes()

    def _finish(self) -> None:
        if self._node is None:
            return
        ended = self._ended or time.perf_counter()
        self._rows.append(
            {
                "node": self._node.name,
                "stage": stage_of(self._node),
                "seconds": ended - self._started,
                "peak_rss_gb": max(self._peak, _rss_bytes()) / 1e9,
            }
        )
        self._node = None

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._rows, self._node, self._startup = [], None, None
        self._stop = threading.Event()
        threading.Thread(target=self._sample, args=(self._stop,), daemon=True).start()

    @hook_impl
    def before_dataset_loaded(self, dataset_name, node) -> None:
        self._enter(node)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        self._enter(node)

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        if node is self._node:
            self._ended = time.perf_counter()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._finish()
        if self._stop is not None:
            self._stop.set()

    def stage_table(self) -> list[dict[str, Any]]:
        stages: dict[str, dict[str, Any]] = {}
        for row in self._rows:
            entry = stages.setdefault(
                row["stage"],
                {"stage": row["stage"], "seconds": 0.0, "peak_rss_gb": 0.0, "nodes": 0},
            )
            entry["seconds"] += row["seconds"]
            entry["peak_rss_gb"] = max(entry["peak_rss_gb"], row["peak_rss_gb"])
            entry["nodes"] += 1
        return list(stages.values())

    @hook_impl(tryfirst=True)  # before kedro-mlflow closes the run
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._finish()
        if self._stop is not None:
            self._stop.set()
        stages = self.stage_table()
        total = sum(s["seconds"] for s in stages)
        lines = [
            "| stage | nodes | wall time (s) | peak RSS (GB) |",
            "| --- | --- | --- | --- |",
            *(
                f"| {s['stage']} | {s['nodes']} | {s['seconds']:.1f} | {s['peak_rss_gb']:.2f} |"
                for s in stages
            ),
            f"| **total** | {sum(s['nodes'] for s in stages)} | {total:.1f} | "
            f"{max((s['peak_rss_gb'] for s in stages), default=0):.2f} |",
        ]
        if self._startup is not None:
            lines.append(f"\nStart-up (process start to the first node): {self._startup:.1f} s")
        table = "\n".join(lines) + "\n"
        logger.info("Wall time and peak memory per stage:\n%s", table)
        project_path = Path(run_params.get("project_path") or Path.cwd())
        # a stage run alone keeps its timings beside its other results (taoflow.config.stages)
        stage = stage_name(run_params.get("pipeline_names"))
        out = project_path / stage_path("data/08_reporting/stage_timings.md", stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.write_text("# Wall time and peak memory per stage\n\n" + table)
        with atomic_path(out.with_suffix(".json")) as tmp:
            timings = {"stages": stages, "nodes": self._rows, "startup_seconds": self._startup}
            tmp.write_text(json.dumps(timings, indent=2))
        if mlflow.active_run() is not None:
            mlflow.log_metrics(
                {f"timing.{s['stage']}.seconds": s["seconds"] for s in stages}
                | {f"timing.{s['stage']}.peak_rss_gb": s["peak_rss_gb"] for s in stages}
                | {"timing.total.seconds": total}
                | ({"timing.startup.seconds": self._startup} if self._startup is not None else {})
            )
            mlflow.log_artifact(str(out), artifact_path="timing")
