"""reward_model: trace log (+ a round's scored candidates) → pairs → ``reward_model`` folder."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from taoflow.config.graph import graph_parameters
from taoflow.config.reward_model import RewardModelParams
from taoflow.pipelines.reward_model.nodes import (
    assemble_pairs,
    feedback_preference_pairs,
    scored_preference_pairs,
    train_reward_model,
)


def create_pipeline(scored: str | None = "round_1.scored", **kwargs) -> Pipeline:
    """``scored``: the scored-candidates dataset to mine top-vs-bottom pairs from (None: feedback only).

    With ``reward_model.pairs.from_scored: false`` the graph has no scored input at all, so the
    stage runs before any round has scored anything (feedback alone).
    """
    settings: RewardModelParams = graph_parameters().get("reward_model") or RewardModelParams()
    if not settings.pairs.from_scored:
        scored = None
    nodes = [
        node(
            feedback_preference_pairs,
            inputs=["ingest_trace_requests", "params:reward_model"],
            outputs="reward_model_feedback_pairs",
            name="feedback_preference_pairs",
        )
    ]
    scored_pairs = "reward_model_scored_pairs"
    if scored:
        nodes.append(
            node(
                scored_preference_pairs,
                inputs=[scored, "prompts", "params:reward_model"],
                outputs=scored_pairs,
                name="scored_preference_pairs",
            )
        )
    nodes += [
        node(
            assemble_pairs,
            inputs={
                "feedback_pairs": "reward_model_feedback_pairs",
                "reward_model": "params:reward_model",
                **({"scored_pairs": scored_pairs} if scored else {}),
            },
            outputs="reward_model_pairs",
            name="assemble_preference_pairs",
        ),
        node(
            train_reward_model,
            inputs=["reward_model_pairs", "params:reward_model", "params:seed", "params:launch"],
            outputs=["reward_model", "reward_model_metrics"],
            name="train_reward_model",
        ),
    ]
    return Pipeline(nodes)
