"""Parsing of the ingest sources: usage files and served traces → candidate rows.

A candidate row carries its ``source``, ``location`` (``file:line`` or trace id) and ``raw`` text,
and either chat ``messages`` (unnormalised) or a reject ``reason`` with ``detail``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from taoflow.config.ingest import FileSourceParams, IngestParams
from taoflow.core.ids import stable_hash
from taoflow.core.pii import redact_pii
from taoflow.core.text import RowError, coerce_messages, normalize_text
from taoflow.datasets.mlflow_traces import FEEDBACK_SHARD_PREFIX, empty_traces
from taoflow.datasets.usage_files import RawSource, RowProblem
from taoflow.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MAPPING = {"prompt": "prompt", "messages": "messages", "system": "system"}
RAW_MARGIN = 256  # characters kept past max_raw_chars until redaction, so no PII is cut in half


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
        raise UserError(
            f"Usage source '{source.name}' ({source.path}): mapped column(s) {wanted} not found; "
            f"the file has {sorted(columns)}. Fix ingest.files.{source.name}.mapping."
        )


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            depth = max(depth, level)
            stack += [(c, level + 1) for c in children if isinstance(c, dict | list)]
    return depth


def _stored_text(text: Any, max_chars: int, kinds: list[str]) -> str:
    """Raw text as ingest stores it: PII-redacted, cut (``RAW_MARGIN`` past ``max_chars``;
    cleaning cuts to ``max_chars``) and valid UTF-8."""
    text = text if isinstance(text, str) else _json(text)
    text = text[: max_chars + RAW_MARGIN].encode("utf-8", "backslashreplace").decode("utf-8")
    return redact_pii(text, kinds)[0] if kinds else text


def pii_kinds(ingest: IngestParams) -> list[str]:
    """The PII kinds to redact ([] when redaction is off)."""
    return list(ingest.pii.kinds) if ingest.pii.enabled else []


def _check_encodable(value: Any) -> None:
    """Lone surrogates (``"\\ud800"`` in JSON) cannot be hashed or stored: reject the row."""
    try:
        _json(value).encode("utf-8")
    except UnicodeEncodeError as err:
        raise RowError("invalid_text", f"{err.reason} at character {err.start}") from None


def _decode_payload(
    source: RawSource, location: str, payload: Any, mapping: dict[str, str | None], ingest: Any
) -> tuple[dict[str, Any], Any]:
    """One located payload → (candidate row, parsed record or ``None`` when already rejected)."""
    limits, max_raw, kinds = ingest.limits, ingest.max_raw_chars, pii_kinds(ingest)

    def reject(raw: Any, reason: str, detail: str) -> tuple[dict[str, Any], None]:
        return _row(
            source.name, location, _stored_text(raw, max_raw, kinds), reason=reason, detail=detail
        ), None

    if isinstance(payload, RowProblem):
        return reject(payload.raw, payload.reason, payload.detail)
    text = payload if source.format == "jsonl" else _json(payload)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_line_bytes:
        return reject(
            text, "too_large", f"{size} bytes > limits.max_line_bytes {limits.max_line_bytes}"
        )
    if source.format != "jsonl":
        _check_encodable(payload)
        return _row(source.name, location, _stored_text(text, max_raw, kinds)), payload
    if not payload.strip():
        return reject(payload, "empty", "blank line")
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as err:
        return reject(payload, "invalid_json", f"{err.msg} at column {err.colno}")
    except RecursionError:
        return reject(
            payload,
            "too_deep",
            f"nesting deeper than limits.max_json_depth {limits.max_json_depth}",
        )
    depth = json_depth(value)
    if depth > limits.max_json_depth:
        return reject(
            payload, "too_deep", f"nesting {depth} > limits.max_json_depth {limits.max_json_depth}"
        )
    if isinstance(value, str):
        value = {mapping["prompt"] or "prompt": value}
    elif isinstance(value, list):
        value = {mapping["messages"] or "messages": value}
    elif not isinstance(value, dict):
        return reject(payload, "invalid_row", f"a JSON {type(value).__name__}, not an object")
    return _row(source.name, location, _stored_text(payload, max_raw, kinds)), value


def _record_to_row(
    row: dict[str, Any], value: dict[str, Any], mapping: dict[str, Any], config: Any, ingest: Any
) -> None:
    """Fill ``row`` with the record's messages and meta, or its reject reason (never raises)."""
    try:
        messages = _messages_from_record(value, mapping)
        if isinstance(messages, list) and len(messages) > ingest.limits.max_messages:
            raise RowError(
                "too_many_messages",
                f"{len(messages)} messages > limits.max_messages {ingest.limits.max_messages}",
            )
        meta = {"location": row["location"]}
        meta.update({f: value[f] for f in config.meta_fields if f in value})
        _check_encodable([messages, meta])
    except RowError as err:
        row["reason"], row["detail"] = err.reason, err.detail
        return
    except Exception as err:  # noqa: BLE001 - one row must never stop the run
        row["reason"], row["detail"] = "row_error", f"{type(err).__name__}: {err}"
        return
    row["messages"], row["meta"] = messages, meta


def _isolated(
    source: RawSource, location: str, payload: Any, mapping: dict[str, Any], ingest: Any
) -> tuple[dict[str, Any], Any]:
    """``_decode_payload`` where any exception becomes a ``row_error`` reject of that row."""
    try:
        return _decode_payload(source, location, payload, mapping, ingest)
    except Exception as err:  # noqa: BLE001 - one row must never stop the run
        text = payload if isinstance(payload, str) else repr(payload)
        raw = _stored_text(text, ingest.max_raw_chars, pii_kinds(ingest))
        detail = f"{type(err).__name__}: {err}"
        return _row(source.name, location, raw, reason="row_error", detail=detail), None


def parse_file_source(
    source: RawSource, config: FileSourceParams | None = None, ingest: IngestParams | None = None
) -> list[dict[str, Any]]:
    """Located rows of one usage file (or directory) → candidate rows (messages or a reason)."""
    config = config or FileSourceParams()
    ingest = ingest or IngestParams()
    mapping = {**DEFAULT_MAPPING, **config.mapping.model_dump()}
    out = []
    for part in source.files():
        records: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (row, parsed object)
        for location, payload in part.rows:
            row, value = _isolated(part, location, payload, mapping, ingest)
            out.append(row)
            if value is not None:
                records.append((row, value))
        if part.columns is not None and part.rows:
            _check_mapping(part, mapping, part.columns)
        elif records:
            _check_mapping(part, mapping, {key for _, value in records for key in value})
        for row, value in records:
            _record_to_row(row, value, mapping, config, ingest)
    return out


def _text(rec: dict[str, Any], key: str, default: str) -> str:
    """A JSON-text column of the trace log; missing (None, NaN) reads as ``default``."""
    value = rec.get(key)
    return value if isinstance(value, str) and value else default


def _trace_row(rec: dict[str, Any], row: dict[str, Any], span_name: str | None) -> None:
    """Fill a trace's candidate row with messages and meta, or raise ``RowError``."""
    if span_name and rec.get("root_span") != span_name:
        raise RowError("invalid_row", f"root span {rec.get('root_span')!r} is not {span_name!r}")
    try:
        request = json.loads(_text(rec, "request", "null"))
    except json.JSONDecodeError as err:
        raise RowError("invalid_json", str(err)) from None
    except RecursionError:
        raise RowError("too_deep", "request nesting too deep to parse") from None
    if not isinstance(request, dict) or "messages" not in request:
        raise RowError("missing_field", "request has no 'messages'")
    messages = coerce_messages(request["messages"])
    try:
        response = json.loads(_text(rec, "response", "null"))
    except (json.JSONDecodeError, RecursionError):
        response = None  # the served answer is optional meta; the request is the prompt
    served = None
    if isinstance(response, dict):
        try:
            served = response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            served = None
    try:
        feedback = json.loads(_text(rec, "feedback", "[]"))
    except (json.JSONDecodeError, RecursionError):
        raise RowError("invalid_json", "feedback is not JSON") from None
    meta = {
        "trace_id": rec["trace_id"],
        "served_response": served,
        "model_version": rec.get("model_version"),
        "feedback": feedback,
        "timestamp_ms": int(rec["timestamp_ms"]),
    }
    _check_encodable([messages, meta])
    row["messages"], row["meta"] = messages, meta


def parse_trace_rows(
    frame: pd.DataFrame,
    source: str,
    span_name: str | None,
    max_raw_chars: int = 4000,
    kinds: list[str] | None = None,
) -> list[dict]:
    """Accumulated trace-log rows → candidate rows; the meta carries what ``feedback`` scoring needs.

    Each trace is isolated: any exception rejects that trace (by id), never the run.
    """
    out = []
    for rec in frame.to_dict(orient="records"):
        raw = _stored_text(_text(rec, "request", ""), max_raw_chars, kinds or [])
        row = _row(source, str(rec.get("trace_id")), raw)
        try:
            _trace_row(rec, row, span_name)
        except RowError as err:
            row["reason"], row["detail"] = err.reason, err.detail
        except Exception as err:  # noqa: BLE001 - one trace must never stop the run
            row["reason"], row["detail"] = "row_error", f"{type(err).__name__}: {err}"
        out.append(row)
    return out


def merged_trace_log(trace_shards: dict[str, Callable[[], pd.DataFrame]]) -> pd.DataFrame:
    """The accumulated trace log in shard order, each trace's feedback taken from its newest
    ``feedback-`` shard (feedback given after the trace was first taken)."""
    frames, updates = [], {}
    for name, load in sorted(trace_shards.items()):
        frame = load()
        if name.startswith(FEEDBACK_SHARD_PREFIX):
            updates.update(zip(frame["trace_id"], frame["feedback"], strict=True))
        elif not frame.empty:
            frames.append(frame)
    if not frames:
        return empty_traces()
    log = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if updates:
        log = log.assign(
            feedback=[updates.get(t, f) for t, f in zip(log.trace_id, log.feedback, strict=True)]
        )
    return log


def protect_rows(rows: list[dict[str, Any]], kinds: list[str]) -> None:
    """Redact PII in each row's messages before the rows are stored (``ingest_rows``).

    Cleaning normalises and then redacts; doing the same here, in the same order, leaves it
    nothing to change (both steps are idempotent), so prompts are as before. The exact-duplicate
    key and the redaction counts are taken from the text as read and carried along.
    """
    if not kinds:
        return
    for row in rows:
        messages = row.get("messages")
        if not isinstance(messages, list):
            continue
        row["exact_key"] = stable_hash(messages)
        found: Counter = Counter()
        protected = []
        for message in messages:
            content, counts = redact_pii(normalize_text(message["content"]), kinds)
            found += counts
            protected.append({**message, "content": content})
        row["messages"] = protected
        row["redactions"] = dict(found)


def parse_sources(
    usage_files: dict[str, RawSource],
    trace_shards: dict[str, Callable[[], pd.DataFrame]],
    ingest: IngestParams,
) -> list[dict[str, Any]]:
    """Node: all sources → one ordered list of candidate rows: files in catalog order, then traces."""
    unknown = set(ingest.files) - set(usage_files)
    if unknown:
        raise UserError(
            f"ingest.files configures {sorted(unknown)}, which the catalog entry 'usage_files' "
            f"does not list (it has {sorted(usage_files)})."
        )
    rows = []
    for name, source in usage_files.items():
        rows += parse_file_source(source, ingest.files.get(name), ingest)
    empty = [f.path for source in usage_files.values() for f in source.files() if not f.rows]
    for path in empty:
        logger.warning("ingest: usage file %s has no rows.", path)
    traces = ingest.traces
    rows += parse_trace_rows(
        merged_trace_log(trace_shards),
        traces.source_name,
        traces.span_name,
        ingest.max_raw_chars,
        pii_kinds(ingest),
    )
    protect_rows(rows, pii_kinds(ingest))
    if not rows:
        named = ", ".join(empty) or "(no usage file configured)"
        raise UserError(
            f"ingest: no input rows at all: {named} empty and no served traces; add usage rows "
            f"to the files of the catalog entry 'usage_files'."
        )
    return rows
