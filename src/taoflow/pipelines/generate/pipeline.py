"""generate: ``prompts`` × ``input_policy`` → ``candidates`` (round template + stand-alone round 1)."""

from kedro.pipeline import Pipeline, node, pipeline

from taoflow.pipelines.generate.nodes import collect_candidates, generate_candidates

SHARED_PARAMETERS = {
    "params:generate": "params:generate",
    "params:seed": "params:seed",
    "params:task": "params:task",
}


def create_template(**kwargs) -> Pipeline:
    """The un-namespaced round template; ``tao`` instantiates it once per round."""
    return Pipeline(
        [
            node(
                generate_candidates,
                inputs=["prompts", "input_policy", "params:generate", "params:seed", "params:task"],
                outputs="candidate_shards",
                name="generate_candidates",
            ),
            node(
                collect_candidates,
                inputs="candidate_shards",
                outputs=["candidates", "generate_metrics"],
                name="collect_candidates",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Stand-alone ``kedro run --pipeline generate``: round 1 from the base model."""
    return pipeline(
        create_template(),
        namespace="round_1",
        inputs={"prompts": "prompts", "input_policy": "base_model"},
        parameters=SHARED_PARAMETERS,
    )
