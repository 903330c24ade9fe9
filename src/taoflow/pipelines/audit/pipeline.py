"""audit: ``scored`` + ``prompts`` + ``usage_gold`` → ``reward_audit`` table and metrics (one round).

Also ``scorer_audit`` (every scorer against gold), ``train_audit`` (the examples training
learned from, against gold) and the ``audit_report``. The label-free
``signal_quality`` estimate (:func:`create_signal_template`) needs no gold: ``tao`` composes it
into every round, beside training. Composed into ``tao`` per round when ``tao.audit_rewards`` is
on; stand-alone (``kedro run --pipeline audit``) it audits the persisted ``round_1.scored``.
"""

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.audit.nodes import (
    assess_signal_quality,
    audit_rewards,
    audit_scorers,
    audit_training_data,
    build_audit_report,
)

SHARED_INPUTS = {"prompts": "prompts", "usage_gold": "usage_gold"}
SHARED_PARAMETERS = {"params:audit": "params:audit", "params:task": "params:task"}
SIGNAL_PARAMETERS = {"params:train": "params:train", "params:task": "params:task"}


def create_template() -> Pipeline:
    """Un-namespaced round template; ``tao`` instantiates it per round with ``namespace=``."""
    return Pipeline(
        [
            node(
                audit_rewards,
                inputs=["scored", "prompts", "usage_gold", "params:audit", "params:task"],
                outputs=["reward_audit", "reward_audit_metrics"],
                name="audit_rewards",
            ),
            node(
                audit_scorers,
                inputs=["scored", "prompts", "usage_gold", "params:audit", "params:task"],
                outputs=["scorer_audit", "scorer_audit_metrics"],
                name="audit_scorers",
            ),
            node(
                audit_training_data,
                inputs=["train_examples", "scored", "prompts", "usage_gold", "params:task"],
                outputs=["train_audit", "train_audit_metrics"],
                name="audit_training_data",
            ),
            node(
                build_audit_report,
                inputs=["scorer_audit", "signal_quality", "train_audit"],
                outputs="audit_report",
                name="build_audit_report",
            ),
        ],
        tags="audit",
    )


def create_signal_template() -> Pipeline:
    """Un-namespaced: the label-free signal estimate of a round's ``scored`` (no gold)."""
    return Pipeline(
        [
            node(
                assess_signal_quality,
                inputs=["scored", "params:train", "params:task"],
                outputs=["signal_quality", "signal_quality_metrics"],
                name="assess_signal_quality",
            )
        ],
        tags="audit",
    )


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        create_template() + create_signal_template(),
        namespace="round_1",
        inputs=SHARED_INPUTS,
        parameters={**SHARED_PARAMETERS, **SIGNAL_PARAMETERS},
    )
