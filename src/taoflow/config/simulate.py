"""``simulate``: the continuous-improvement simulator (``benchmarks/simulate.py``, ``make simulate``).

Not part of any pipeline: read by :mod:`taoflow.simulate` when it drives serve → usage →
``kedro run`` cycles in a workspace of its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from taoflow.config.base import StrictModel


class PoolParams(StrictModel):
    """Where simulated users' prompts come from: a reasoning-gym task under a seed of its own."""

    dataset: str = Field("chain_sum", description="reasoning-gym dataset name")
    seed: int = Field(2026, description="differs from the shipped usage (1234) and benchmark (999)")
    config: dict[str, Any] = Field(
        default_factory=lambda: {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1},
        description="the dataset's own generator options",
    )


class FeedbackParams(StrictModel):
    """How simulated users rate answers: a checker that knows the answer, but users err and tire."""

    coverage: float = Field(0.3, ge=0.0, le=1.0, description="share of answers that get feedback")
    noise: float = Field(0.1, ge=0.0, le=1.0, description="probability a thumb is flipped")
    comment_share: float = Field(
        0.2, ge=0.0, le=1.0, description="share of feedback with a comment"
    )
    late_share: float = Field(
        0.2, ge=0.0, le=1.0, description="share of feedback sent the next day, before that ingest"
    )


class SimulateParams(StrictModel):
    """The whole ``params:simulate`` block."""

    seed: int = Field(0, description="seeds traffic: prompt order, request seeds, feedback draws")
    cycles: int = Field(3, ge=1, description="serve → usage → kedro run cycles")
    prompts_per_cycle: int = Field(64, ge=1, description="new prompts users send each day")
    samples_per_prompt: int = Field(
        4, ge=1, description="answers each prompt gets (users asking again, new seed each)"
    )
    batch_size: int = Field(8, ge=1, description="requests in flight at once")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="users' sampling temperature")
    max_tokens: int = Field(32, ge=1, description="max_tokens of each request")
    pool: PoolParams = PoolParams()
    feedback: FeedbackParams = FeedbackParams()
    feedback_reward_model: bool = Field(
        True, description="train a reward model from feedback and score with it (false: ablation)"
    )
    reward_model_weight: float = Field(1.0, description="its weight beside the configured scorers")
    workspace: str = Field(
        "data/09_simulate", description="runs happen in <workspace>/<name>: a project copy"
    )
    kedro_params: dict[str, Any] = Field(
        default_factory=dict, description="extra --params for every cycle's kedro run"
    )
