"""Usage data (files, MLflow traces) → clean, deduplicated, split ``prompts`` and ``ingest_rejects``."""

from taoflow.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
