"""A frozen judge stronger than the policy answers (or grades) the prompts for the ``judge`` scorer."""

from taoflow.pipelines.judge.pipeline import create_pipeline

__all__ = ["create_pipeline"]
