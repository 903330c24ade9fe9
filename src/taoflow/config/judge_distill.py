"""``judge_distill``: SFT on the judge's reference answers to the train prompts (plain distillation).

The same example builder and trainer as ``sft_oracle`` (:class:`SupervisedBaselineParams`); the
answers come from ``judge_references`` instead of the gold table.
"""

from __future__ import annotations

from pydantic import Field

from taoflow.config.sft_oracle import SupervisedBaselineParams


class JudgeDistillParams(SupervisedBaselineParams):
    """Which judge reference rows are taught, and the training overrides."""

    judge: str | None = Field(None, description="keep rows of this judge only; None = any")
    mode: str | None = Field(None, description="keep rows of this mode only; None = any")
    min_confidence: float = Field(
        0.0, ge=0, le=1, description="drop references whose judge_confidence is below this"
    )
    output_dir: str = Field(
        "data/06_models/checkpoints/judge_distill", description="checkpoints, apart from TAO's"
    )
