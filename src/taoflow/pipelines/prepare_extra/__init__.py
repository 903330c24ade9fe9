"""Make ``evaluate.extra_models`` ready: resolve each reference and save it as ``extra_policy_<name>``."""

from taoflow.pipelines.prepare_extra.pipeline import create_pipeline

__all__ = ["create_pipeline"]
