"""Parsing of the ingest sources: usage files and served traces → candidate rows.

A candidate row carries its ``source``, ``location`` (``file:line`` or trace id) and ``raw`` text,
and either chat ``messages`` (unnormalised) or a reject ``reason`` with ``detail``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from taoflow.config.ingest import FileSourceParams, IngestParams
from taoflow.core.text import RowError, coerce_messages
from taoflow.datasets.usage_files import RawSource

DEFAULT_MAPPING = {"prompt": "prompt", "messages": "messages", "system": "system"}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


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


def _decode_payload(
    source: RawSource, location: str, payload: Any, mapping: dict[str, str | None], max_raw: int
) -> tuple[dict[str, Any], Any]:
    """One located payload → (candidate row, parsed record or ``None`` when already rejected)."""
    if source.format != "jsonl":
        return _row(source.name, location, _json(payload)[:max_raw]), payload
    raw = payload[:max_raw]
    if not payload.strip():
        return _row(source.name, location, raw, reason="empty", detail="blank line"), None
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as err:
        detail = f"{err.msg} at column {err.colno}"
        return _row(source.name, location, raw, reason="invalid_json", detail=detail), None
    if isinstance(value, str):
        value = {mapping["prompt"] or "prompt": value}
    elif isinstance(value, list):
        value = {mapping["messages"] or "messages": value}
    elif not isinstance(value, dict):
        detail = f"a JSON {type(value).__name__}, not an object"
        return _row(source.name, location, raw, reason="invalid_row", detail=detail), None
    return _row(source.name, location, raw), value


def parse_file_source(
    source: RawSource, config: FileSourceParams | None = None, max_raw_chars: int = 4000
) -> list[dict[str, Any]]:
    """Located rows of one usage file → candidate rows (messages or a reject reason each)."""
    config = config or FileSourceParams()
    mapping = {**DEFAULT_MAPPING, **config.mapping.model_dump()}
    out = []
    records: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (row, parsed object)
    for location, payload in source.rows:
        row, value = _decode_payload(source, location, payload, mapping, max_raw_chars)
        out.append(row)
        if value is not None:
            records.append((row, value))
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
        row["meta"].update({f: value[f] for f in config.meta_fields if f in value})
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
    ingest: IngestParams,
) -> list[dict[str, Any]]:
    """Node: all sources → one ordered list of candidate rows: files in catalog order, then traces."""
    unknown = set(ingest.files) - set(usage_files)
    if unknown:
        raise ValueError(
            f"ingest.files configures {sorted(unknown)}, which the catalog entry 'usage_files' "
            f"does not list (it has {sorted(usage_files)})."
        )
    rows = []
    for name, source in usage_files.items():
        rows += parse_file_source(source, ingest.files.get(name), ingest.max_raw_chars)
    for _, load in sorted(trace_shards.items()):
        rows += parse_trace_rows(load(), ingest.traces.source_name, ingest.traces.span_name)
    return rows
