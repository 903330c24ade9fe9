"""ingest: usage files + new MLflow traces → ``prompts``, ``ingest_rejects``, ``ingest_metrics``."""

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.ingest.nodes import build_prompts, fetch_new_traces, parse_sources


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                fetch_new_traces,
                inputs=["params:ingest.traces", "ingest_traces_watermark"],
                # The trace log is saved before the watermark moves past it.
                outputs=["ingest_trace_requests", "ingest_traces_watermark_next"],
                name="fetch_new_traces",
            ),
            node(
                parse_sources,
                inputs=["usage_files", "ingest_trace_requests", "params:ingest"],
                outputs="ingest_rows",
                name="parse_usage_sources",
            ),
            node(
                build_prompts,
                inputs=["ingest_rows", "params:ingest", "params:model", "params:seed"],
                outputs=["prompts", "ingest_rejects", "ingest_metrics"],
                name="build_prompts",
            ),
        ]
    )
