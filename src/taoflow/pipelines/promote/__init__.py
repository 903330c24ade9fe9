"""promote: the MLflow registry gate — register the final tuned policy as champion or challenger."""

from taoflow.pipelines.promote.pipeline import create_pipeline

__all__ = ["create_pipeline"]
