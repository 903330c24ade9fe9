"""reward_model: preference pairs from user feedback (and scored candidates) → a TRL reward model."""

from taoflow.pipelines.reward_model.pipeline import create_pipeline

__all__ = ["create_pipeline"]
