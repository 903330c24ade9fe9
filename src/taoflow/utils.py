"""Small helpers shared by every stage: stable hashing and seeding."""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any

import numpy as np
import torch


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that is the same on every machine and Python run.

    ``hash()`` is salted per process, so ids and seeds derived from it would not reproduce.
    """
    payload = json.dumps(
        obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from (global seed, round, shard, ...) so work can be split freely."""
    return int(stable_hash(list(parts), 8), 16) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; CPU runs are then bit-reproducible."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def mlflow_metrics(
    values: dict[str, float | int | None], prefix: str = "", step: int = 0
) -> dict[str, dict[str, float]]:
    """Plain ``{name: number}`` → the shape ``MlflowMetricsHistoryDataset`` saves; drops None/NaN.

    Stage nodes return this as their ``*_metrics`` output; the catalog logs it to the run.
    ``prefix`` is the stage (``generate.tokens_per_s``); ``step`` is the round, so the same
    metric of successive rounds forms one MLflow history instead of overwriting itself.
    """
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        value = float(value)
        if math.isnan(value):
            continue
        out[f"{prefix}.{name}" if prefix else name] = {"value": value, "step": step}
    return out


def as_messages(value: Any) -> list[dict[str, str]]:
    """Chat messages as plain ``[{role, content}]`` whatever the storage gave back.

    Parquet returns lists of structs as NumPy arrays of dicts; JSON may give a string.
    """
    if isinstance(value, str):
        value = json.loads(value)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in list(value)]


def row_messages(
    value: Any, row: int, prompt_id: Any, where: str = "prompts"
) -> list[dict[str, str]]:
    """:func:`as_messages` for one row of ``prompts``; a malformed value names the row and field."""
    try:
        return as_messages(value)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{where} row {row} (prompt_id={prompt_id!r}): field 'messages' is not a list of "
            f"{{role, content}}: {error!r}"
        ) from error
