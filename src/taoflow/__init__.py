"""taoflow: label-free tuning of language models (TAO) as Kedro pipelines tracked in MLflow."""

__version__ = "0.1.0"
