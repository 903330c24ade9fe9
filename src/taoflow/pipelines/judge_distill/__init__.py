"""judge_distill: SFT on the judge's reference answers to the train prompts (plain distillation)."""

from taoflow.pipelines.judge_distill.pipeline import create_pipeline

__all__ = ["create_pipeline"]
