"""Make the configured base model ready: resolve its reference and save it as ``base_model``."""

from taoflow.pipelines.prepare_base.pipeline import create_pipeline

__all__ = ["create_pipeline"]
