"""audit: ``scored`` + ``prompts`` + ``usage_gold`` → ``reward_audit`` table and metrics (one round).

Composed into ``tao`` per round when ``tao.audit_rewards`` is on; stand-alone
(``kedro run --pipeline audit``) it audits the persisted ``round_1.scored``.
"""

from kedro.pipeline import Pipeline, node

from taoflow.pipelines.audit.nodes import audit_rewards

SHARED_INPUTS = {"prompts": "prompts", "usage_gold": "usage_gold"}
SHARED_PARAMETERS = {"params:audit": "params:audit", "params:task": "params:task"}


def create_template() -> Pipeline:
    """Un-namespaced round template; ``tao`` instantiates it per round with ``namespace=``."""
    return Pipeline(
        [
            node(
                audit_rewards,
                inputs=["scored", "prompts", "usage_gold", "params:audit", "params:task"],
                outputs=["reward_audit", "reward_audit_metrics"],
                name="audit_rewards",
            )
        ],
        tags="audit",
    )


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        create_template(), namespace="round_1", inputs=SHARED_INPUTS, parameters=SHARED_PARAMETERS
    )
