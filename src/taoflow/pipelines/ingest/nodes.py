"""Nodes of the ``ingest`` pipeline that are not parsing: the traces watermark and ``prompts``.

Parsing of the sources is in :mod:`.parsing`, cleaning in :mod:`.cleaning`; nodes here are pure:
MLflow traces arrive through the ``ingest_new_traces`` dataset and the tokenizer through
``base_tokenizer`` (written by ``prepare_base``).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm.auto import tqdm

from taoflow.config.ingest import IngestParams, TraceParams
from taoflow.core.ids import stable_hash
from taoflow.core.tracking import mlflow_metrics
from taoflow.datasets.mlflow_traces import FEEDBACK_SHARD_PREFIX
from taoflow.errors import UserError
from taoflow.generation.chat import holds_special_text, render_chat_ids, special_token_texts
from taoflow.pipelines.ingest.cleaning import TokenCounter, clean_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
else:  # resolvable by Kedro's type-hint checks without importing transformers at start-up
    PreTrainedTokenizerBase = Any

logger = logging.getLogger(__name__)


def take_new_traces(
    new_traces: pd.DataFrame, watermark: dict[str, Any], traces: TraceParams
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """New served requests → new shards of the trace log, and the watermark moved past them.

    Fetched requests are appended to an accumulating trace log rather than passed on directly: a
    run that fails later still leaves them for the next run. The watermark keeps the newest
    timestamp taken plus the trace ids at that timestamp (see ``MlflowTracesDataset``), and the
    newest feedback time seen. Traces taken before that come back with newer feedback go to a
    ``feedback-`` shard, which parsing reads as feedback updates, not as new requests.
    """
    watermark = dict(watermark or {})
    if not traces.enabled or new_traces.empty:
        return {}, watermark
    frame = new_traces.reset_index(drop=True)
    experiment = str(frame["experiment"].iloc[0])
    state = watermark.get(experiment) or {}
    since = int(state.get("timestamp_ms", 0))
    seen = set(state.get("trace_ids", []))
    taken = (frame["timestamp_ms"] < since) | (
        (frame["timestamp_ms"] == since) & frame["trace_id"].isin(seen)
    )
    fresh, refreshed = frame[~taken].reset_index(drop=True), frame[taken].reset_index(drop=True)
    shards: dict[str, pd.DataFrame] = {}
    next_state = dict(state)
    if not fresh.empty:
        newest = int(fresh["timestamp_ms"].max())
        at_newest = fresh.loc[fresh["timestamp_ms"] == newest, "trace_id"].tolist()
        next_state.update(
            timestamp_ms=newest,
            trace_ids=sorted(set(at_newest) | (seen if newest == since else set())),
            n_ingested=int(state.get("n_ingested", 0)) + len(fresh),
        )
        ids = fresh["trace_id"].tolist()
        shards[f"{int(fresh['timestamp_ms'].min()):013d}-{stable_hash(ids, 8)}"] = fresh
    next_state["experiment_id"] = new_traces.attrs.get("experiment_id")
    if "feedback_updated_ms" in frame:
        updated = int(pd.to_numeric(frame["feedback_updated_ms"]).fillna(0).max())
        if updated > int(state.get("feedback_ms", 0)):
            next_state["feedback_ms"] = updated
    if not refreshed.empty:
        ids = refreshed["trace_id"].tolist()
        name = f"{FEEDBACK_SHARD_PREFIX}{int(next_state.get('feedback_ms', 0)):013d}-{stable_hash(ids, 8)}"
        shards[name] = refreshed
    watermark[experiment] = next_state
    logger.info(
        "Traces source: %d new request(s), %d with newer feedback, from %r.",
        len(fresh),
        len(refreshed),
        experiment,
    )
    return shards, watermark


def tokenizer_counter(tokenizer: PreTrainedTokenizerBase, batch_size: int = 256) -> TokenCounter:
    """Prompt lengths in tokens of the base model, chat template and generation header included."""

    specials = special_token_texts(tokenizer)

    def count(conversations: list[list[dict[str, str]]]) -> list[int]:
        lengths: list[int] = []
        for start in tqdm(
            range(0, len(conversations), batch_size),
            desc="token lengths",
            unit="batch",
            disable=len(conversations) <= batch_size,
        ):
            batch = conversations[start : start + batch_size]
            texts = tokenizer.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
            # Typed special-token text counts as the characters it is, as generation renders it.
            lengths += [
                len(render_chat_ids(tokenizer, c, specials))
                if holds_special_text(c, specials)
                else len(x)
                for c, x in zip(batch, ids, strict=True)
            ]
        return lengths

    return count


def build_prompts(
    rows: list[dict[str, Any]],
    ingest: IngestParams,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Node: candidate rows → ``prompts``, ``ingest_rejects``, ``ingest_metrics``.

    Stops the run when nothing usable is left: a TAO round on zero prompts would only fail later,
    further from the cause.
    """
    prompts, rejects, counts = clean_rows(rows, ingest, tokenizer_counter(tokenizer), seed)
    if prompts.empty:
        sources = sorted({r["source"] for r in rows}) or ["(no rows at all)"]
        reasons = dict(Counter(rejects["reason"]).most_common())
        examples = "; ".join(
            f"{r.location}: {r.reason} ({r.detail})" for r in rejects.head(3).itertuples()
        )
        raise UserError(
            f"ingest: zero usable prompts from {len(rows)} row(s) of {sources}. "
            f"Rejected by reason: {reasons}. First rejects: {examples or '-'}"
        )
    logger.info(
        "ingest: read %d, kept %d (train %d / holdout %d), rejected %d, deduplicated %d",
        counts["read"],
        counts["kept"],
        counts["split.train"],
        counts["split.holdout"],
        counts["rejected"],
        counts["deduplicated"],
    )
    return prompts, rejects, mlflow_metrics(counts, prefix="ingest", step=0)
