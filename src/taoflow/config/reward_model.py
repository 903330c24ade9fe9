"""``reward_model``: preference pairs from user feedback (+ a round's scored candidates) → a
reward model trained with TRL ``RewardTrainer``."""

from __future__ import annotations

from pydantic import Field

from taoflow.config.base import StrictModel


class RewardPairsParams(StrictModel):
    """Where preference pairs come from and how they are split."""

    from_feedback: bool = Field(True, description="answers to one prompt users rated apart")
    from_scored: bool = Field(True, description="best vs worst scored candidates of a prompt")
    feedback_name: str = Field("user_feedback", description="assessment name `taoflow serve` logs")
    min_feedback_gap: float = Field(0.5, description="min difference of mean user scores")
    min_reward_gap: float = Field(0.5, description="min reward difference for a scored pair")
    max_pairs_per_prompt: int = Field(2, ge=1, description="cap, so no prompt dominates")
    eval_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="share of prompts (by hash) held out for pair accuracy"
    )


class RewardTrainingParams(StrictModel):
    """TRL ``RewardConfig`` knobs (CPU: bf16 off, no checkpointing)."""

    num_train_epochs: int | float = 2
    learning_rate: float = 5.0e-5
    per_device_train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_decay: float = 0.0
    max_length: int = Field(256, ge=1, description="longer pairs are counted as too_long")
    use_margin: bool = Field(False, description="subtract the pair's score gap inside the loss")
    center_rewards_coefficient: float | None = Field(None, description="e.g. 0.01: mean near 0")
    logging_steps: int = Field(10, ge=1)
    progress: bool = Field(True, description="tqdm bar while training")


class RewardModelParams(StrictModel):
    """The whole ``params:reward_model`` block."""

    base_model: str = Field(
        "minilm", description="minilm (shipped offline) or a sequence-classification base"
    )
    min_pairs: int = Field(4, ge=1, description="fewer pairs: a clear error, not a weak model")
    pairs: RewardPairsParams = RewardPairsParams()
    training: RewardTrainingParams = RewardTrainingParams()
