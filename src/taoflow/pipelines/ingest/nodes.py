"""Nodes of the ``ingest`` pipeline: usage files and MLflow traces → clean, split ``prompts``.

Every input row ends in exactly one place: ``prompts`` (kept), ``ingest_rejects`` with a reason
(rejected, deduplicated, or cut by the sampling cap). ``kept + rejected + deduplicated == read``
holds by construction and is property-tested.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from taoflow.core.ids import stable_hash
from taoflow.core.pii import redact_pii
from taoflow.core.text import RowError, coerce_messages, dedup_key, normalize_messages
from taoflow.core.tracking import mlflow_metrics
from taoflow.datasets.usage_files import RawSource
from taoflow.models import load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)

DEFAULT_MAPPING = {"prompt": "prompt", "messages": "messages", "system": "system"}
DUPLICATE_REASONS = ("duplicate_exact", "duplicate_normalized")
PROMPT_COLUMNS = ["prompt_id", "messages", "source", "split", "meta", "prompt_tokens"]
REJECT_COLUMNS = ["source", "location", "reason", "raw", "detail"]
TRACE_COLUMNS = [
    "trace_id",
    "timestamp_ms",
    "experiment",
    "root_span",
    "state",
    "request",
    "response",
    "model_version",
    "feedback",
]

TokenCounter = Callable[[list[list[dict[str, str]]]], list[int]]


# --------------------------------------------------------------------------- MLflow traces source


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def trace_to_row(trace: Any, experiment: str, model_version_tag: str) -> dict[str, Any]:
    """One MLflow ``Trace`` → one row of the accumulated trace log (JSON strings: parquet-safe)."""
    from mlflow.entities import Feedback

    spans = list(getattr(trace.data, "spans", None) or [])
    root = next((s for s in spans if s.parent_id is None), None)
    feedback = [
        {
            "name": a.name,
            "value": getattr(a, "value", None),
            "source": getattr(a.source, "source_type", None) if a.source else None,
            "rationale": a.rationale,
        }
        for a in (trace.info.assessments or [])
        if isinstance(a, Feedback)
    ]
    return {
        "trace_id": trace.info.trace_id,
        "timestamp_ms": int(trace.info.timestamp_ms),
        "experiment": experiment,
        "root_span": root.name if root is not None else None,
        "state": str(getattr(trace.info.state, "value", trace.info.state)),
        "request": _json(root.inputs) if root is not None else None,
        "response": _json(root.outputs) if root is not None else None,
        "model_version": (trace.info.tags or {}).get(model_version_tag),
        "feedback": _json(feedback),
    }


def fetch_new_traces(
    traces: dict[str, Any], watermark: dict[str, Any]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Read the served requests logged after the watermark; return them as one new shard.

    The watermark (per experiment) is the newest trace timestamp taken plus the trace ids at that
    timestamp, so traces sharing a millisecond are neither lost nor read twice. Fetched requests
    are appended to an accumulating trace log rather than passed on directly: a run that fails
    later still leaves them for the next run.
    """
    from mlflow import MlflowClient

    watermark = dict(watermark or {})
    if not traces.get("enabled", False):
        return {}, watermark
    experiment = traces["experiment"]
    client = MlflowClient(tracking_uri=traces.get("tracking_uri"))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        logger.info(
            "Traces source: no experiment %r in %s yet; nothing to ingest.",
            experiment,
            traces.get("tracking_uri"),
        )
        return {}, watermark
    state = watermark.get(experiment) or {}
    since = int(state.get("timestamp_ms", 0))
    seen = set(state.get("trace_ids", []))
    limit = traces.get("max_traces")
    rows: list[dict[str, Any]] = []
    token = None
    with tqdm(desc=f"traces from {experiment}", unit="trace") as bar:
        while True:
            page = client.search_traces(
                locations=[found.experiment_id],
                filter_string=f"trace.timestamp_ms >= {since}",
                order_by=["timestamp_ms ASC"],
                max_results=int(traces.get("page_size", 500)),
                page_token=token,
            )
            for trace in page:
                if trace.info.timestamp_ms == since and trace.info.trace_id in seen:
                    continue
                rows.append(trace_to_row(trace, experiment, traces.get("model_version_tag", "")))
            bar.update(len(page))
            token = page.token
            if not token or not len(page) or (limit and len(rows) >= limit):
                break
    if not rows:
        return {}, watermark
    frame = pd.DataFrame(rows, columns=TRACE_COLUMNS)
    frame = frame.sort_values(["timestamp_ms", "trace_id"], kind="stable").reset_index(drop=True)
    if limit:
        frame = frame.head(int(limit))
    newest = int(frame["timestamp_ms"].max())
    at_newest = frame.loc[frame["timestamp_ms"] == newest, "trace_id"].tolist()
    watermark[experiment] = {
        "experiment_id": found.experiment_id,
        "timestamp_ms": newest,
        "trace_ids": sorted(set(at_newest) | (seen if newest == since else set())),
        "n_ingested": int(state.get("n_ingested", 0)) + len(frame),
    }
    shard = f"{int(frame['timestamp_ms'].min()):013d}-{stable_hash(frame['trace_id'].tolist(), 8)}"
    logger.info("Traces source: %d new request(s) from %r.", len(frame), experiment)
    return {shard: frame}, watermark


# --------------------------------------------------------------------------- parsing


def _row(source: str, location: str, raw: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": source,
        "location": location,
        "raw": raw,
        "messages": None,
        "meta": {},
        "reason": None,
        "detail": None,
        **extra,
    }


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):  # NaN from pandas
        return False
    return not (isinstance(value, str) and not value.strip())


def _messages_from_record(record: dict[str, Any], mapping: dict[str, str | None]) -> Any:
    """A record in any supported shape → chat messages (unnormalised), or a ``RowError``."""
    messages_col, prompt_col, system_col = (
        mapping.get(k) for k in ("messages", "prompt", "system")
    )
    if messages_col and _present(record.get(messages_col)):
        return coerce_messages(record[messages_col])
    if prompt_col and prompt_col in record:
        prompt = record[prompt_col]
        if not isinstance(prompt, str):
            if not _present(prompt):
                raise RowError("empty", f"field '{prompt_col}' is empty")
            raise RowError("invalid_row", f"field '{prompt_col}' is {type(prompt).__name__}")
        messages = [{"role": "user", "content": prompt}]
        system = record.get(system_col) if system_col else None
        if _present(system):
            messages.insert(0, {"role": "system", "content": str(system)})
        return messages
    wanted = [c for c in (messages_col, prompt_col) if c]
    raise RowError("missing_field", f"none of the fields {wanted} is present")


def _check_mapping(source: RawSource, mapping: dict[str, Any], columns: Iterable[str]) -> None:
    """A mapped column that is missing from the whole file is a configuration error, not a reject."""
    columns = set(columns)
    named = {k: v for k, v in mapping.items() if v and v != DEFAULT_MAPPING.get(k)}
    missing = {k: v for k, v in named.items() if v not in columns}
    if not missing and not ({mapping.get("prompt"), mapping.get("messages")} & columns):
        missing = {k: mapping[k] for k in ("prompt", "messages") if mapping.get(k)}
    if missing:
        wanted = ", ".join(f"{k} → '{v}'" for k, v in missing.items())
        raise ValueError(
            f"Usage source '{source.name}' ({source.path}): mapped column(s) {wanted} not found; "
            f"the file has {sorted(columns)}. Fix ingest.files.{source.name}.mapping."
        )


def parse_file_source(
    source: RawSource, config: dict[str, Any] | None = None, max_raw_chars: int = 4000
) -> list[dict[str, Any]]:
    """Located rows of one usage file → candidate rows (messages or a reject reason each)."""
    config = config or {}
    mapping = {**DEFAULT_MAPPING, **(config.get("mapping") or {})}
    meta_fields = list(config.get("meta_fields") or [])
    out = []
    records: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (row, parsed object)
    for location, payload in source.rows:
        if source.format == "jsonl":
            raw = payload[:max_raw_chars]
            if not payload.strip():
                out.append(_row(source.name, location, raw, reason="empty", detail="blank line"))
                continue
            try:
                value = json.loads(payload)
            except json.JSONDecodeError as err:
                detail = f"{err.msg} at column {err.colno}"
                out.append(_row(source.name, location, raw, reason="invalid_json", detail=detail))
                continue
            if isinstance(value, str):
                value = {mapping["prompt"] or "prompt": value}
            elif isinstance(value, list):
                value = {mapping["messages"] or "messages": value}
            elif not isinstance(value, dict):
                detail = f"a JSON {type(value).__name__}, not an object"
                out.append(_row(source.name, location, raw, reason="invalid_row", detail=detail))
                continue
        else:
            value = payload
            raw = _json(payload)[:max_raw_chars]
        out.append(_row(source.name, location, raw))
        records.append((out[-1], value))
    if source.columns is not None:
        _check_mapping(source, mapping, source.columns)
    elif records:
        _check_mapping(source, mapping, {key for _, value in records for key in value})
    for row, value in records:
        try:
            row["messages"] = _messages_from_record(value, mapping)
        except RowError as err:
            row["reason"], row["detail"] = err.reason, err.detail
            continue
        row["meta"] = {"location": row["location"]}
        row["meta"].update({f: value[f] for f in meta_fields if f in value})
    return out


def parse_trace_rows(frame: pd.DataFrame, source: str, span_name: str | None) -> list[dict]:
    """Accumulated trace-log rows → candidate rows; the meta carries what ``feedback`` scoring needs."""
    out = []
    for rec in frame.to_dict(orient="records"):
        row = _row(source, str(rec["trace_id"]), rec.get("request") or "")
        if span_name and rec.get("root_span") != span_name:
            row["reason"] = "invalid_row"
            row["detail"] = f"root span {rec.get('root_span')!r} is not {span_name!r}"
            out.append(row)
            continue
        try:
            request = json.loads(rec.get("request") or "null")
            if not isinstance(request, dict) or "messages" not in request:
                raise RowError("missing_field", "request has no 'messages'")
            row["messages"] = coerce_messages(request["messages"])
        except (RowError, json.JSONDecodeError) as err:
            row["reason"] = getattr(err, "reason", "invalid_json")
            row["detail"] = str(err)
            out.append(row)
            continue
        response = json.loads(rec.get("response") or "null")
        served = None
        if isinstance(response, dict):
            try:
                served = response["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                served = None
        row["meta"] = {
            "trace_id": rec["trace_id"],
            "served_response": served,
            "model_version": rec.get("model_version"),
            "feedback": json.loads(rec.get("feedback") or "[]"),
            "timestamp_ms": int(rec["timestamp_ms"]),
        }
        out.append(row)
    return out


def parse_sources(
    usage_files: dict[str, RawSource],
    trace_shards: dict[str, Callable[[], pd.DataFrame]],
    ingest: dict[str, Any],
) -> list[dict[str, Any]]:
    """All sources → one ordered list of candidate rows: files in catalog order, then traces."""
    files_config = ingest.get("files") or {}
    unknown = set(files_config) - set(usage_files)
    if unknown:
        raise ValueError(
            f"ingest.files configures {sorted(unknown)}, which the catalog entry 'usage_files' "
            f"does not list (it has {sorted(usage_files)})."
        )
    max_raw = int(ingest.get("max_raw_chars", 4000))
    rows = []
    for name, source in usage_files.items():
        rows += parse_file_source(source, files_config.get(name), max_raw)
    traces = ingest.get("traces") or {}
    for _, load in sorted(trace_shards.items()):
        rows += parse_trace_rows(
            load(), traces.get("source_name", "mlflow_traces"), traces.get("span_name")
        )
    return rows


# --------------------------------------------------------------------------- cleaning


def holdout_score(prompt_id: str) -> float:
    """Uniform in [0, 1) from the prompt id alone: a prompt's split never depends on other rows."""
    return int(stable_hash(["split", prompt_id], 13), 16) / 16**13


def _check_config(ingest: dict[str, Any]) -> None:
    """Fail on a bad knob before any work, naming the knob."""
    fraction = ingest.get("holdout_fraction", 0.0)
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"ingest.holdout_fraction must be in [0, 1), got {fraction!r}")
    mode = ingest.get("system_prompt_mode", "missing")
    if mode not in ("missing", "replace"):
        raise ValueError(f"ingest.system_prompt_mode must be 'missing' or 'replace', got {mode!r}")
    for knob in ("max_prompt_tokens", "max_prompts"):
        value = ingest.get(knob)
        if value is not None and int(value) < 0:
            raise ValueError(f"ingest.{knob} must be >= 0 or null, got {value!r}")
    kinds = (ingest.get("pii") or {}).get("kinds") or []
    redact_pii("", kinds)  # raises on an unknown kind


def clean_rows(
    rows: list[dict[str, Any]],
    ingest: dict[str, Any],
    count_tokens: TokenCounter,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Normalise, redact, deduplicate, length-filter, cap and split candidate rows.

    Returns ``(prompts, rejects, counts)``. Pure given ``count_tokens``, so it is tested without
    a model; the node passes the configured model's tokenizer.
    """
    _check_config(ingest)
    pii = ingest.get("pii") or {}
    kinds = list(pii.get("kinds") or []) if pii.get("enabled", False) else []
    counts: Counter = Counter()
    redacted: Counter = Counter()
    rejects: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    first_exact: dict[str, str] = {}
    first_norm: dict[str, str] = {}

    def reject(row: dict[str, Any], reason: str, detail: str | None) -> None:
        rejects.append(
            {
                **{k: row[k] for k in ("source", "location", "raw")},
                "reason": reason,
                "detail": detail,
                "_order": row["_order"],
            }
        )

    for order, row in enumerate(rows):
        row = {**row, "_order": order}
        counts[f"source.{row['source']}.read"] += 1
        if row["reason"]:
            reject(row, row["reason"], row["detail"])
            continue
        try:
            messages, dropped = normalize_messages(
                row["messages"],
                ingest.get("system_prompt"),
                ingest.get("system_prompt_mode", "missing"),
            )
        except RowError as err:
            reject(row, err.reason, err.detail)
            continue
        counts["trailing_assistant_removed"] += dropped
        row_redactions: Counter = Counter()
        if kinds:
            for message in messages:
                message["content"], found = redact_pii(message["content"], kinds)
                row_redactions += found
        exact = stable_hash(row["messages"])
        norm = dedup_key(messages)
        if exact in first_exact:
            reject(row, "duplicate_exact", f"same row as {first_exact[exact]}")
            continue
        if norm in first_norm:
            reject(row, "duplicate_normalized", f"same normalised text as {first_norm[norm]}")
            continue
        first_exact[exact] = first_norm[norm] = row["location"]
        if row_redactions:
            redacted.update(row_redactions)
            counts["redacted.rows"] += 1
            row["meta"] = {**row["meta"], "redacted": dict(sorted(row_redactions.items()))}
        kept.append({**row, "messages": messages, "prompt_id": stable_hash(messages)})

    max_tokens = ingest.get("max_prompt_tokens")
    lengths = count_tokens([r["messages"] for r in kept]) if kept else []
    survivors = []
    for row, n in zip(kept, lengths, strict=True):
        row["prompt_tokens"] = int(n)
        if max_tokens and n > int(max_tokens):
            reject(row, "too_long", f"{n} tokens > max_prompt_tokens {max_tokens}")
        else:
            survivors.append(row)

    cap = ingest.get("max_prompts")
    if cap is not None and len(survivors) > int(cap):
        ranked = sorted(survivors, key=lambda r: stable_hash([seed, r["prompt_id"]]))
        chosen = {id(r) for r in ranked[: int(cap)]}
        for row in survivors:
            if id(row) not in chosen:
                reject(row, "sampling_cap", f"max_prompts {cap} (seed {seed})")
        survivors = [r for r in survivors if id(r) in chosen]

    fraction = float(ingest.get("holdout_fraction", 0.0))
    prompts = pd.DataFrame(
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
    rejects.sort(key=lambda r: r["_order"])
    reject_frame = pd.DataFrame(rejects, columns=[*REJECT_COLUMNS, "_order"]).drop(columns="_order")

    reasons = Counter(r["reason"] for r in rejects)
    counts = dict(counts)
    for source, n in Counter(r["source"] for r in survivors).items():
        counts[f"source.{source}.kept"] = n
    counts.update({f"rejected.{k}": v for k, v in reasons.items() if k not in DUPLICATE_REASONS})
    counts.update({f"redacted.{k}": v for k, v in redacted.items()})
    counts.update(
        {
            "read": len(rows),
            "kept": len(prompts),
            "rejected": sum(v for k, v in reasons.items() if k not in DUPLICATE_REASONS),
            "deduplicated": sum(reasons[k] for k in DUPLICATE_REASONS),
            "deduplicated.exact": reasons["duplicate_exact"],
            "deduplicated.normalized": reasons["duplicate_normalized"],
            "split.train": int((prompts["split"] == "train").sum()),
            "split.holdout": int((prompts["split"] == "holdout").sum()),
            "redacted.rows": counts.get("redacted.rows", 0),
        }
    )
    if len(prompts):
        counts["prompt_tokens.mean"] = float(prompts["prompt_tokens"].mean())
        counts["prompt_tokens.max"] = int(prompts["prompt_tokens"].max())
    return prompts, reject_frame, counts


def tokenizer_counter(model: dict[str, Any], batch_size: int = 256) -> TokenCounter:
    """Prompt lengths in tokens of the configured model, chat template and generation header included.

    Only the tokenizer is loaded (not the weights): ingest stays a seconds-long stage.
    """
    tokenizer = load_tokenizer(
        resolve_model_path(model["name_or_path"], model.get("cache_dir", "data/06_models"))
    )

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
            lengths += [len(x) for x in ids]
        return lengths

    return count


def build_prompts(
    rows: list[dict[str, Any]], ingest: dict[str, Any], model: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, float]]]:
    """Node: candidate rows → ``prompts``, ``ingest_rejects``, ``ingest_metrics``.

    Stops the run when nothing usable is left: a TAO round on zero prompts would only fail later,
    further from the cause.
    """
    prompts, rejects, counts = clean_rows(rows, ingest, tokenizer_counter(model), seed)
    if prompts.empty:
        sources = sorted({r["source"] for r in rows}) or ["(no rows at all)"]
        reasons = dict(Counter(rejects["reason"]).most_common())
        examples = "; ".join(
            f"{r.location}: {r.reason} ({r.detail})" for r in rejects.head(3).itertuples()
        )
        raise ValueError(
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
