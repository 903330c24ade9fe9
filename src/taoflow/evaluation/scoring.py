"""Per-item scores: labeled metrics through taoflow's HF ``evaluate`` modules, label-free rewards
through the run's scorers, one row per (model, benchmark, item).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.evaluate import BenchmarkSpec, EvaluateParams
from taoflow.config.shared import TaskParams
from taoflow.core.answers import extract_answer
from taoflow.core.ids import stable_hash
from taoflow.evaluation.benchmarks import source_table, text_metric
from taoflow.metrics import load_metric

SCORED_COLUMNS = ["model", "benchmark", "item_id", "sample", "candidate_id", "reward"]


def score_label_free(
    outputs: pd.DataFrame,
    params: EvaluateParams,
    score: Any,
    task: TaskParams,
    sources: dict[str, Any],
) -> pd.DataFrame:
    """Score every model's label-free samples with the run's scorers (``params:score``).

    With ``pool_models`` all models' samples of a prompt form one scoring group, so a group
    scorer such as majority vote judges every model against the same reference and their rewards
    are comparable; otherwise each model is scored within its own samples.
    """
    from taoflow.scoring import score_candidates

    frames = []
    for spec in params.enabled_benchmarks:
        if spec.kind != "label_free":
            continue
        rows = outputs[outputs["benchmark"] == spec.name].reset_index(drop=True)
        if rows.empty:
            continue
        prompts = source_table(sources, spec)
        candidates = rows.assign(
            prompt_id=rows["item_id"],
            candidate_id=[
                stable_hash([m, i, s], 16)
                for m, i, s in zip(rows["model"], rows["item_id"], rows["sample"], strict=True)
            ],
            strategy="evaluate",
            round=0,
        )
        if params.pool_models:
            groups = [candidates]
        else:
            groups = [g for _, g in candidates.groupby("model", sort=False)]
        for group in groups:
            scored, _ = score_candidates(group, prompts, score, task)
            frames.append(scored[SCORED_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=SCORED_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _greedy_table(rows: pd.DataFrame, task: TaskParams) -> pd.DataFrame:
    greedy = rows[rows["mode"] == "greedy"].sort_values("item_id", kind="stable")
    table = greedy[
        ["item_id", "prompt", "reference", "completion", "finish_reason", "n_tokens"]
    ].rename(
        columns={
            "completion": "greedy_completion",
            "finish_reason": "greedy_finish_reason",
            "n_tokens": "greedy_n_tokens",
        }
    )
    table = table.reset_index(drop=True)
    table["greedy_answer"] = [
        extract_answer(c, _extractor(task)) for c in table["greedy_completion"]
    ]
    return table


def _extractor(task: TaskParams) -> dict[str, Any]:
    """The task's answer extractor as the YAML wrote it ({} when unset: the default)."""
    if "answer" not in task.model_fields_set:
        return {}
    return task.answer.model_dump(exclude_unset=True)


def _sampled_answers(
    rows: pd.DataFrame, table: pd.DataFrame, spec: BenchmarkSpec, task: TaskParams
) -> list[list[str]]:
    sampled = rows[rows["mode"] == "sampled"].sort_values(["item_id", "sample"], kind="stable")
    groups = sampled.groupby("item_id", sort=True)["completion"].apply(list)
    groups = groups.reindex(table["item_id"])
    if groups.isna().any():
        missing = groups[groups.isna()].index.tolist()[:5]
        raise ValueError(f"benchmark {spec.name!r}: no sampled outputs for items {missing}")
    # "" = no answer: `evaluate` rejects an input whose values are all None.
    return [[extract_answer(c, _extractor(task)) or "" for c in samples] for samples in groups]


def labeled_scores(
    rows: pd.DataFrame,
    spec: BenchmarkSpec,
    params: EvaluateParams,
    task: TaskParams,
    metrics: list[str] | None = None,
) -> pd.DataFrame:
    """Per-item scores of one model on one labeled benchmark, via the shipped metric modules.

    ``metrics`` narrows the benchmark's metrics (best-of-N has a single answer per item).
    """
    k = params.k
    metrics = spec.metric_names if metrics is None else metrics
    table = _greedy_table(rows, task)
    refs = table["reference"].tolist()
    if "accuracy" in metrics:
        result = load_metric("answer_accuracy").compute(
            # pandas 3 stores a missing answer as NaN (str dtype): "" = no answer, like below.
            predictions=[a if isinstance(a, str) else "" for a in table["greedy_answer"]],
            references=refs,
        )
        table["accuracy"] = np.asarray(result["scores"], dtype=float)
    wanted_k = sorted({1 if m == "pass@1" else k for m in metrics if m.startswith("pass@")})
    if wanted_k or "maj@k" in metrics:
        answers = _sampled_answers(rows, table, spec, task)
    if wanted_k:
        result = load_metric("pass_at_k").compute(predictions=answers, references=refs, k=wanted_k)
        table["n_correct"] = result["n_correct"]
        for value in wanted_k:
            table[f"pass@{value}"] = np.asarray(result[f"scores@{value}"], dtype=float)
    if "maj@k" in metrics:
        result = load_metric("maj_at_k").compute(
            predictions=answers, references=refs, k=k, tie_rule=params.tie_rule
        )
        table[f"maj@{k}"] = np.asarray(result["scores"], dtype=float)
        table["majority_answer"] = result["majority"]
        table["majority_tied"] = result["tied"]
    for entry in spec.text_metrics:
        column, path, key = text_metric(entry)
        metric = load_metric(path)
        values = []
        for completion, reference in zip(table["greedy_completion"], refs, strict=True):
            value = metric.compute(predictions=[completion], references=[reference])[key]
            values.append(float(np.mean(value)))
        table[column] = values
    return table


def label_free_scores(rows: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt mean reward of one model's samples on one label-free benchmark."""
    samples = rows[rows["mode"] == "sampled"]
    rewards = samples.merge(scored, on=["model", "benchmark", "item_id", "sample"], how="left")
    if rewards["reward"].isna().any():
        raise ValueError("label-free outputs without a reward: re-run score_label_free_outputs")
    per_item = (
        rewards.groupby("item_id", sort=True)
        .agg(
            prompt=("prompt", "first"), mean_reward=("reward", "mean"), n_samples=("reward", "size")
        )
        .reset_index()
    )
    first = samples[samples["sample"] == 0].set_index("item_id")["completion"]
    per_item["greedy_completion"] = per_item["item_id"].map(first)  # sample 0, for reading
    return per_item


def best_of_n_scores(
    rows: pd.DataFrame, spec: BenchmarkSpec, params: EvaluateParams, task: TaskParams
) -> pd.DataFrame:
    """Per-item scores of the derived model: the selected sample graded as its one answer.

    Only the single-answer metrics apply (accuracy and text metrics; the ``greedy_*`` columns hold
    the selected completion); pass@1 / maj@k / pass@k need k answers of its own, so they are
    left out rather than faked.
    """
    greedy = rows.assign(mode="greedy")
    single = [m for m in spec.metric_names if m == "accuracy"]
    table = labeled_scores(greedy, spec, params, task, metrics=single)
    selected = rows.set_index("item_id")
    table["selected_sample"] = table["item_id"].map(selected["sample"]).astype(int)
    table["selected_reward"] = table["item_id"].map(selected["reward"]).astype(float)
    table["selected_n_top"] = table["item_id"].map(selected["n_top"]).astype(int)
    return table


def _model_scores(
    model: str,
    spec: BenchmarkSpec,
    *,
    outputs: pd.DataFrame,
    scored: pd.DataFrame | None,
    params: EvaluateParams,
    task: TaskParams,
    derived: dict[str, pd.DataFrame],
) -> pd.DataFrame | None:
    if model in derived:
        if spec.kind != "labeled":
            return None
        rows = derived[model]
        rows = rows[rows["benchmark"] == spec.name]
        if rows.empty:
            raise ValueError(f"no selected outputs for {model!r} on {spec.name!r}")
        return best_of_n_scores(rows, spec, params, task)
    if params.greedy_only(model):
        # greedy completions only: accuracy (and text metrics); no k samples, no label-free rows
        if spec.kind != "labeled":
            return None
        rows = outputs[(outputs["model"] == model) & (outputs["benchmark"] == spec.name)]
        if rows.empty:
            raise ValueError(f"no evaluation outputs for model {model!r} on {spec.name!r}")
        single = [m for m in spec.metric_names if m == "accuracy"]
        return labeled_scores(rows, spec, params, task, metrics=single)
    rows = outputs[(outputs["model"] == model) & (outputs["benchmark"] == spec.name)]
    if rows.empty:
        raise ValueError(f"no evaluation outputs for model {model!r} on {spec.name!r}")
    if spec.kind == "labeled":
        return labeled_scores(rows, spec, params, task)
    if scored is None:
        raise ValueError(f"label-free benchmark {spec.name!r} needs scored outputs")
    return label_free_scores(rows, scored)


def per_prompt_scores(
    outputs: pd.DataFrame,
    scored: pd.DataFrame | None,
    params: EvaluateParams,
    task: TaskParams,
    models: list[str],
    *,
    derived: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per (model, benchmark, item): outputs worth reading plus every metric's score.

    ``derived`` maps a derived model (best-of-N) to its selected outputs; it has rows on labeled
    benchmarks only.
    """
    frames = []
    for spec in params.enabled_benchmarks:
        for model in models:
            table = _model_scores(
                model,
                spec,
                outputs=outputs,
                scored=scored,
                params=params,
                task=task,
                derived=derived or {},
            )
            if table is not None:
                frames.append(table.assign(model=model, benchmark=spec.name))
    frame = pd.concat(frames, ignore_index=True)
    first = ["model", "benchmark", "item_id"]
    return frame[first + [c for c in frame.columns if c not in first]]
