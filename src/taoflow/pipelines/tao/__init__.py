"""tao: the whole label-free loop as one Kedro pipeline (the project's ``__default__``)."""

from taoflow.pipelines.tao.pipeline import create_pipeline

__all__ = ["create_pipeline"]
