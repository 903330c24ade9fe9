"""audit: label-free rewards checked against gold answers, where a gold file exists."""

from taoflow.pipelines.audit.pipeline import create_pipeline, create_template

__all__ = ["create_pipeline", "create_template"]
