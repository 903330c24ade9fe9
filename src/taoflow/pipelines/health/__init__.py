"""health: label-free signals and the collapse verdict of a round (template + stand-alone round_1)."""

from taoflow.pipelines.health.pipeline import create_pipeline, create_template

__all__ = ["create_pipeline", "create_template"]
