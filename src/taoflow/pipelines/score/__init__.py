"""Score candidates without labels into rewards and advantages (see ``taoflow.scoring``)."""

from taoflow.pipelines.score.pipeline import create_pipeline, create_template

__all__ = ["create_pipeline", "create_template"]
