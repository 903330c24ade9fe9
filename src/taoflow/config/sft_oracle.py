"""``sft_oracle``: the labeled baseline — SFT on the train prompts' gold answers at TAO's budget.

Its ``trainer`` / ``rft`` / ``lora`` blocks override ``params:train``'s key by key and are
validated by the same models (TRL's field names, the same unknown-key errors).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from taoflow.config.base import StrictModel
from taoflow.config.train import LoraParams, RFTParams, TrainerParams, TrainParams

TRAINER_ALGORITHM = "rft"  # the SFTTrainer path of taoflow.training: prompt + completion rows


class SupervisedBaselineParams(StrictModel):
    """What an answer-source baseline (gold, judge) teaches and its training overrides.

    Shared by ``sft_oracle`` (gold answers) and ``judge_distill`` (the judge's answers): the
    same example builder and trainer, only the answer source differs.
    """

    completion_template: str = Field("{answer}", description="the assistant turn; {answer} = gold")
    output_dir: str = Field(
        "data/06_models/checkpoints/sft_oracle", description="checkpoints, apart from TAO's"
    )
    trainer: TrainerParams = TrainerParams()
    rft: RFTParams = RFTParams()
    lora: LoraParams = LoraParams()

    @field_validator("completion_template")
    @classmethod
    def _has_answer(cls, value: str) -> str:
        if "{answer}" not in value:
            raise ValueError(f"completion_template {value!r} must contain '{{answer}}'")
        return value

    def train_settings(self, train: TrainParams) -> TrainParams:
        """``params:train`` with the ``rft`` algorithm, this output_dir and these overrides.

        Overrides apply key by key over the train block's values (only keys set here count), so
        the oracle trains with TAO's budget unless told otherwise.
        """
        merged = train.model_dump(exclude_unset=True)
        merged["algorithm"] = TRAINER_ALGORITHM
        merged["output_dir"] = self.output_dir
        for block in ("trainer", "rft", "lora"):
            override = getattr(self, block).model_dump(exclude_unset=True)
            merged[block] = {**merged.get(block, {}), **override}
        return TrainParams.model_validate(merged)


class SftOracleParams(SupervisedBaselineParams):
    """How a train prompt finds its gold answer, what it is taught, and its training overrides."""

    match: Literal["exact", "embedded"] = Field(
        "embedded", description="exact: the message is the gold question; embedded: or wraps one"
    )
