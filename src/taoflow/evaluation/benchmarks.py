"""Benchmark specs and items: what each model is evaluated on, framed as the task frames prompts."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.evaluate import BenchmarkSpec, EvaluateParams, TextMetric
from taoflow.config.shared import TaskParams
from taoflow.core.text import as_messages

SOURCE_PREFIX = "source__"
MODEL_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def as_task(task: Any) -> TaskParams:
    """``params:task`` as its model: Kedro hands nodes the mapping until a node types the block
    (then every node gets the model), so the evaluation nodes accept both.
    """
    return task if isinstance(task, TaskParams) else TaskParams.model_validate(task or {})


def metric_columns(spec: BenchmarkSpec, k: int) -> list[str]:
    """Concrete metric names of a benchmark (``maj@k`` → ``maj@8``), text metrics last."""
    names = [m.replace("@k", f"@{k}") for m in spec.metric_names if m != "win_rate"]
    names += [text_metric(t)[0] for t in spec.text_metrics]
    return names


def text_metric(entry: str | TextMetric) -> tuple[str, str, str]:
    """(column name, evaluate metric name/path, result key) of a ``text_metrics`` entry."""
    if isinstance(entry, str):
        return entry, entry, entry
    key = entry.key or entry.name
    return entry.column or key, entry.name, key


def benchmark_sources(params: EvaluateParams) -> dict[str, str]:
    """Node input name → catalog dataset of every enabled benchmark's source."""
    return {SOURCE_PREFIX + s.source: s.source for s in params.enabled_benchmarks}


def source_table(sources: dict[str, Any], spec: BenchmarkSpec) -> pd.DataFrame:
    """The loaded source of ``spec`` among a node's keyword inputs."""
    key = SOURCE_PREFIX + spec.source
    if key not in sources:
        available = sorted(k.removeprefix(SOURCE_PREFIX) for k in sources)
        raise KeyError(
            f"benchmark {spec.name!r}: source {spec.source!r} is not an input of the evaluate "
            f"pipeline (inputs: {available}); it is wired from evaluate.benchmarks when the "
            "pipeline is built — check the catalog entry exists"
        )
    return sources[key]


def _label_free_items(spec: BenchmarkSpec, data: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in ("prompt_id", "messages", "split") if c not in data.columns]
    if missing:
        raise ValueError(f"{where} has no column(s) {missing}; columns: {list(data.columns)}")
    rows = data[data["split"] == spec.split]
    messages = [as_messages(m) for m in rows["messages"]]
    return pd.DataFrame(
        {
            "item_id": rows["prompt_id"].astype(str).to_numpy(),
            "messages": messages,
            "prompt": [
                next((t["content"] for t in reversed(m) if t["role"] == "user"), "")
                for m in messages
            ],
            "reference": None,
        }
    )


def _labeled_items(
    spec: BenchmarkSpec, data: pd.DataFrame, task: TaskParams, where: str
) -> pd.DataFrame:
    fields = {"reference_field": spec.reference_field, "prompt_field": spec.prompt_field}
    for knob, column in fields.items():
        if column not in data.columns:
            raise ValueError(
                f"{where} has no {knob.split('_')[0]} column {column!r} (set "
                f"evaluate.benchmarks[].{knob}); columns: {list(data.columns)}"
            )
    ids = (
        data[spec.id_field].astype(str)
        if spec.id_field in data.columns
        else pd.Series([str(i) for i in range(len(data))], index=data.index)
    )
    bad = data[spec.prompt_field].isna() | data[spec.reference_field].isna()
    if bad.any():
        rows = [int(i) for i in np.flatnonzero(bad.to_numpy())[:5]]
        raise ValueError(
            f"{where}: rows {rows} have an empty {spec.prompt_field!r} or {spec.reference_field!r}"
        )
    if ids.duplicated().any():
        raise ValueError(
            f"{where}: ids repeat in {spec.id_field!r}: {ids[ids.duplicated()].tolist()[:5]}"
        )
    system = task.system_prompt
    prompts = data[spec.prompt_field].astype(str).tolist()
    return pd.DataFrame(
        {
            "item_id": ids.to_numpy(),
            "messages": [
                ([{"role": "system", "content": system}] if system else [])
                + [{"role": "user", "content": p}]
                for p in prompts
            ],
            "prompt": prompts,
            "reference": data[spec.reference_field].astype(str).to_numpy(),
        }
    )


def benchmark_items(
    spec: BenchmarkSpec,
    data: pd.DataFrame,
    task: TaskParams,
    limit: int | None = None,
    source_path: str | None = None,
) -> pd.DataFrame:
    """Benchmark rows → items: ``item_id``, ``messages``, ``prompt`` and ``reference``.

    Labeled items are framed as the task frames prompts (``task.system_prompt`` as the system
    turn); label-free items are the ``split`` prompts of ``prompts`` as they are.
    """
    where = f"benchmark {spec.name!r}: source dataset {spec.source!r}"
    if source_path:
        where += f" ({source_path})"
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"{where} must load as a table, got {type(data).__name__}")
    if spec.kind == "label_free":
        items = _label_free_items(spec, data, where)
    else:
        items = _labeled_items(spec, data, task, where)
    limit = spec.effective_limit(limit)
    if limit is not None:
        items = items.head(int(limit))
    if items.empty:
        raise ValueError(f"{where} has no items to evaluate")
    return items.reset_index(drop=True)
