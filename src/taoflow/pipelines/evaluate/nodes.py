"""Nodes of the ``evaluate`` pipeline: is the tuned model better, by how much, and where worse?

Flow: one generation node per model writes that model's outputs as resumable shards (greedy and
k sampled completions per benchmark item, same seeds for every model) → label-free items are
scored with the run's scorers → per-item metric scores through taoflow's HF ``evaluate`` modules
→ bootstrap CIs and paired tuned-vs-base comparisons → report, plots, registry gate.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.ids import derive_seed, stable_hash
from taoflow.core.stats import bootstrap_ci, paired_comparison, win_scores
from taoflow.core.text import as_messages
from taoflow.core.tracking import mlflow_metrics
from taoflow.metrics import load_metric
from taoflow.models import Policy

logger = logging.getLogger(__name__)

KINDS = ("labeled", "label_free")
LABELED_METRICS = ("accuracy", "pass@1", "maj@k", "pass@k")
LABEL_FREE_METRICS = ("mean_reward", "win_rate")
OUTPUTS_PREFIX = "outputs__"
SOURCE_PREFIX = "source__"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_OUTPUT_COLUMNS = [
    "model",
    "benchmark",
    "item_id",
    "mode",
    "sample",
    "prompt",
    "reference",
    "completion",
    "n_tokens",
    "finish_reason",
    "logprob",
    "seed",
]


# --------------------------------------------------------------------------- configuration


def benchmark_specs(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The enabled benchmarks of ``params:evaluate``, validated, with defaults filled in."""
    specs, names = [], set()
    for i, raw in enumerate(params.get("benchmarks") or []):
        spec = dict(raw)
        where = f"evaluate.benchmarks[{i}]"
        if not spec.get("enabled", True):
            continue
        name = str(spec.get("name") or "")
        if not _MODEL_NAME.match(name):
            raise ValueError(f"{where}: name {name!r} must be letters, digits or underscores")
        if name in names:
            raise ValueError(f"{where}: duplicate benchmark name {name!r}")
        names.add(name)
        kind = spec.setdefault("kind", "labeled")
        if kind not in KINDS:
            raise ValueError(f"{where}: kind {kind!r} must be one of {KINDS}")
        if not spec.get("source"):
            raise ValueError(f"{where}: 'source' (a catalog dataset) is required")
        allowed = LABELED_METRICS if kind == "labeled" else LABEL_FREE_METRICS
        metrics = list(spec.get("metrics") or allowed)
        unknown = [m for m in metrics if m not in allowed]
        if unknown:
            raise ValueError(
                f"{where}: unknown metrics {unknown} for a {kind} benchmark; {allowed}"
            )
        spec["metrics"] = metrics
        spec.setdefault("text_metrics", [])
        if kind == "labeled":
            spec.setdefault("id_field", "id")
            spec.setdefault("prompt_field", "question")
            spec.setdefault("reference_field", "answer")
        else:
            spec.setdefault("split", "holdout")
        specs.append(spec)
    return specs


def wired_specs(params: dict[str, Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmarks to run: all enabled ones, minus optional ones whose source is not wired."""
    return [
        s
        for s in benchmark_specs(params)
        if not (s.get("optional") and SOURCE_PREFIX + s["source"] not in inputs)
    ]


def metric_columns(spec: dict[str, Any], k: int) -> list[str]:
    """Concrete metric names of a benchmark (``maj@k`` → ``maj@8``), text metrics last."""
    names = [m.replace("@k", f"@{k}") for m in spec["metrics"] if m != "win_rate"]
    names += [_text_metric(t)[0] for t in spec.get("text_metrics", [])]
    return names


def _text_metric(entry: str | dict[str, Any]) -> tuple[str, str, str]:
    """(column name, evaluate metric name/path, result key) of a ``text_metrics`` entry."""
    if isinstance(entry, str):
        return entry, entry, entry
    path = str(entry["name"])
    key = str(entry.get("key", path))
    return str(entry.get("column", key)), path, key


def sampling_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The generation settings every model is evaluated with (part of the shard keys)."""
    return {
        "k": int(params.get("k", 8)),
        "temperature": float(params.get("temperature", 0.8)),
        "top_p": float(params.get("top_p", 1.0)),
        "top_k": int(params.get("top_k", 0)),
        "max_new_tokens": int(params.get("max_new_tokens", 64)),
        "token_budget": int(params.get("token_budget", 8192)),
    }


# --------------------------------------------------------------------------- items


def benchmark_items(
    spec: dict[str, Any],
    data: pd.DataFrame,
    task: dict[str, Any],
    limit: int | None = None,
    source_path: str | None = None,
) -> pd.DataFrame:
    """Benchmark rows → items: ``item_id``, ``messages``, ``prompt`` and ``reference``.

    Labeled items are framed as the task frames prompts (``task.system_prompt`` as the system
    turn); label-free items are the ``split`` prompts of ``prompts`` as they are.
    """
    where = f"benchmark {spec['name']!r}: source dataset {spec['source']!r}"
    if source_path:
        where += f" ({source_path})"
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"{where} must load as a table, got {type(data).__name__}")
    if spec["kind"] == "label_free":
        missing = [c for c in ("prompt_id", "messages", "split") if c not in data.columns]
        if missing:
            raise ValueError(f"{where} has no column(s) {missing}; columns: {list(data.columns)}")
        rows = data[data["split"] == spec["split"]]
        messages = [as_messages(m) for m in rows["messages"]]
        items = pd.DataFrame(
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
    else:
        fields = {
            "reference_field": spec["reference_field"],
            "prompt_field": spec["prompt_field"],
        }
        for knob, column in fields.items():
            if column not in data.columns:
                raise ValueError(
                    f"{where} has no {knob.split('_')[0]} column {column!r} (set "
                    f"evaluate.benchmarks[].{knob}); columns: {list(data.columns)}"
                )
        ids = (
            data[spec["id_field"]].astype(str)
            if spec["id_field"] in data.columns
            else pd.Series([str(i) for i in range(len(data))], index=data.index)
        )
        bad = data[spec["prompt_field"]].isna() | data[spec["reference_field"]].isna()
        if bad.any():
            rows = [int(i) for i in np.flatnonzero(bad.to_numpy())[:5]]
            raise ValueError(
                f"{where}: rows {rows} have an empty {spec['prompt_field']!r} or "
                f"{spec['reference_field']!r}"
            )
        if ids.duplicated().any():
            raise ValueError(
                f"{where}: ids repeat in {spec['id_field']!r}: {ids[ids.duplicated()].tolist()[:5]}"
            )
        system = task.get("system_prompt")
        prompts = data[spec["prompt_field"]].astype(str).tolist()
        items = pd.DataFrame(
            {
                "item_id": ids.to_numpy(),
                "messages": [
                    ([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": p}]
                    for p in prompts
                ],
                "prompt": prompts,
                "reference": data[spec["reference_field"]].astype(str).to_numpy(),
            }
        )
    limit = spec.get("limit", limit)
    if limit is not None:
        items = items.head(int(limit))
    if items.empty:
        raise ValueError(f"{where} has no items to evaluate")
    return items.reset_index(drop=True)


# --------------------------------------------------------------------------- generation


def _generate_shard(
    policy: Policy,
    model: str,
    benchmark: str,
    items: pd.DataFrame,
    *,
    mode: str,
    settings: dict[str, Any],
    seed: int,
) -> Callable[[], pd.DataFrame]:
    def compute() -> pd.DataFrame:
        from taoflow.generation import generate_completions

        greedy = mode == "greedy"
        results = generate_completions(
            policy,
            items["messages"].tolist(),
            num_return_sequences=1 if greedy else settings["k"],
            do_sample=not greedy,
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            top_k=settings["top_k"],
            max_new_tokens=settings["max_new_tokens"],
            seed=seed,
            token_budget=settings["token_budget"],
            progress=f"evaluate {model} {benchmark} {mode}",
        )
        rows = []
        for item, samples in zip(items.itertuples(index=False), results, strict=True):
            for j, out in enumerate(samples):
                rows.append(
                    {
                        "model": model,
                        "benchmark": benchmark,
                        "item_id": item.item_id,
                        "mode": mode,
                        "sample": j,
                        "prompt": item.prompt,
                        "reference": item.reference,
                        "completion": out["completion"],
                        "n_tokens": int(out["n_tokens"]),
                        "finish_reason": out["finish_reason"],
                        "logprob": float(out["logprob"]),
                        "seed": int(out.get("seed", seed)),
                    }
                )
        return pd.DataFrame(rows, columns=_OUTPUT_COLUMNS)

    return compute


def generate_eval_outputs(
    policy: Policy,
    params: dict[str, Any],
    task: dict[str, Any],
    seed: int,
    *,
    model_name: str,
    source_paths: dict[str, str] | None = None,
    **sources: pd.DataFrame,
) -> dict[str, Callable[[], pd.DataFrame]]:
    """One model's evaluation generations as lazy shards (``ResumablePartitionedDataset``).

    Labeled items get one greedy and ``k`` sampled completions, label-free items ``k`` samples.
    Seeds depend on the benchmark, mode and chunk, never on the model, so every model sees the
    same sampling noise. Shard ids hash the model's weights, settings and items: a retrained
    policy or a changed configuration never reuses a stale shard, an unchanged one resumes.
    """
    from taoflow.generation import policy_fingerprint

    if not _MODEL_NAME.match(model_name):
        raise ValueError(f"model display name {model_name!r}: letters, digits, underscores only")
    settings = sampling_settings(params)
    shard_size = int(params.get("shard_size", 100))
    fingerprint = policy_fingerprint(policy)
    shards: dict[str, Callable[[], pd.DataFrame]] = {}
    for spec in wired_specs(params, sources):
        items = benchmark_items(
            spec,
            _source(sources, spec),
            task,
            params.get("limit"),
            (source_paths or {}).get(spec["source"]),
        )
        modes = ["greedy", "sampled"] if spec["kind"] == "labeled" else ["sampled"]
        for mode in modes:
            for start in range(0, len(items), shard_size):
                chunk = items.iloc[start : start + shard_size]
                chunk_seed = derive_seed(seed, "evaluate", spec["name"], mode, start)
                key = stable_hash(
                    {
                        "model": fingerprint,
                        "settings": settings,
                        "seed": chunk_seed,
                        "items": chunk[["item_id", "messages", "reference"]].to_dict("records"),
                    },
                    10,
                )
                shard_id = f"{spec['name']}-{mode}-{start // shard_size:04d}-{key}"
                shards[shard_id] = _generate_shard(
                    policy,
                    model_name,
                    spec["name"],
                    chunk,
                    mode=mode,
                    settings=settings,
                    seed=chunk_seed,
                )
    return shards


def _source(sources: dict[str, Any], spec: dict[str, Any]) -> pd.DataFrame:
    key = SOURCE_PREFIX + spec["source"]
    if key not in sources:
        available = sorted(k.removeprefix(SOURCE_PREFIX) for k in sources)
        raise KeyError(
            f"benchmark {spec['name']!r}: source {spec['source']!r} is not an input of the evaluate "
            f"pipeline (inputs: {available}); it is wired from evaluate.benchmarks when the "
            "pipeline is built — check the catalog entry exists"
        )
    return sources[key]


def _load_outputs(inputs: dict[str, Any]) -> pd.DataFrame:
    frames = []
    for key, partitions in inputs.items():
        if not key.startswith(OUTPUTS_PREFIX):
            continue
        for load in partitions.values():
            frames.append(load() if callable(load) else load)
    if not frames:
        return pd.DataFrame(columns=_OUTPUT_COLUMNS)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- label-free scoring


def score_label_free_outputs(
    params: dict[str, Any], score: dict[str, Any], task: dict[str, Any], **inputs: Any
) -> pd.DataFrame:
    """Score every model's label-free samples with the run's scorers (``params:score``).

    With ``pool_models`` (default) all models' samples of a prompt form one scoring group, so a
    group scorer such as majority vote judges every model against the same reference and their
    rewards are comparable; otherwise each model is scored within its own samples.
    """
    from taoflow.scoring import score_candidates

    outputs = _load_outputs(inputs)
    specs = [s for s in wired_specs(params, inputs) if s["kind"] == "label_free"]
    frames = []
    for spec in specs:
        rows = outputs[outputs["benchmark"] == spec["name"]].reset_index(drop=True)
        if rows.empty:
            continue
        prompts = _source(inputs, spec)
        candidates = rows.assign(
            prompt_id=rows["item_id"],
            candidate_id=[
                stable_hash([m, i, s], 16)
                for m, i, s in zip(rows["model"], rows["item_id"], rows["sample"], strict=True)
            ],
            strategy="evaluate",
            round=0,
        )
        if params.get("pool_models", True):
            groups = [candidates]
        else:
            groups = [g for _, g in candidates.groupby("model", sort=False)]
        for group in groups:
            scored, _ = score_candidates(group, prompts, score, task)
            frames.append(
                scored[["model", "benchmark", "item_id", "sample", "candidate_id", "reward"]]
            )
    if not frames:
        return pd.DataFrame(
            columns=["model", "benchmark", "item_id", "sample", "candidate_id", "reward"]
        )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- best-of-N


BEST_OF_N_COLUMNS = [
    "model",
    "benchmark",
    "item_id",
    "prompt",
    "reference",
    "source_model",
    "sample",
    "completion",
    "n_tokens",
    "finish_reason",
    "reward",
    "answer",
    "n_samples",
    "n_top",
]


def best_of_n_settings(params: dict[str, Any], models: list[str]) -> dict[str, str] | None:
    """``evaluate.best_of_n`` validated against the evaluated models; None when disabled.

    best-of-N is a derived model: no weights and no generation of its own, only a choice among
    the ``from`` model's k sampled completions, so it needs that model to be evaluated.
    """
    raw = params.get("best_of_n") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"evaluate.best_of_n must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"enabled", "from", "name"})
    if unknown:
        raise ValueError(
            f"evaluate.best_of_n: unknown setting(s) {unknown}; known: enabled, from, name"
        )
    if not raw.get("enabled", False):
        return None
    source = str(raw.get("from") or params.get("baseline", "base"))
    name = str(raw.get("name") or "best_of_n")
    if source not in models:
        raise ValueError(
            f"evaluate.best_of_n.from {source!r} is not an evaluated model: {list(models)}"
        )
    if not _MODEL_NAME.match(name) or name in models:
        raise ValueError(
            f"evaluate.best_of_n.name {name!r} must be letters, digits or underscores and differ "
            f"from the evaluated models {list(models)}"
        )
    return {"from": source, "name": name}


def pick_best(scored: pd.DataFrame, tol: float = 1e-12) -> pd.DataFrame:
    """One row per (benchmark, item): the sample with the top ``reward``; ties → earliest sample.

    The tie rule makes the choice independent of row order and of the scorers' internal order.
    A missing reward ranks below every real one. Adds ``n_samples`` and ``n_top`` (samples tied
    at the top: how often the tie rule decided).
    """
    missing = [c for c in ("benchmark", "item_id", "sample", "reward") if c not in scored.columns]
    if missing:
        raise ValueError(f"best-of-N: scored samples lack column(s) {missing}")
    frame = scored.assign(
        _reward=pd.to_numeric(scored["reward"], errors="coerce").fillna(-np.inf)
    ).sort_values(["benchmark", "item_id", "sample"], kind="stable")
    groups = frame.groupby(["benchmark", "item_id"], sort=False)["_reward"]
    top = groups.transform("max")
    at_top = frame["_reward"] >= top - tol
    frame["n_samples"] = groups.transform("size")
    frame["n_top"] = at_top.groupby([frame["benchmark"], frame["item_id"]]).transform("sum")
    best = frame[at_top].drop_duplicates(["benchmark", "item_id"], keep="first")
    return best.drop(columns="_reward").reset_index(drop=True)


def select_best_of_n(
    params: dict[str, Any], score: dict[str, Any], task: dict[str, Any], **inputs: Any
) -> pd.DataFrame:
    """best-of-N on every labeled benchmark from the ``from`` model's k samples (no generation).

    Each item's k sampled completions are scored as one group by the score stage's scorers
    (``taoflow.scoring.score_candidates`` with ``params:score``, exactly as the ``score`` stage
    judges candidates) and the top-reward one becomes the prediction. The reference never
    reaches the scorers. Label-free benchmarks are left out: their metric is that same reward, so
    best-of-N would be graded by what chose it.
    """
    from taoflow.scoring import score_candidates

    config = params.get("best_of_n") or {}
    source = str(config.get("from") or params.get("baseline", "base"))
    outputs = _load_outputs(inputs)
    outputs = outputs[(outputs["model"] == source) & (outputs["mode"] == "sampled")]
    frames = []
    for spec in wired_specs(params, inputs):
        if spec["kind"] != "labeled":
            continue
        rows = outputs[outputs["benchmark"] == spec["name"]].reset_index(drop=True)
        if rows.empty:
            raise ValueError(
                f"best-of-N: no sampled outputs of model {source!r} on benchmark {spec['name']!r}"
            )
        items = benchmark_items(spec, _source(inputs, spec), task, params.get("limit"))
        unknown = sorted(set(rows["item_id"]) - set(items["item_id"]))
        if unknown:
            raise ValueError(
                f"best-of-N: outputs of {source!r} name items {unknown[:5]} absent from "
                f"benchmark {spec['name']!r}"
            )
        candidates = rows.drop(columns=["reference"]).assign(
            prompt_id=rows["item_id"],
            candidate_id=[f"{i}#{s}" for i, s in zip(rows["item_id"], rows["sample"], strict=True)],
            strategy="evaluate",
            round=0,
        )
        prompts = items.rename(columns={"item_id": "prompt_id"})[["prompt_id", "messages"]]
        scored, _ = score_candidates(candidates, prompts, score, task)
        best = pick_best(scored)
        first = rows.drop_duplicates("item_id").set_index("item_id")
        best["prompt"] = best["item_id"].map(first["prompt"])
        best["reference"] = best["item_id"].map(first["reference"])
        frames.append(best.assign(source_model=source, model=config.get("name") or "best_of_n"))
    if not frames:
        return pd.DataFrame(columns=BEST_OF_N_COLUMNS)
    return pd.concat(frames, ignore_index=True)[BEST_OF_N_COLUMNS]


def _best_of_n_scores(
    rows: pd.DataFrame, spec: dict[str, Any], params: dict[str, Any], task: dict[str, Any]
) -> pd.DataFrame:
    """Per-item scores of the derived model: the selected sample graded as its one answer.

    Only the single-answer metrics apply (accuracy and text metrics; the ``greedy_*`` columns hold
    the selected completion); pass@1 / maj@k / pass@k need k answers of its own, so they are
    left out rather than faked.
    """
    greedy = rows.assign(mode="greedy")
    single = {**spec, "metrics": [m for m in spec["metrics"] if m == "accuracy"]}
    table = _labeled_scores(greedy, single, params, task)
    selected = rows.set_index("item_id")
    table["selected_sample"] = table["item_id"].map(selected["sample"]).astype(int)
    table["selected_reward"] = table["item_id"].map(selected["reward"]).astype(float)
    table["selected_n_top"] = table["item_id"].map(selected["n_top"]).astype(int)
    return table


# --------------------------------------------------------------------------- metrics


def _labeled_scores(
    rows: pd.DataFrame, spec: dict[str, Any], params: dict[str, Any], task: dict[str, Any]
) -> pd.DataFrame:
    """Per-item scores of one model on one labeled benchmark, via the shipped metric modules."""
    k = sampling_settings(params)["k"]
    extractor = task.get("answer") or {}
    greedy = rows[rows["mode"] == "greedy"].sort_values("item_id", kind="stable")
    sampled = rows[rows["mode"] == "sampled"].sort_values(["item_id", "sample"], kind="stable")
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
    refs = table["reference"].tolist()
    from taoflow.core.answers import extract_answer

    table["greedy_answer"] = [extract_answer(c, extractor) for c in table["greedy_completion"]]
    if "accuracy" in spec["metrics"]:
        result = load_metric("answer_accuracy").compute(
            # pandas 3 stores a missing answer as NaN (str dtype): "" = no answer, like below.
            predictions=[a if isinstance(a, str) else "" for a in table["greedy_answer"]],
            references=refs,
        )
        table["accuracy"] = np.asarray(result["scores"], dtype=float)
    wanted_k = sorted({1 if m == "pass@1" else k for m in spec["metrics"] if m.startswith("pass@")})
    if wanted_k or "maj@k" in spec["metrics"]:
        groups = sampled.groupby("item_id", sort=True)["completion"].apply(list)
        groups = groups.reindex(table["item_id"])
        if groups.isna().any():
            missing = groups[groups.isna()].index.tolist()[:5]
            raise ValueError(f"benchmark {spec['name']!r}: no sampled outputs for items {missing}")
        # "" = no answer: `evaluate` rejects an input whose values are all None.
        answers = [[extract_answer(c, extractor) or "" for c in samples] for samples in groups]
    if wanted_k:
        result = load_metric("pass_at_k").compute(predictions=answers, references=refs, k=wanted_k)
        table["n_correct"] = result["n_correct"]
        for value in wanted_k:
            table[f"pass@{value}"] = np.asarray(result[f"scores@{value}"], dtype=float)
    if "maj@k" in spec["metrics"]:
        result = load_metric("maj_at_k").compute(
            predictions=answers, references=refs, k=k, tie_rule=params.get("tie_rule", "expected")
        )
        table[f"maj@{k}"] = np.asarray(result["scores"], dtype=float)
        table["majority_answer"] = result["majority"]
        table["majority_tied"] = result["tied"]
    for entry in spec.get("text_metrics", []):
        column, path, key = _text_metric(entry)
        metric = load_metric(path)
        values = []
        for completion, reference in zip(table["greedy_completion"], refs, strict=True):
            value = metric.compute(predictions=[completion], references=[reference])[key]
            values.append(float(np.mean(value)))
        table[column] = values
    return table


def _label_free_scores(rows: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
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


def per_prompt_scores(
    outputs: pd.DataFrame,
    scored: pd.DataFrame | None,
    params: dict[str, Any],
    task: dict[str, Any],
    models: list[str],
    *,
    derived: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per (model, benchmark, item): outputs worth reading plus every metric's score.

    ``derived`` maps a derived model (best-of-N) to its selected outputs; it has rows on labeled
    benchmarks only.
    """
    frames = []
    present = set(outputs["benchmark"])
    derived = derived or {}
    for spec in benchmark_specs(params):
        if spec.get("optional") and spec["name"] not in present:
            continue
        for model in models:
            if model in derived:
                if spec["kind"] != "labeled":
                    continue
                rows = derived[model]
                rows = rows[rows["benchmark"] == spec["name"]]
                if rows.empty:
                    raise ValueError(f"no selected outputs for {model!r} on {spec['name']!r}")
                table = _best_of_n_scores(rows, spec, params, task)
                frames.append(table.assign(model=model, benchmark=spec["name"]))
                continue
            rows = outputs[(outputs["model"] == model) & (outputs["benchmark"] == spec["name"])]
            if rows.empty:
                raise ValueError(f"no evaluation outputs for model {model!r} on {spec['name']!r}")
            if spec["kind"] == "labeled":
                table = _labeled_scores(rows, spec, params, task)
            else:
                if scored is None:
                    raise ValueError(f"label-free benchmark {spec['name']!r} needs scored outputs")
                table = _label_free_scores(rows, scored)
            frames.append(table.assign(model=model, benchmark=spec["name"]))
    frame = pd.concat(frames, ignore_index=True)
    first = ["model", "benchmark", "item_id"]
    return frame[first + [c for c in frame.columns if c not in first]]


def compute_eval_results(
    params: dict[str, Any], task: dict[str, Any], seed: int, *, models: list[str], **inputs: Any
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Per-item scores → ``eval_results`` (CIs), ``eval_paired`` (vs baseline), per-prompt table.

    Every metric is a mean over items, its 95% CI a seeded bootstrap over items with the same
    resamples for every model; each tuned model is compared with ``baseline`` on per-item
    differences (+ exact McNemar for 0/1 metrics). Label-free benchmarks add each tuned model's
    win rate against the baseline (per prompt: mean reward higher = 1, equal = ½).
    """
    outputs = _load_outputs(inputs)
    derived = {}
    if inputs.get("best_of_n") is not None:
        name = str((params.get("best_of_n") or {}).get("name") or "best_of_n")
        derived[name] = inputs["best_of_n"]
    per_prompt = per_prompt_scores(
        outputs, inputs.get("label_free_scored"), params, task, models, derived=derived
    )
    baseline = params.get("baseline", "base")
    if baseline not in models:
        raise ValueError(f"evaluate.baseline {baseline!r} is not an evaluated model: {models}")
    settings = sampling_settings(params)
    n_boot = int(params.get("n_bootstrap", 1000))
    confidence = float(params.get("confidence", 0.95))
    results, paired, metrics = [], [], {}
    for spec in benchmark_specs(params):
        if spec["name"] not in set(per_prompt["benchmark"]):
            continue  # an optional benchmark whose source does not exist yet
        bench = per_prompt[per_prompt["benchmark"] == spec["name"]]
        by_model = {m: bench[bench["model"] == m].set_index("item_id") for m in models}

        def has(model: str, metric: str, by_model=by_model) -> bool:
            """A derived model lacks the metrics that do not apply to it (and label-free rows)."""
            frame = by_model[model]
            return len(frame) > 0 and metric in frame and bool(frame[metric].notna().any())

        for metric in metric_columns(spec, settings["k"]):
            boot_seed = derive_seed(seed, "bootstrap", spec["name"], metric)
            for model in models:
                if not has(model, metric):
                    continue
                est = bootstrap_ci(
                    by_model[model][metric].to_numpy(),
                    n_resamples=n_boot,
                    confidence=confidence,
                    seed=boot_seed,
                )
                results.append(
                    {"model": model, "benchmark": spec["name"], "metric": metric, **est.as_dict()}
                )
                if model == baseline or not has(baseline, metric):
                    continue
                a, b = by_model[model][metric].align(by_model[baseline][metric], join="inner")
                a, b = a.sort_index(), b.sort_index()  # the registry gate resamples in this order
                comparison = paired_comparison(
                    a.to_numpy(),
                    b.to_numpy(),
                    n_resamples=n_boot,
                    confidence=confidence,
                    seed=boot_seed,
                )
                paired.append(
                    {
                        "model": model,
                        "baseline": baseline,
                        "benchmark": spec["name"],
                        "metric": metric,
                    }
                    | comparison.as_dict()
                )
        if spec["kind"] == "label_free" and "win_rate" in spec["metrics"]:
            for model in models:
                if model == baseline or not has(model, "mean_reward"):
                    continue
                a, b = by_model[model]["mean_reward"].align(
                    by_model[baseline]["mean_reward"], join="inner"
                )
                est = bootstrap_ci(
                    win_scores(a.to_numpy(), b.to_numpy()),
                    n_resamples=n_boot,
                    confidence=confidence,
                    seed=derive_seed(seed, "bootstrap", spec["name"], "win_rate"),
                )
                results.append(
                    {
                        "model": model,
                        "benchmark": spec["name"],
                        "metric": "win_rate",
                        **est.as_dict(),
                    }
                )
    results_df = pd.DataFrame(
        results, columns=["model", "benchmark", "metric", "value", "n", "ci_low", "ci_high"]
    )
    paired_df = pd.DataFrame(
        paired,
        columns=[
            "model",
            "baseline",
            "benchmark",
            "metric",
            "diff",
            "ci_low",
            "ci_high",
            "n",
            "wins",
            "losses",
            "ties",
            "p_value",
            "better",
            "worse",
        ],
    )
    for row in results_df.itertuples(index=False):
        key = f"{row.benchmark}.{row.model}.{_mlflow_key(row.metric)}"
        metrics.update({key: row.value, f"{key}.ci_low": row.ci_low, f"{key}.ci_high": row.ci_high})
    for row in paired_df.itertuples(index=False):
        key = f"{row.benchmark}.{row.model}_vs_{row.baseline}.{_mlflow_key(row.metric)}"
        metrics.update(
            {f"{key}.diff": row.diff, f"{key}.ci_low": row.ci_low, f"{key}.ci_high": row.ci_high}
        )
    metrics["n_models"] = len(models)
    return results_df, paired_df, per_prompt, mlflow_metrics(metrics, prefix="evaluate")


def _mlflow_key(metric: str) -> str:
    """MLflow metric names allow no ``@``: ``pass@8`` → ``pass_at_8``."""
    return metric.replace("@", "_at_")


# --------------------------------------------------------------------------- registry gate


def gate_fingerprint(
    params: dict[str, Any], task: dict[str, Any], benchmark: str, items: list[str]
) -> str:
    """What makes two gate scores comparable: benchmark, items, generation and answer settings."""
    spec = next(s for s in benchmark_specs(params) if s["name"] == benchmark)
    return stable_hash(
        {
            "benchmark": {
                k: v for k, v in spec.items() if k not in ("metrics", "text_metrics", "optional")
            },
            "items": sorted(items),
            "settings": {k: v for k, v in sampling_settings(params).items() if k != "token_budget"},
            "tie_rule": params.get("tie_rule", "expected"),
            "system_prompt": task.get("system_prompt"),
            "answer": task.get("answer"),
        }
    )


def gate_policy(
    policy: Policy,
    per_prompt: pd.DataFrame,
    params: dict[str, Any],
    task: dict[str, Any],
    seed: int,
    *,
    model_name: str,
    **health: Any,
) -> dict[str, Any]:
    """Register the final policy and alias it ``champion`` or ``challenger`` (see ``taoflow.registry``).

    The one node that talks to MLflow itself: registry aliases depend on what the registry
    already holds, which no catalog dataset models. It uses the active run's URIs.
    ``health`` (keyword per round, e.g. ``round_1=<verdict>``) lets the health guard refuse
    ``champion`` to a collapsed policy.
    """
    from taoflow.registry import register_and_gate

    gate = params.get("gate") or {}
    if not gate.get("enabled", True):
        return {
            "alias": None,
            "promoted": False,
            "reason": "registry gate disabled (evaluate.gate.enabled)",
        }
    settings = sampling_settings(params)
    benchmark = gate.get("benchmark") or next(
        s["name"] for s in benchmark_specs(params) if s["kind"] == "labeled"
    )
    metric = str(gate.get("metric", "accuracy")).replace("@k", f"@{settings['k']}")
    baseline = params.get("baseline", "base")
    bench = per_prompt[per_prompt["benchmark"] == benchmark]
    if metric not in bench.columns:
        raise ValueError(f"gate metric {metric!r} was not computed on benchmark {benchmark!r}")

    def scores(model: str) -> dict[str, float]:
        rows = bench[bench["model"] == model]
        return {str(i): float(v) for i, v in zip(rows["item_id"], rows[metric], strict=True)}

    candidate = scores(model_name)
    decision = register_and_gate(
        policy,
        name=str(gate.get("registered_model_name", "taoflow-policy")),
        candidate_scores=candidate,
        baseline_scores=scores(baseline),
        fingerprint=gate_fingerprint(params, task, benchmark, list(candidate)),
        metric=f"{benchmark}/{metric}",
        min_ci_low=float(gate.get("min_ci_low", 0.0)),
        n_resamples=int(params.get("n_bootstrap", 1000)),
        confidence=float(params.get("confidence", 0.95)),
        # the report's bootstrap seed (and sorted item order): the gate quotes the report's CI
        seed=derive_seed(seed, "bootstrap", benchmark, metric),
        extra_tags={"taoflow.evaluated_as": model_name},
        health=health or None,
    )
    return decision.as_dict()


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def build_eval_report(
    results: pd.DataFrame,
    paired: pd.DataFrame,
    per_prompt: pd.DataFrame,
    params: dict[str, Any],
    gate: dict[str, Any] | None = None,
) -> str:
    """The Markdown report: metrics with CIs per model, paired verdicts, regressions, gate."""
    confidence = int(round(float(params.get("confidence", 0.95)) * 100))
    models = list(dict.fromkeys(results["model"]))
    out = ["# Evaluation report", ""]
    out.append(
        f"Values are means over items with {confidence}% bootstrap confidence intervals "
        f"({params.get('n_bootstrap', 1000)} resamples over items). Paired differences are "
        "per-item (model − baseline): *better* / *worse* only when the interval excludes zero."
    )
    best = params.get("best_of_n") or {}
    name = str(best.get("name") or "best_of_n")
    if best.get("enabled") and name in models:
        source = best.get("from") or params.get("baseline", "base")
        out += [
            "",
            f"`{name}` is {source}'s best of its k = {sampling_settings(params)['k']} sampled "
            "completions per item, chosen by the score stage's label-free scorers (top reward; "
            "ties → earliest sample), with no generation of its own: its accuracy is the chosen "
            "answer's. pass@1, maj@k and pass@k do not apply to it (–); label-free benchmarks "
            "leave it out, since their reward is what chose it.",
        ]
    for benchmark, rows in results.groupby("benchmark", sort=False):
        out += ["", f"## {benchmark}", ""]
        metrics = list(dict.fromkeys(rows["metric"]))
        table = []
        for model in models:
            cells = [model]
            for metric in metrics:
                hit = rows[(rows["model"] == model) & (rows["metric"] == metric)]
                if hit.empty:
                    cells.append("–")
                else:
                    r = hit.iloc[0]
                    cells.append(f"{_fmt(r.value)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]")
            table.append(cells)
        n = int(rows["n"].max())
        out += [_markdown_table(["model", *metrics], table), "", f"n = {n} items"]
        comp = paired[paired["benchmark"] == benchmark]
        if not comp.empty:
            table = []
            for r in comp.itertuples(index=False):
                verdict = "better" if r.better else "worse" if r.worse else "no clear difference"
                p = "–" if r.p_value is None or pd.isna(r.p_value) else f"{r.p_value:.3g}"
                table.append(
                    [
                        f"{r.model} vs {r.baseline}",
                        r.metric,
                        f"{_fmt(r.diff, True)} [{_fmt(r.ci_low, True)}, {_fmt(r.ci_high, True)}]",
                        f"{r.wins}/{r.losses}/{r.ties}",
                        p,
                        verdict,
                    ]
                )
            out += [
                "",
                "### Paired comparison",
                "",
                _markdown_table(
                    ["models", "metric", "difference", "wins/losses/ties", "McNemar p", "verdict"],
                    table,
                ),
            ]
        out += _regressions(per_prompt, benchmark, params)
    out += ["", "## Registry gate", ""]
    if not gate:
        out.append("No tuned policy was evaluated: nothing to register.")
    elif gate.get("alias") is None:
        out.append(str(gate.get("reason")))
    else:
        out.append(
            f"`{gate['registered_model']}` version {gate['version']} → **@{gate['alias']}**. "
            f"{gate['reason']}."
        )
    return "\n".join(out) + "\n"


def _regressions(per_prompt: pd.DataFrame, benchmark: str, params: dict[str, Any]) -> list[str]:
    """Items the baseline got right and a tuned model got wrong (greedy): where it got worse."""
    limit = int(params.get("report_examples", 5))
    baseline = params.get("baseline", "base")
    rows = per_prompt[per_prompt["benchmark"] == benchmark]
    if "accuracy" not in rows.columns or limit <= 0:
        return []
    base = rows[rows["model"] == baseline].set_index("item_id")
    out = []
    for model in dict.fromkeys(rows["model"]):
        if model == baseline:
            continue
        tuned = rows[rows["model"] == model].set_index("item_id")
        worse = tuned.index[(base["accuracy"].reindex(tuned.index) == 1) & (tuned["accuracy"] == 0)]
        if len(worse) == 0:
            continue
        table = [
            [
                i,
                str(tuned.at[i, "prompt"])[:80],
                tuned.at[i, "reference"],
                str(base.at[i, "greedy_completion"])[:60],
                str(tuned.at[i, "greedy_completion"])[:60],
            ]
            for i in list(worse)[:limit]
        ]
        out += [
            "",
            f"### Where {model} got worse ({len(worse)} items right for {baseline}, wrong for {model})",
            "",
            _markdown_table(["item", "prompt", "reference", baseline, model], table),
        ]
    return out


def plot_metrics(results: pd.DataFrame, params: dict[str, Any]):
    """Metric per model with CI error bars, one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(results["benchmark"]))
    fig, axes = plt.subplots(
        1, max(len(benchmarks), 1), figsize=(6 * max(len(benchmarks), 1), 4), squeeze=False
    )
    models = list(dict.fromkeys(results["model"]))
    width = 0.8 / max(len(models), 1)
    for ax, benchmark in zip(axes[0], benchmarks, strict=False):
        rows = results[results["benchmark"] == benchmark]
        metrics = list(dict.fromkeys(rows["metric"]))
        x = np.arange(len(metrics))
        for j, model in enumerate(models):
            r = rows[rows["model"] == model].set_index("metric").reindex(metrics)
            errors = np.vstack([r["value"] - r["ci_low"], r["ci_high"] - r["value"]]).clip(min=0)
            ax.bar(
                x + (j - (len(models) - 1) / 2) * width,
                r["value"],
                width,
                yerr=errors,
                capsize=3,
                label=model,
            )
        ax.set_xticks(x, metrics)
        ax.set_title(benchmark)
        ax.set_ylabel(f"value ({float(params.get('confidence', 0.95)):.0%} CI)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_rewards(per_prompt: pd.DataFrame, params: dict[str, Any]):
    """Distribution of per-prompt mean reward, base vs tuned, on the label-free benchmarks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (
        per_prompt.dropna(subset=["mean_reward"])
        if "mean_reward" in per_prompt
        else per_prompt.iloc[:0]
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    if rows.empty:
        ax.text(0.5, 0.5, "no label-free benchmark evaluated", ha="center", va="center")
        ax.set_axis_off()
        return fig
    models = list(dict.fromkeys(rows["model"]))
    values = [rows.loc[rows["model"] == m, "mean_reward"].to_numpy() for m in models]
    bins = np.linspace(min(v.min() for v in values), max(v.max() for v in values) + 1e-9, 21)
    for model, v in zip(models, values, strict=True):
        ax.hist(v, bins=bins, alpha=0.5, label=f"{model} (mean {v.mean():.3f})")
    ax.set_xlabel("mean reward per prompt")
    ax.set_ylabel("prompts")
    ax.set_title("label-free reward: " + ", ".join(dict.fromkeys(rows["benchmark"])))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
