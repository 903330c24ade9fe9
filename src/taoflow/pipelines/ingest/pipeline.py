"""ingest: usage files + new MLflow traces → ``prompts``, ``ingest_rejects``, ``ingest_metrics``.

Token lengths use ``base_tokenizer``, which ``prepare_base`` writes (the registered ``ingest``
pipeline runs it first).
"""

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.ingest.nodes import build_prompts, take_new_traces
from taoflow.pipelines.ingest.parsing import parse_sources


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                take_new_traces,
                inputs=["ingest_new_traces", "ingest_traces_watermark", "params:ingest.traces"],
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
                inputs=["ingest_rows", "params:ingest", "base_tokenizer", "params:seed"],
                outputs=["prompts", "ingest_rejects", "ingest_metrics"],
                name="build_prompts",
            ),
        ]
    )
