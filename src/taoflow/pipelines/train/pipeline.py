"""train: ``scored`` + ``input_policy`` → ``policy`` (round template + stand-alone round 1)."""

from kedro.pipeline import Pipeline, node, pipeline

from taoflow.pipelines.train.nodes import build_train_examples, train

SHARED_INPUTS = {"prompts": "prompts"}
SHARED_PARAMETERS = {
    "params:train": "params:train",
    "params:seed": "params:seed",
    "params:task": "params:task",
    "params:score": "params:score",
    "params:reuse": "params:reuse",
    "params:launch": "params:launch",
}


def create_template(reference: bool = False, **kwargs) -> Pipeline:
    """The un-namespaced round template; ``tao`` instantiates it once per round.

    ``reference``: the training node also takes ``reference_policy`` (DPO's fixed reference,
    ``train.dpo_reference: initial``); off, the graph is the one without that option.
    """
    extra = {"reference_policy": "reference_policy"} if reference else {}
    return Pipeline(
        [
            node(
                build_train_examples,
                inputs=["scored", "prompts", "params:train", "params:task"],
                outputs=["train_examples", "train_rejects", "train_data_metrics"],
                name="build_train_examples",
            ),
            node(
                train,
                inputs={
                    "train_examples": "train_examples",
                    "scored": "scored",
                    "prompts": "prompts",
                    "input_policy": "input_policy",
                    "train": "params:train",
                    "seed": "params:seed",
                    "task": "params:task",
                    "score": "params:score",
                    "reuse": "params:reuse",
                    "launch": "params:launch",
                    **extra,
                },
                outputs=["policy", "train_metrics"],
                name="train_policy",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Stand-alone ``kedro run --pipeline train``: round 1, from ``base_model`` and round 1's scores."""
    return pipeline(
        create_template(),
        namespace="round_1",
        inputs={**SHARED_INPUTS, "input_policy": "base_model"},
        parameters=SHARED_PARAMETERS,
    )
