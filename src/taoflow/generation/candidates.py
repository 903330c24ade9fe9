"""The ``candidates`` row contract, shared by generate's shards and health's probe."""

from __future__ import annotations

from typing import Any

# One row per sampled completion: the ``candidates`` contract (generate's shards, health probes).
CANDIDATE_COLUMNS = [
    "prompt_id",
    "candidate_id",
    "round",
    "strategy",
    "temperature",
    "seed",
    "completion",
    "n_tokens",
    "finish_reason",
    "logprob",
]


def candidate_record(
    prompt_id: str,
    candidate_id: str,
    sample: dict[str, Any],
    *,
    round_: int,
    strategy: str,
    temperature: float,
) -> dict[str, Any]:
    """One :data:`CANDIDATE_COLUMNS` row from a :func:`generate_completions` sample."""
    return {
        "prompt_id": prompt_id,
        "candidate_id": candidate_id,
        "round": round_,
        "strategy": strategy,
        "temperature": float(temperature),
        "seed": int(sample["seed"]),
        "completion": sample["completion"],
        "n_tokens": int(sample["n_tokens"]),
        "finish_reason": sample["finish_reason"],
        "logprob": float(sample["logprob"]),
    }
