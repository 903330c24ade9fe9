"""score: ``candidates`` + ``prompts`` → resumable ``score_shards`` → ``scored`` (one round),
metrics and a reward plot."""

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.score.nodes import (
    plan_score_shards,
    plot_rewards,
    score,
    split_scorable,
)

SHARED_INPUTS = {"prompts": "prompts", "score_credentials": "score_credentials"}
SHARED_PARAMETERS = {"params:score": "params:score", "params:task": "params:task"}


def create_template(judgements: str | None = None) -> Pipeline:
    """Un-namespaced round template; ``tao`` instantiates it per round with ``namespace=``.

    ``judgements``: the dataset holding the judge stage's output for the ``judge`` scorer
    (``judge_references``, or ``judgements`` made inside the round); None: no judge.
    """
    inputs = {
        "candidates": "scorable_candidates",
        "prompts": "prompts",
        "config": "params:score",
        "task": "params:task",
        "credentials": "score_credentials",
    }
    if judgements:
        inputs["judgements"] = judgements
    return Pipeline(
        [
            node(
                split_scorable,
                inputs=["candidates", "prompts"],
                outputs=["scorable_candidates", "score_rejects"],
                name="split_scorable",
            ),
            node(
                plan_score_shards,
                inputs=inputs,
                outputs="score_shards",
                name="plan_score_shards",
            ),
            node(
                score,
                inputs={
                    "score_shards": "score_shards",
                    "rejects": "score_rejects",
                    "config": "params:score",
                },
                outputs=["scored", "score_metrics"],
                name="score_candidates",
            ),
            node(plot_rewards, inputs="scored", outputs="reward_plot", name="plot_rewards"),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Stand-alone ``kedro run --pipeline score``: the ``round_1`` instance of the template."""
    return Pipeline(
        create_template(),
        namespace="round_1",
        inputs=SHARED_INPUTS,
        parameters=SHARED_PARAMETERS,
    )
