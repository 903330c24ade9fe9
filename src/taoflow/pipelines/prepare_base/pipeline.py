"""prepare_base: model reference → ``base_model`` and its tokenizer ``base_tokenizer``."""

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.prepare_base.nodes import prepare_base_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                prepare_base_model,
                inputs="params:model",
                outputs=["base_model", "base_tokenizer", "base_model_metrics"],
                name="prepare_base_model",
            )
        ]
    )
