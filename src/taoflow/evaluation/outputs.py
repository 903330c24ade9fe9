"""Generation for evaluation: greedy and k sampled completions per item, as resumable shards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.generate import GenerateParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import derive_seed, stable_hash
from taoflow.evaluation.benchmarks import MODEL_NAME, benchmark_items, source_table
from taoflow.models import Policy

OUTPUTS_PREFIX = "outputs__"
OUTPUT_COLUMNS = [
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


def _generate_shard(
    policy: Policy,
    model: str,
    benchmark: str,
    items: pd.DataFrame,
    *,
    mode: str,
    settings: dict[str, Any],
    seed: int,
    engine: Any = None,
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
            backend=settings.get("backend", "transformers"),
            engine=engine,
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
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)

    return compute


def generate_eval_outputs(
    policy: Policy,
    params: EvaluateParams,
    task: TaskParams,
    seed: int,
    *,
    model_name: str,
    sources: dict[str, pd.DataFrame],
    generate: GenerateParams | None = None,
) -> dict[str, Callable[[], pd.DataFrame]]:
    """One model's evaluation generations as lazy shards (``ResumablePartitionedDataset``).

    Labeled items get one greedy and ``k`` sampled completions, label-free items ``k`` samples;
    a ``greedy_only`` extra model gets the greedy completions alone.
    Seeds depend on the benchmark, mode and chunk, never on the model, so every model sees the
    same sampling noise. Shard ids hash the model's weights, settings and items: a retrained
    policy or a changed configuration never reuses a stale shard, an unchanged one resumes.
    ``generate`` (``params:generate``; None: transformers) picks the backend: a vLLM shard's key
    names its backend (its samples differ), a transformers one keeps its key.
    """
    from taoflow.generation import policy_fingerprint

    if not MODEL_NAME.match(model_name):
        raise ValueError(f"model display name {model_name!r}: letters, digits, underscores only")
    settings = params.sampling()
    backend = generate.backend if generate is not None else "transformers"
    if backend != "transformers":
        settings["backend"] = backend
    fingerprint = policy_fingerprint(policy)
    shards: dict[str, Callable[[], pd.DataFrame]] = {}
    for spec in params.enabled_benchmarks:
        items = benchmark_items(spec, source_table(sources, spec), task, params.limit)
        modes = ["greedy", "sampled"] if spec.kind == "labeled" else ["sampled"]
        if params.greedy_only(model_name):
            # an extra model evaluated by its greedy answers alone (a large judge on few cores)
            modes = [m for m in modes if m == "greedy"]
        for mode in modes:
            for start in range(0, len(items), params.shard_size):
                chunk = items.iloc[start : start + params.shard_size]
                chunk_seed = derive_seed(seed, "evaluate", spec.name, mode, start)
                key = stable_hash(
                    {
                        "model": fingerprint,
                        "settings": settings,
                        "seed": chunk_seed,
                        "items": chunk[["item_id", "messages", "reference"]].to_dict("records"),
                    },
                    10,
                )
                shard_id = f"{spec.name}-{mode}-{start // params.shard_size:04d}-{key}"
                shards[shard_id] = _generate_shard(
                    policy,
                    model_name,
                    spec.name,
                    chunk,
                    mode=mode,
                    settings=settings,
                    seed=chunk_seed,
                    engine=generate.vllm if generate is not None else None,
                )
    return shards


def load_outputs(inputs: dict[str, Any]) -> pd.DataFrame:
    """Every ``outputs__<model>`` partitioned input, loaded and concatenated in input order."""
    frames = []
    for key, partitions in inputs.items():
        if not key.startswith(OUTPUTS_PREFIX):
            continue
        for load in partitions.values():
            frames.append(load() if callable(load) else load)
    if not frames:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)
    return pd.concat(frames, ignore_index=True)
