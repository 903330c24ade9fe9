"""``tao``: the composed pipeline (``kedro run``); graph-shaping, read when the graph is built."""

from __future__ import annotations

from pydantic import Field

from taoflow.config.base import StrictModel


class TaoParams(StrictModel):
    """What the default run composes around the TAO rounds."""

    rounds: int = Field(1, ge=1, description="generate → score → train rounds")
    sft_oracle: bool = Field(True, description="train and evaluate the labeled SFT yardstick")
    judge_distill: bool = Field(
        False, description="train and evaluate SFT on the judge's answers (judge_references)"
    )
    audit_rewards: bool = Field(True, description="audit each round's rewards against usage_gold")
