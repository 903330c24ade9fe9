"""``generate``: candidate completions per train prompt, spread over named sampling strategies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from taoflow.config.base import StrictModel


class StrategyParams(StrictModel):
    """One exploration strategy: sampling settings plus an optional prompt variant.

    The field order is part of each shard's id (resume keys hash it): append, never reorder.
    """

    weight: float = Field(ge=0, description="share of each prompt's candidates (0 disables)")
    temperature: float = Field(ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1 = off)")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0 = off)")
    max_new_tokens: int = Field(48, ge=1, description="completion length cap in tokens")
    system_prompt: str | None = Field(
        None, description="replaces the system turn (None: the prompt's, else the task's)"
    )
    instruction: str | None = Field(None, description="appended to the last user turn")
    view: str | None = Field(None, description="a task.views name: answer that rewrite")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class GenerateParams(StrictModel):
    """How many candidates per train prompt, how the work is sharded, and with which strategies."""

    backend: Literal["transformers", "vllm"] = "transformers"
    num_candidates: int = Field(8, ge=1, description="completions per train prompt")
    shard_size: int = Field(32, ge=1, description="prompts per resumable shard")
    token_budget: int = Field(
        16384, ge=1, description="per batch: sequences × (longest prompt + max_new_tokens)"
    )
    strategies: dict[str, StrategyParams] = Field(
        description="name → strategy; candidates are spread over them by weight"
    )

    @field_validator("strategies")
    @classmethod
    def _some_weight(cls, value: dict[str, StrategyParams]) -> dict[str, StrategyParams]:
        if not value:
            raise ValueError("needs at least one strategy")
        if sum(s.weight for s in value.values()) <= 0:
            raise ValueError("at least one strategy needs a positive weight")
        return value
