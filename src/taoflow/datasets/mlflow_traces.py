"""``MlflowTracesDataset``: the served requests logged to MLflow after the ingest watermark.

The serve stage logs every answered request as an MLflow trace. Reading them is I/O, so it
lives here rather than in a node: the ``ingest`` pipeline gets the new traces as a DataFrame and
moves the watermark itself (a pure node), so the watermark only advances once the fetched rows
are saved to the accumulating trace log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from tqdm.auto import tqdm

from taoflow.datasets.usage_files import JSONStateDataset

logger = logging.getLogger(__name__)

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
    "feedback_updated_ms",
]
# Shards of the trace log that only carry newer feedback for traces taken before; their names
# sort after the timestamped shards of new traces, so the log's row order never changes.
FEEDBACK_SHARD_PREFIX = "feedback-"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def trace_to_row(trace: Any, experiment: str, model_version_tag: str) -> dict[str, Any]:
    """One MLflow ``Trace`` → one row of the accumulated trace log (JSON strings: parquet-safe)."""
    from mlflow.entities import Feedback

    spans = list(getattr(trace.data, "spans", None) or [])
    root = next((s for s in spans if s.parent_id is None), None)
    assessments = [a for a in (trace.info.assessments or []) if isinstance(a, Feedback)]
    feedback = [
        {
            "name": a.name,
            "value": getattr(a, "value", None),
            "source": getattr(a.source, "source_type", None) if a.source else None,
            "rationale": a.rationale,
        }
        for a in assessments
    ]
    updated = [
        int(getattr(a, "last_update_time_ms", None) or getattr(a, "create_time_ms", None) or 0)
        for a in assessments
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
        "feedback_updated_ms": max(updated, default=0),
    }


def empty_traces() -> pd.DataFrame:
    return pd.DataFrame(columns=TRACE_COLUMNS)


class MlflowTracesDataset(AbstractDataset[None, pd.DataFrame]):
    """Read-only: traces of ``experiment`` newer than the watermark file, oldest first.

    The watermark (per experiment) is the newest trace timestamp taken plus the trace ids at that
    timestamp, so traces sharing a millisecond are neither lost nor read twice. Feedback arrives
    after a request was served, often after ingest took it: traces up to
    ``feedback_window_s`` older than the watermark are read again, and those already taken come
    back (once) when they carry feedback newer than the watermark's ``feedback_ms``. The frame's
    ``attrs["experiment_id"]`` names the experiment the rows came from. No experiment yet (nothing
    was served) loads as an empty frame.
    """

    def __init__(
        self,
        *,
        experiment: str,
        watermark_filepath: str,
        tracking_uri: str | None = None,
        model_version_tag: str = "",
        page_size: int = 500,
        max_traces: int | None = None,
        feedback_window_s: float = 0,
        metadata: dict[str, Any] | None = None,
    ):
        self._experiment = experiment
        self._watermark = JSONStateDataset(filepath=watermark_filepath)
        self._watermark_filepath = watermark_filepath
        self._tracking_uri = tracking_uri
        self._model_version_tag = model_version_tag
        self._page_size = int(page_size)
        self._max_traces = max_traces
        self._feedback_window_ms = int(float(feedback_window_s) * 1000)
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self._tracking_uri)
        found = client.get_experiment_by_name(self._experiment)
        if found is None:
            logger.info(
                "Traces source: no experiment %r in %s yet; nothing to ingest.",
                self._experiment,
                self._tracking_uri,
            )
            return empty_traces()
        state = (self._watermark.load() or {}).get(self._experiment) or {}
        rows = self._search(client, found.experiment_id, state)
        if not rows:
            return empty_traces()
        frame = pd.DataFrame(rows, columns=TRACE_COLUMNS)
        frame = frame.sort_values(["timestamp_ms", "trace_id"], kind="stable").reset_index(
            drop=True
        )
        if self._max_traces:
            frame = frame.head(int(self._max_traces))
        frame.attrs["experiment_id"] = found.experiment_id
        return frame

    def _search(self, client: Any, experiment_id: str, state: dict[str, Any]) -> list[dict]:
        """Page through traces from the feedback window on: new ones, and taken ones whose
        feedback changed since the last fetch (see the class docstring)."""
        since = int(state.get("timestamp_ms", 0))
        seen = set(state.get("trace_ids", []))
        feedback_ms = int(state.get("feedback_ms", 0))
        start = max(since - self._feedback_window_ms, 0) if since else 0
        limit = self._max_traces
        rows: list[dict[str, Any]] = []
        n_new, token = 0, None
        with tqdm(desc=f"traces from {self._experiment}", unit="trace") as bar:
            while True:
                page = client.search_traces(
                    locations=[experiment_id],
                    filter_string=f"trace.timestamp_ms >= {start}",
                    order_by=["timestamp_ms ASC"],
                    max_results=self._page_size,
                    page_token=token,
                )
                for trace in page:
                    ts, trace_id = trace.info.timestamp_ms, trace.info.trace_id
                    taken = ts < since or (ts == since and trace_id in seen)
                    if taken and not self._feedback_window_ms:
                        continue
                    row = trace_to_row(trace, self._experiment, self._model_version_tag)
                    if taken and row["feedback_updated_ms"] <= feedback_ms:
                        continue
                    n_new += not taken
                    rows.append(row)
                bar.update(len(page))
                token = page.token
                if not token or not len(page) or (limit and n_new >= limit):
                    break
        return rows

    def save(self, data: None) -> None:
        raise DatasetError("MlflowTracesDataset is read-only: MLflow traces are written by serve.")

    def _describe(self) -> dict[str, Any]:
        return {
            "tracking_uri": self._tracking_uri,
            "experiment": self._experiment,
            "watermark_filepath": self._watermark_filepath,
        }
