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


class VllmEngineParams(StrictModel):
    """The vLLM engine behind ``backend: vllm`` (one per model folder per process).

    Engine settings only: they change memory and speed, not which tokens a seed draws, so they
    are not part of any shard key.
    """

    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        description="share of GPU memory (CPU platform: of RAM) for weights + KV cache",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over")
    max_model_len: int | None = Field(
        None, ge=1, description="context window (prompt + new tokens); None: the model's"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype in the engine; auto: the policy's (model.dtype)"
    )
    enforce_eager: bool = Field(
        False, description="no torch.compile / CUDA graphs: faster start, slower decode"
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="sequences decoded together; None: vLLM's"
    )
    max_num_batched_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens one engine step may schedule; None: vLLM's. On CPU keep it at least "
        "max_num_seqs x the longest prompt, so no seeded prompt is prefilled in pieces",
    )

    def engine_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``vllm.LLM`` (unset optional ones keep vLLM's default)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


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
    vllm: VllmEngineParams = Field(
        VllmEngineParams(), description="the engine of backend: vllm (generate, evaluate, judge)"
    )
    decode: Literal["generate", "steps", "static", "compiled"] = Field(
        "generate",
        description="transformers backend's decoding loop: generate (model.generate per chunk), "
        "steps (own loop, same outputs), static (own loop, static KV cache), compiled (static + "
        "torch.compile); part of the shard key when not generate",
    )

    @field_validator("strategies")
    @classmethod
    def _some_weight(cls, value: dict[str, StrategyParams]) -> dict[str, StrategyParams]:
        if not value:
            raise ValueError("needs at least one strategy")
        if sum(s.weight for s in value.values()) <= 0:
            raise ValueError("at least one strategy needs a positive weight")
        return value
