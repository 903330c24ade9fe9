"""train: scored candidates + the policy that produced them → a better policy (TRL + PEFT)."""

from taoflow.pipelines.train.pipeline import create_pipeline, create_template

__all__ = ["create_pipeline", "create_template"]
