"""evaluate: every model of the run on the configured benchmarks, with CIs; report; registry gate."""

from taoflow.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
