"""Late feedback: ratings given after ingest took a trace reach its prompt on the next run.

Real MLflow store (SQLite under tmp), real traces and assessments, the ingest datasets and nodes.
"""

from __future__ import annotations

import json

import pandas as pd

from taoflow.datasets.mlflow_traces import MlflowTracesDataset
from taoflow.datasets.usage_files import AppendPartitionsDataset, JSONStateDataset
from taoflow.pipelines.ingest.cleaning import clean_rows
from taoflow.pipelines.ingest.nodes import take_new_traces
from taoflow.pipelines.ingest.parsing import parse_sources
from tests.test_ingest import Q, char_tokens, log_chat_trace, params


def test_late_feedback_is_read_on_the_next_run(mlflow_uri, monkeypatch, tmp_path):
    """Feedback logged after ingest took its trace reaches the prompt's meta on the next run."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")  # synchronous export
    from mlflow.entities import AssessmentSource

    watermark_file = tmp_path / "watermark.json"
    state = JSONStateDataset(filepath=str(watermark_file))
    log = AppendPartitionsDataset(path=str(tmp_path / "log"), dataset="pandas.ParquetDataset")
    cfg = params(traces={"enabled": True, "span_name": "chat_completion"})

    def run(window_s: float) -> pd.DataFrame:
        traces = MlflowTracesDataset(
            tracking_uri=mlflow_uri,
            experiment="late",
            model_version_tag="taoflow.model_version",
            watermark_filepath=str(watermark_file),
            feedback_window_s=window_s,
        )
        shards, watermark = take_new_traces(traces.load(), state.load(), cfg.traces)
        if shards:
            log.save(shards)
        state.save(watermark)
        rows = parse_sources({}, log.load(), cfg)
        prompts, _, counts = clean_rows(rows, cfg, char_tokens)
        assert counts["read"] == len(prompts) == counts["source.mlflow_traces.kept"]
        return prompts.assign(meta=[json.loads(m) for m in prompts.meta])

    mlflow.set_experiment("late")
    old = log_chat_trace(Q.format("1 + 1"), "2")
    first = run(3600)
    assert [m["feedback"] for m in first.meta] == [[]]

    def rate(trace_id: str, value) -> None:
        mlflow.log_feedback(
            trace_id=trace_id,
            name="user_feedback",
            value=value,
            source=AssessmentSource(source_type="HUMAN", source_id="late-user"),
        )

    rate(old, False)  # after ingest took the trace: the watermark is past it
    new = log_chat_trace(Q.format("2 + 2"), "4")
    second = run(0)  # no re-fetch window: the late feedback is missed (the old behaviour)
    assert [m["feedback"] for m in second.meta] == [[], []]
    third = run(3600)
    assert third.prompt_id.tolist() == second.prompt_id.tolist()  # no row added or moved
    feedback = {m["trace_id"]: [f["value"] for f in m["feedback"]] for m in third.meta}
    assert feedback == {old: [False], new: []}
    shards = sorted(log.load())
    assert len(shards) == 3 and shards[-1].startswith("feedback-")
    assert run(3600).meta.tolist() == third.meta.tolist()  # nothing newer: no new shard
    assert len(log.load()) == 3
    rate(new, True)
    rate(old, True)  # a second rating of the same trace: both are kept, in order
    feedback = {m["trace_id"]: [f["value"] for f in m["feedback"]] for m in run(3600).meta}
    assert feedback == {old: [False, True], new: [True]}
