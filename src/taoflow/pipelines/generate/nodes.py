"""Nodes of the ``generate`` stage: train prompts × current policy → candidate completions.

The work is cut into shards by a plan that depends only on the data and the configuration
(prompts sorted by ``prompt_id``, ``shard_size`` per shard). Each shard's seed derives from
(global seed, round, shard), and the shard id embeds a hash of everything that decides its
content, so ``ResumablePartitionedDataset`` can skip shards already on disk after a killed run
without ever reusing one made under another configuration or policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pandas as pd

from taoflow.config.generate import GenerateParams, StrategyParams, VllmEngineParams
from taoflow.config.shared import TaskParams, ViewParams
from taoflow.core.ids import derive_seed, stable_hash
from taoflow.core.text import row_messages
from taoflow.core.tracking import mlflow_metrics
from taoflow.generation import (
    CANDIDATE_COLUMNS,
    candidate_record,
    frame_conversation,
    generate_completions,
    policy_fingerprint,
)
from taoflow.generation.views import view_conversation
from taoflow.models import Policy


def named_strategies(generate: GenerateParams) -> list[tuple[str, StrategyParams]]:
    """``generate.strategies`` in YAML order, as (name, strategy) pairs."""
    return list(generate.strategies.items())


def strategy_key(
    name: str, strategy: StrategyParams, view: ViewParams | None = None
) -> dict[str, Any]:
    """A strategy as it enters the shard ids (name first, then its settings in field order).

    A strategy without a view hashes as it did before views existed (same shard ids); one with
    a view also hashes the view's definition, so editing a template regenerates its shards.
    """
    settings = strategy.model_dump()
    if settings.get("view") is None:
        settings.pop("view", None)
    key = {"name": name, **settings}
    if view is not None:
        key["view_definition"] = view.model_dump()
    return key


def strategy_views(
    strategies: list[tuple[str, StrategyParams]], task: TaskParams
) -> dict[str, ViewParams]:
    """Strategy name → the task view it answers (strategies without ``view`` absent)."""
    views = {}
    for name, strategy in strategies:
        if strategy.view is None:
            continue
        if strategy.view not in task.views:
            raise ValueError(
                f"generate.strategies.{name}.view is {strategy.view!r}, which task.views does "
                f"not declare (it has {sorted(task.views)})"
            )
        views[name] = task.views[strategy.view]
    return views


def allocate_candidates(
    n_prompts: int, num_candidates: int, weights: list[float]
) -> list[list[int]]:
    """Candidates per (prompt, strategy): each prompt gets ``num_candidates`` in total.

    Systematic allocation over the whole run: among the first ``m`` candidate slots, strategy
    ``s`` owns ``round(m × cumulative_weight_s) − round(m × cumulative_weight_{s−1})``. Totals
    per strategy are within one of ``weight × slots``, remainders rotate across prompts instead
    of always favouring one strategy, and the result depends only on the inputs.
    """
    fractions = [Fraction(w).limit_denominator(10**6) for w in weights]
    total = sum(fractions)
    bounds, acc = [], Fraction(0)
    for f in fractions:
        acc += f / total
        bounds.append(acc)

    def owned(m: int) -> list[int]:
        cumulative = [int(m * b + Fraction(1, 2)) for b in bounds]  # round half up, exactly
        return [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]

    allocation = []
    for p in range(n_prompts):
        before, after = owned(p * num_candidates), owned((p + 1) * num_candidates)
        allocation.append([a - b for a, b in zip(after, before, strict=True)])
    return allocation


def select_train_prompts(prompts: pd.DataFrame) -> pd.DataFrame:
    """The ``split == "train"`` prompts, validated and sorted by ``prompt_id`` (the shard plan order)."""
    missing = {"prompt_id", "messages", "split"} - set(prompts.columns)
    if missing:
        raise ValueError(
            f"prompts: missing column(s) {sorted(missing)} (contract: docs/architecture.md)."
        )
    train = prompts[prompts["split"] == "train"]
    if train.empty:
        splits = prompts["split"].value_counts().to_dict()
        raise ValueError(
            f"prompts: no rows with split == 'train' ({len(prompts)} rows; splits {splits}). "
            "Run the ingest pipeline with usage data, or lower its holdout fraction."
        )
    duplicated = train["prompt_id"][train["prompt_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"prompts: duplicated prompt_id {duplicated[:5]} among train rows.")
    records = []
    for row, (prompt_id, messages) in enumerate(
        zip(train["prompt_id"], train["messages"], strict=True)
    ):
        parsed = row_messages(messages, row, prompt_id)
        if not any(m["role"] == "user" for m in parsed):
            raise ValueError(
                f"prompts row {row} (prompt_id={prompt_id}): field 'messages' has no user turn."
            )
        records.append({"prompt_id": str(prompt_id), "messages": parsed})
    return pd.DataFrame(records).sort_values("prompt_id", kind="stable").reset_index(drop=True)


def _round_of(policy: Policy) -> int:
    return int(policy.lineage.get("round") or 0) + 1


def generate_candidates(
    prompts: pd.DataFrame,
    input_policy: Policy,
    generate: GenerateParams,
    seed: int,
    task: TaskParams,
) -> dict[str, Callable[[], pd.DataFrame]]:
    """Plan the shards and return them lazily: ``{shard_id: callable → candidates DataFrame}``.

    Nothing is generated here; ``ResumablePartitionedDataset`` calls each callable while saving
    and skips shards already on disk, which makes a killed run resumable.
    """
    num_candidates, shard_size = generate.num_candidates, generate.shard_size
    strategies = named_strategies(generate)
    views = strategy_views(strategies, task)
    train = select_train_prompts(prompts)
    allocation = allocate_candidates(len(train), num_candidates, [s.weight for _, s in strategies])
    round_ = _round_of(input_policy)
    default_system = task.system_prompt
    plan_key = {
        "strategies": [strategy_key(name, s, views.get(name)) for name, s in strategies],
        "num_candidates": num_candidates,
        "shard_size": shard_size,
        "token_budget": generate.token_budget,
        "backend": generate.backend,
        "seed": seed,
        "round": round_,
        "system_prompt": default_system,
        "policy": policy_fingerprint(input_policy),
    }
    if generate.decode != "generate":  # keyed only when set: the default's shard ids are unchanged
        plan_key["decode"] = generate.decode

    shards: dict[str, Callable[[], pd.DataFrame]] = {}
    for index, start in enumerate(range(0, len(train), shard_size)):
        chunk = train.iloc[start : start + shard_size]
        counts = allocation[start : start + shard_size]
        content = [
            [pid, msgs] for pid, msgs in zip(chunk["prompt_id"], chunk["messages"], strict=True)
        ]
        shard_id = f"{index:05d}-{stable_hash([plan_key, content, counts], 12)}"
        shards[shard_id] = _shard_job(
            shard_id=shard_id,
            policy=input_policy,
            prompt_ids=chunk["prompt_id"].tolist(),
            conversations=chunk["messages"].tolist(),
            counts=counts,
            strategies=strategies,
            views=views,
            shard_seed=derive_seed(seed, round_, index),
            round_=round_,
            default_system=default_system,
            token_budget=generate.token_budget,
            backend=generate.backend,
            decode=generate.decode,
            engine=generate.vllm,
        )
    return shards


def _shard_job(
    *,
    shard_id: str,
    policy: Policy,
    prompt_ids: list[str],
    conversations: list[list[dict]],
    counts: list[list[int]],
    strategies: list[tuple[str, StrategyParams]],
    views: dict[str, ViewParams],
    shard_seed: int,
    round_: int,
    default_system: str | None,
    token_budget: int,
    backend: str,
    decode: str = "generate",
    engine: VllmEngineParams | None = None,
) -> Callable[[], pd.DataFrame]:
    def run() -> pd.DataFrame:
        started = time.perf_counter()
        records = []
        for s_index, (name, strategy) in enumerate(strategies):
            wanted = [c[s_index] for c in counts]
            live = [i for i, n in enumerate(wanted) if n]
            if not live:
                continue
            viewed = [view_conversation(conversations[i], views.get(name)) for i in live]
            outputs = generate_completions(
                policy,
                [
                    frame_conversation(
                        messages,
                        system_prompt=strategy.system_prompt,
                        instruction=strategy.instruction,
                        default_system=default_system,
                    )
                    for messages, _ in viewed
                ],
                num_return_sequences=[wanted[i] for i in live],
                do_sample=not strategy.greedy,
                temperature=strategy.temperature,
                top_p=strategy.top_p,
                top_k=strategy.top_k,
                max_new_tokens=strategy.max_new_tokens,
                seeds=[derive_seed(shard_seed, name, prompt_ids[i]) for i in live],
                token_budget=token_budget,
                progress=f"shard {shard_id[:5]} {name}",
                backend=backend,
                decode=decode,
                engine=engine,
            )
            for i, samples, (_, rewritten) in zip(live, outputs, viewed, strict=True):
                for j, sample in enumerate(samples):
                    candidate_id = stable_hash([prompt_ids[i], round_, name, j, sample["seed"]])
                    records.append(
                        candidate_record(
                            prompt_ids[i],
                            candidate_id,
                            sample,
                            round_=round_,
                            strategy=name,
                            temperature=strategy.temperature,
                        )
                    )
                    if views:
                        records[-1]["view_rewritten"] = rewritten if name in views else None
        columns = [*CANDIDATE_COLUMNS, "view_rewritten"] if views else CANDIDATE_COLUMNS
        frame = pd.DataFrame.from_records(records, columns=columns)
        frame["shard_id"] = shard_id
        frame["shard_seconds"] = time.perf_counter() - started
        return frame

    return run


def collect_candidates(
    candidate_shards: dict[str, Callable[[], pd.DataFrame]],
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Concatenate the shards into ``candidates`` and summarise them for MLflow.

    Throughput comes from the timing each shard recorded when it was generated, so a resumed
    run still reports the speed the candidates were actually produced at.
    """
    if not candidate_shards:
        raise ValueError("candidate_shards is empty: the generate plan produced no shards.")
    frames = [load() for _, load in sorted(candidate_shards.items())]
    shards = pd.concat(frames, ignore_index=True)
    candidates = shards[CANDIDATE_COLUMNS].reset_index(drop=True)
    if candidates.empty:
        raise ValueError("generate produced no candidates (all strategies had zero weight?).")
    round_ = int(candidates["round"].iloc[0])
    seconds = shards.groupby("shard_id")["shard_seconds"].first().sum()
    tokens = int(candidates["n_tokens"].sum())
    distinct = candidates.groupby("prompt_id")["completion"].agg(lambda c: c.nunique() / len(c))
    values: dict[str, float | int | None] = {
        "prompts": candidates["prompt_id"].nunique(),
        "candidates": len(candidates),
        "shards": len(candidate_shards),
        "tokens": tokens,
        "seconds": float(seconds),
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "mean_completion_tokens": float(candidates["n_tokens"].mean()),
        "mean_logprob_per_token": float(candidates["logprob"].sum() / max(tokens, 1)),
        "distinct_fraction": float(distinct.mean()),
    }
    for strategy, group in candidates.groupby("strategy", sort=True):
        reasons = group["finish_reason"].value_counts()
        if "view_rewritten" in shards.columns:
            rewritten = shards.loc[shards["strategy"] == strategy, "view_rewritten"]
            if rewritten.notna().any():  # a strategy answering a view: prompts left as they were
                kept = shards.loc[rewritten.index[~rewritten.astype(bool)], "prompt_id"]
                values[f"{strategy}.view_unparsed_prompts"] = int(kept.nunique())
        values[f"{strategy}.candidates"] = len(group)
        values[f"{strategy}.mean_completion_tokens"] = float(group["n_tokens"].mean())
        for reason in ("stop", "length"):
            values[f"{strategy}.finish_{reason}"] = int(reasons.get(reason, 0))
    return candidates, mlflow_metrics(values, prefix="generate", step=round_)
