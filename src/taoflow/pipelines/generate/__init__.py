"""Candidate generation: N diverse completions per train prompt from the current policy."""

from taoflow.pipelines.generate.pipeline import create_pipeline, create_template

__all__ = ["create_pipeline", "create_template"]
