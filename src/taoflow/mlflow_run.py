"""What a run tells MLflow beyond its parameters, so the MLflow UI answers "what ran, on what?".

* a **name** that says what ran (``tao-dpo-2rounds-judge`` for the composed pipeline, the
  pipeline's name for a stage alone) and a **description** (``mlflow.note.content``) written from
  the validated configuration;
* the **data** the run read and wrote as MLflow run inputs, each with the content hash the project
  already uses (:func:`taoflow.core.ids.frame_hash`) as its digest and a context (``training``,
  ``evaluation``): the prompts, the benchmarks, every round's candidates, the raw usage files;
* the **evaluation tables** (per prompt, and the results) as MLflow tables, so they show in the
  run's artifacts and the experiment's evaluation view.

All of it is logged by :class:`RunInputsHook` after the catalog loads or saves a dataset, never
inside a node, and never breaks a run: a failure to log is a warning.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.framework.hooks import hook_impl

from taoflow.core.ids import frame_hash
from taoflow.core.lazy import lazy_module
from taoflow.core.secrets import env_secrets, mask_secrets, referenced_env_vars

logger = logging.getLogger(__name__)

COMPOSED = ("__default__", "tao")
TRAINING = "training"
EVALUATION = "evaluation"
# Datasets logged as run inputs besides the benchmarks (whose names come from evaluate.benchmarks).
FRAME_INPUTS = {"prompts": TRAINING}
ROUND_INPUTS = {"candidates": TRAINING}  # {round}.<name>
# Raw file inputs, logged by their file digests (taoflow.hooks.ReproducibilityHook).
FILE_INPUTS = {"usage_files": TRAINING}
# Evaluation tables: dataset → MLflow table artifact.
TABLES = {
    "eval_per_prompt": "evaluation/per_prompt.json",
    "eval_results": "evaluation/results.json",
}
DESCRIPTION_TAG = "mlflow.note.content"

mlflow = lazy_module("mlflow")  # imported on first use (taoflow.core.lazy)


def _rounds_word(rounds: int) -> str:
    return f"{rounds}round" + ("s" if rounds != 1 else "")


def judge_used(params: dict[str, Any]) -> bool:
    """Whether a judge model takes part: the judge stage, or a scorer reading its answers."""
    judge = params.get("judge")
    score = params.get("score")
    scorers = [entry.type for entry in score.scorers] if score is not None else []
    return bool(judge is not None and judge.enabled) or any(
        t in ("judge", "llm_judge") for t in scorers
    )


def run_name(pipeline_names: list[str] | None, params: dict[str, Any]) -> str:
    """``tao-<algorithm>-<k>round(s)[-lora][-judge]`` for the composed run; else the pipelines.

    ``params``: validated blocks (:func:`taoflow.config.graph.graph_parameters`).
    """
    names = list(pipeline_names or ["__default__"])
    if any(name not in COMPOSED for name in names):
        return "+".join(names)
    train, tao = params.get("train"), params.get("tao")
    parts = ["tao"]
    if train is not None:
        parts.append(train.algorithm)
    if tao is not None:
        parts.append(_rounds_word(tao.rounds))
    if train is not None and train.lora.enabled:
        parts.append("lora")
    if judge_used(params):
        parts.append("judge")
    return "-".join(parts)


def _scorers_line(params: dict[str, Any]) -> str:
    score = params.get("score")
    if score is None:
        return "none"
    return ", ".join(f"{e.scorer_name} ({e.type}, weight {e.weight:g})" for e in score.scorers)


def _judge_line(params: dict[str, Any]) -> str:
    judge = params.get("judge")
    if judge is None or not judge.enabled:
        return "off"
    return f"`{judge.name}` ({judge.backend}, {judge.mode} mode, {judge.samples} sample(s))"


def run_description(
    pipeline_names: list[str] | None, env: str | None, params: dict[str, Any]
) -> str:
    """A Markdown description of the run, from the validated configuration (the run's note)."""
    names = list(pipeline_names or ["__default__"])
    composed = all(name in COMPOSED for name in names)
    what = (
        "the composed `tao` pipeline"
        if composed
        else "stage " + " + ".join(f"`{n}`" for n in names)
    )
    model, task, train, tao = (params.get(k) for k in ("model", "task", "train", "tao"))
    lines = [f"taoflow run of {what} (Kedro env `{env or 'local'}`).", ""]
    if model is not None:
        lines.append(f"- model: `{model.name_or_path}` ({model.dtype})")
    if task is not None:
        lines.append(f"- task: `{task.name}`")
    if train is not None:
        tuning = "LoRA" if train.lora.enabled else "full fine-tuning"
        rounds = f"{tao.rounds} TAO round(s) of " if composed and tao is not None else ""
        lines.append(f"- training: {rounds}`{train.algorithm}` ({tuning})")
    lines.append(f"- scorers: {_scorers_line(params)}")
    lines.append(f"- judge: {_judge_line(params)}")
    if composed and tao is not None:
        lines.append(
            f"- yardsticks: sft_oracle {'on' if tao.sft_oracle else 'off'}, "
            f"judge_distill {'on' if tao.judge_distill else 'off'}; "
            f"reward audit {'on' if tao.audit_rewards else 'off'}"
        )
    if "seed" in params:
        lines.append(f"- seed: {params['seed']}")
    return "\n".join(lines) + "\n"


def input_contexts(params: dict[str, Any]) -> dict[str, str]:
    """Dataset name → run-input context, for the datasets logged whole (not per round)."""
    contexts = dict(FRAME_INPUTS)
    evaluate = params.get("evaluate")
    for spec in evaluate.enabled_benchmarks if evaluate is not None else []:
        contexts.setdefault(spec.source, EVALUATION)
    return contexts


def input_context(dataset_name: str, contexts: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """(context, tags) of a dataset logged as a run input; context None: not logged."""
    if dataset_name in contexts:
        return contexts[dataset_name], {}
    namespace, _, name = dataset_name.rpartition(".")
    if namespace and name in ROUND_INPUTS:
        return ROUND_INPUTS[name], {"round": namespace}
    return None, {}


def _source(path: str | Path | None, secrets: tuple[str, ...] = ()):
    """The dataset source MLflow shows for ``path``; values from the environment masked."""
    if path is None:
        return None
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    text = str(path) if "://" in str(path) else str(Path(path).resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local file
        return resolve_dataset_source(mask_secrets(text, secrets))


def log_frame_input(
    frame: pd.DataFrame,
    name: str,
    context: str,
    *,
    path: str | Path | None = None,
    tags: dict[str, str] | None = None,
    digest: str | None = None,
    secrets: tuple[str, ...] = (),
) -> str:
    """Log ``frame`` as an input of the active run, its digest the project's content hash."""
    digest = digest or frame_hash(frame)
    source = _source(path, secrets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's integer-column schema hint
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
        mlflow.log_input(dataset, context=context, tags=tags)
    return digest


def log_file_input(
    name: str,
    digest: str,
    context: str,
    path: str | Path | None = None,
    secrets: tuple[str, ...] = (),
) -> None:
    """Log a non-tabular input (raw files) by its content digest alone."""
    from mlflow.data.meta_dataset import MetaDataset

    source = _source(path, secrets)
    if source is None:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource(tags={})
    mlflow.log_input(MetaDataset(source, name=name, digest=digest), context=context)


def _dataset_filepath(catalog: Any, name: str) -> str | None:
    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001
        return None
    for holder in (dataset, getattr(dataset, "_dataset", None)):
        for attr in ("_filepath", "_path"):
            value = getattr(holder, attr, None) if holder is not None else None
            if value:
                return str(value)
    return None


class RunInputsHook:
    """Logs the run's data (inputs with digests) and evaluation tables into kedro-mlflow's run.

    A dataset is logged once per run and digest: ``prompts`` saved by ingest, or loaded by a later
    stage run alone; the benchmarks when evaluate loads them; each round's candidates when
    generate saves them.
    """

    def __init__(self) -> None:
        self._catalog: Any = None
        self._contexts: dict[str, str] = {}
        self._logged: set[tuple[str, str]] = set()
        self._secrets: tuple[str, ...] = ()

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            conf_source = context.config_loader.conf_source
        except AttributeError:
            return
        self._secrets = env_secrets(referenced_env_vars(conf_source))

    @hook_impl(trylast=True)  # after kedro-mlflow has started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from taoflow.config.graph import graph_parameters

        self._catalog, self._logged = catalog, set()
        try:
            self._contexts = input_contexts(graph_parameters())
        except Exception:  # noqa: BLE001 - tracking must never break a run
            logger.warning("run inputs: could not read the configuration", exc_info=True)
            self._contexts = dict(FRAME_INPUTS)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node) -> None:
        self._log(dataset_name, data, saved=False)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        self._log(dataset_name, data, saved=True)

    def _log(self, dataset_name: str, data: Any, *, saved: bool) -> None:
        if mlflow.active_run() is None or not isinstance(data, pd.DataFrame):
            return
        try:
            if dataset_name in TABLES:
                if saved:  # the run's own evaluation, not one a later node reads back
                    mlflow.log_table(data, artifact_file=TABLES[dataset_name])
                return
            context, tags = input_context(dataset_name, self._contexts)
            if context is None:
                return
            digest = frame_hash(data)
            if (dataset_name, digest) in self._logged:
                return
            path = _dataset_filepath(self._catalog, dataset_name)
            log_frame_input(
                data,
                dataset_name,
                context,
                path=path,
                tags=tags,
                digest=digest,
                secrets=self._secrets,
            )
            self._logged.add((dataset_name, digest))
        except Exception:  # noqa: BLE001 - tracking must never break a run
            logger.warning("could not log %s to MLflow", dataset_name, exc_info=True)


__all__ = [
    "DESCRIPTION_TAG",
    "FILE_INPUTS",
    "RunInputsHook",
    "input_contexts",
    "judge_used",
    "log_file_input",
    "log_frame_input",
    "run_description",
    "run_name",
]
