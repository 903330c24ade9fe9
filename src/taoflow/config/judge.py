"""``judge``: a frozen model stronger than the policy answers (or grades) the prompts, so the
``judge`` scorer can reward agreement with it instead of with the policy's own majority."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from taoflow.config.base import StrictModel

DEFAULT_VERDICT_SYSTEM = "You are a strict grader. Reply with one word."
DEFAULT_VERDICT_TEMPLATE = (
    "Question:\n{prompt}\n\nProposed final answer: {answer}\n\n"
    "Is the proposed final answer {correct} or {incorrect}? Reply with one word: "
    "{correct} or {incorrect}."
)


class JudgeHttpParams(StrictModel):
    """An OpenAI-compatible endpoint serving the judge (vLLM, llama.cpp server, a hosted API)."""

    url: str | None = Field(None, description="base URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name the server expects")
    credentials_key: str = Field("judge", description="entry of judge_credentials with api_key")
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    concurrency: int = Field(4, ge=1)


class JudgePromptParams(StrictModel):
    """How the judge is asked: the reference system prompt, the verdict template and labels."""

    system_prompt: str | None = Field(None, description="reference mode; null: the task's")
    verdict_system: str | None = DEFAULT_VERDICT_SYSTEM
    verdict_template: str = Field(
        DEFAULT_VERDICT_TEMPLATE, description="uses {prompt}, {answer}, {correct}, {incorrect}"
    )
    correct: str = Field("correct", min_length=1)
    incorrect: str = Field("incorrect", min_length=1)


class JudgeParams(StrictModel):
    """The whole ``params:judge`` block. Field order is part of shard ids: append, never reorder."""

    enabled: bool = Field(False, description="add the judge stage to the graph")
    model: str = Field("embedded-judge", description="a model reference, like model.name_or_path")
    cache_dir: str = "data/06_models"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    backend: Literal["transformers", "http"] = "transformers"
    http: JudgeHttpParams = JudgeHttpParams()
    mode: Literal["reference", "verdict"] = "reference"
    samples: int = Field(1, ge=1, description="1: greedy; k: majority of k samples")
    temperature: float = Field(0.7, gt=0, description="sampling temperature when samples > 1")
    max_new_tokens: int = Field(32, ge=1)
    shard_size: int = Field(32, ge=1, description="mean items per resumable shard")
    token_budget: int = Field(16384, ge=1, description="per batch: rows × (longest + new tokens)")
    prompt: JudgePromptParams = JudgePromptParams()

    @model_validator(mode="after")
    def _http_needs_url(self) -> JudgeParams:
        if self.enabled and self.backend == "http" and not self.http.url:
            raise ValueError("backend 'http' needs judge.http.url")
        return self

    @property
    def name(self) -> str:
        """The judge's name in the rows it writes (the endpoint's model, or the reference)."""
        if self.backend == "http":
            return str(self.http.model or self.http.url)
        return self.model
