"""prepare_extra: one node per ``evaluate.extra_models`` entry → ``extra_policy_<name>``.

Empty when no extra model is configured (the default). The graph follows the configuration.
"""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.graph import graph_parameters
from taoflow.evaluation.models import extra_model_datasets
from taoflow.pipelines.prepare_extra.nodes import prepare_extra_model


def create_pipeline(**kwargs) -> Pipeline:
    params: EvaluateParams = graph_parameters().get("evaluate") or EvaluateParams()
    nodes = [
        node(
            update_wrapper(partial(prepare_extra_model, name=name), prepare_extra_model),
            inputs=["params:evaluate", "params:model"],
            outputs=[dataset, f"extra_model_{name}_metrics"],
            name=f"prepare_extra_model_{name}",
        )
        for name, dataset in extra_model_datasets(params).items()
    ]
    return Pipeline(nodes, tags="prepare_extra")
