"""sft_oracle: the labeled baseline — SFT on the train prompts' gold answers at TAO's budget."""

from taoflow.pipelines.sft_oracle.pipeline import create_pipeline

__all__ = ["create_pipeline"]
