"""Cleaning of candidate rows: normalise, redact, deduplicate, length-filter, cap and split.

Every input row ends in exactly one place: ``prompts`` (kept) or ``ingest_rejects`` with a reason
(rejected, deduplicated, or cut by the sampling cap). ``kept + rejected + deduplicated == read``
holds by construction and is property-tested.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd

from taoflow.config.ingest import IngestParams
from taoflow.core.ids import stable_hash
from taoflow.core.pii import redact_pii
from taoflow.core.text import RowError, dedup_key, normalize_messages

DUPLICATE_REASONS = ("duplicate_exact", "duplicate_normalized")
PROMPT_COLUMNS = ["prompt_id", "messages", "source", "split", "meta", "prompt_tokens"]
REJECT_COLUMNS = ["source", "location", "reason", "raw", "detail"]

TokenCounter = Callable[[list[list[dict[str, str]]]], list[int]]


def holdout_score(prompt_id: str) -> float:
    """Uniform in [0, 1) from the prompt id alone: a prompt's split never depends on other rows."""
    return int(stable_hash(["split", prompt_id], 13), 16) / 16**13


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _reject(rejects: list[dict[str, Any]], row: dict[str, Any], reason: str, detail: Any) -> None:
    rejects.append(
        {
            **{k: row[k] for k in ("source", "location", "raw")},
            "reason": reason,
            "detail": detail,
            "_order": row["_order"],
        }
    )


def _clean_one(
    row: dict[str, Any],
    ingest: IngestParams,
    kinds: list[str],
    first_exact: dict[str, str],
    first_norm: dict[str, str],
) -> tuple[int, Counter, dict[str, Any]]:
    """One row → (trailing turns dropped, redactions, kept row); ``RowError`` rejects it."""
    messages, dropped = normalize_messages(
        row["messages"], ingest.system_prompt, ingest.system_prompt_mode
    )
    row_redactions: Counter = Counter(row.get("redactions") or {})  # found while parsing
    for message in messages if kinds else []:
        message["content"], found = redact_pii(message["content"], kinds)
        row_redactions += found
    exact = row.get("exact_key") or stable_hash(row["messages"])
    norm = dedup_key(messages)
    if exact in first_exact:
        raise RowError("duplicate_exact", f"same row as {first_exact[exact]}")
    if norm in first_norm:
        raise RowError("duplicate_normalized", f"same normalised text as {first_norm[norm]}")
    prompt_id = stable_hash(messages)
    first_exact[exact] = first_norm[norm] = row["location"]
    if row_redactions:
        row["meta"] = {**row["meta"], "redacted": dict(sorted(row_redactions.items()))}
    return dropped, row_redactions, {**row, "messages": messages, "prompt_id": prompt_id}


def _redact_rejects(rejects: list[dict[str, Any]], ingest: IngestParams) -> None:
    """Rejects are stored: redact PII in ``raw`` and ``detail`` (placeholders keep the shape
    for debugging), then cut ``raw`` to ``max_raw_chars``."""
    kinds = list(ingest.pii.kinds) if ingest.pii.enabled else []
    for reject in rejects:
        raw = reject["raw"] if isinstance(reject["raw"], str) else _json(reject["raw"])
        if kinds:
            raw = redact_pii(raw, kinds)[0]
            if isinstance(reject["detail"], str):
                reject["detail"] = redact_pii(reject["detail"], kinds)[0]
        reject["raw"] = raw[: ingest.max_raw_chars]


def _normalize_and_dedup(
    rows: list[dict[str, Any]], ingest: IngestParams, rejects: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], Counter, Counter]:
    """Rows still unrejected after normalising, redacting and both duplicate checks.

    Returns ``(kept, counts, redacted)``; the first of a duplicate set (in input order) is kept.
    """
    kinds = list(ingest.pii.kinds) if ingest.pii.enabled else []
    counts: Counter = Counter()
    redacted: Counter = Counter()
    kept: list[dict[str, Any]] = []
    first_exact: dict[str, str] = {}
    first_norm: dict[str, str] = {}
    for order, row in enumerate(rows):
        row = {**row, "_order": order}
        counts[f"source.{row['source']}.read"] += 1
        if row["reason"]:
            _reject(rejects, row, row["reason"], row["detail"])
            continue
        try:
            outcome = _clean_one(row, ingest, kinds, first_exact, first_norm)
        except RowError as err:
            _reject(rejects, row, err.reason, err.detail)
            continue
        except Exception as err:  # noqa: BLE001 - one row must never stop the run
            _reject(rejects, row, "row_error", f"{type(err).__name__}: {err}")
            continue
        dropped, row_redactions, cleaned = outcome
        counts["trailing_assistant_removed"] += dropped
        if row_redactions:
            redacted.update(row_redactions)
            counts["redacted.rows"] += 1
        kept.append(cleaned)
    return kept, counts, redacted


def _length_filter(
    kept: list[dict[str, Any]],
    max_tokens: int | None,
    count_tokens: TokenCounter,
    rejects: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Rows within ``max_tokens`` (0/None: no limit); each row gets its ``prompt_tokens``."""
    lengths = count_tokens([r["messages"] for r in kept]) if kept else []
    survivors = []
    for row, n in zip(kept, lengths, strict=True):
        row["prompt_tokens"] = int(n)
        if max_tokens and n > int(max_tokens):
            _reject(rejects, row, "too_long", f"{n} tokens > max_prompt_tokens {max_tokens}")
        else:
            survivors.append(row)
    return survivors


def _apply_cap(
    survivors: list[dict[str, Any]], cap: int | None, seed: int, rejects: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """At most ``cap`` rows, chosen by a seeded hash of ``prompt_id``; input order is kept."""
    if cap is None or len(survivors) <= int(cap):
        return survivors
    ranked = sorted(survivors, key=lambda r: stable_hash([seed, r["prompt_id"]]))
    chosen = {id(r) for r in ranked[: int(cap)]}
    for row in survivors:
        if id(row) not in chosen:
            _reject(rejects, row, "sampling_cap", f"max_prompts {cap} (seed {seed})")
    return [r for r in survivors if id(r) in chosen]


def _prompt_frame(survivors: list[dict[str, Any]], fraction: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "prompt_id": r["prompt_id"],
                "messages": r["messages"],
                "source": r["source"],
                "split": "holdout" if holdout_score(r["prompt_id"]) < fraction else "train",
                "meta": _json(r["meta"]),
                "prompt_tokens": r["prompt_tokens"],
            }
            for r in survivors
        ],
        columns=PROMPT_COLUMNS,
    )


def _summary(
    *,
    n_read: int,
    prompts: pd.DataFrame,
    survivors: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
    counts: Counter,
    redacted: Counter,
) -> dict[str, float]:
    """The ``ingest.*`` metrics: where every row went, per source and reason."""
    reasons = Counter(r["reason"] for r in rejects)
    out = dict(counts)
    for source, n in Counter(r["source"] for r in survivors).items():
        out[f"source.{source}.kept"] = n
    out.update({f"rejected.{k}": v for k, v in reasons.items() if k not in DUPLICATE_REASONS})
    out.update({f"redacted.{k}": v for k, v in redacted.items()})
    out.update(
        {
            "read": n_read,
            "kept": len(prompts),
            "rejected": sum(v for k, v in reasons.items() if k not in DUPLICATE_REASONS),
            "deduplicated": sum(reasons[k] for k in DUPLICATE_REASONS),
            "deduplicated.exact": reasons["duplicate_exact"],
            "deduplicated.normalized": reasons["duplicate_normalized"],
            "split.train": int((prompts["split"] == "train").sum()),
            "split.holdout": int((prompts["split"] == "holdout").sum()),
            "redacted.rows": out.get("redacted.rows", 0),
        }
    )
    if len(prompts):
        out["prompt_tokens.mean"] = float(prompts["prompt_tokens"].mean())
        out["prompt_tokens.max"] = int(prompts["prompt_tokens"].max())
    return out


def clean_rows(
    rows: list[dict[str, Any]],
    ingest: IngestParams,
    count_tokens: TokenCounter,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Normalise, redact, deduplicate, length-filter, cap and split candidate rows.

    Returns ``(prompts, rejects, counts)``. Pure given ``count_tokens``, so it is tested without
    a model; the node passes the base model's tokenizer.
    """
    rejects: list[dict[str, Any]] = []
    kept, counts, redacted = _normalize_and_dedup(rows, ingest, rejects)
    survivors = _length_filter(kept, ingest.max_prompt_tokens, count_tokens, rejects)
    survivors = _apply_cap(survivors, ingest.max_prompts, seed, rejects)
    prompts = _prompt_frame(survivors, float(ingest.holdout_fraction))
    rejects.sort(key=lambda r: r["_order"])
    _redact_rejects(rejects, ingest)
    reject_frame = pd.DataFrame(rejects, columns=[*REJECT_COLUMNS, "_order"]).drop(columns="_order")
    summary = _summary(
        n_read=len(rows),
        prompts=prompts,
        survivors=survivors,
        rejects=rejects,
        counts=counts,
        redacted=redacted,
    )
    return prompts, reject_frame, summary
