"""Blocks every stage shares (``conf/base/parameters.yml``): the seed, the model, the task."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from taoflow.config.base import StrictModel

Seed = Annotated[int, Field(ge=0, description="Global seed every per-shard seed derives from.")]


class ModelParams(StrictModel):
    """The model to tune (a model reference) and how it is loaded."""

    name_or_path: str = "embedded"
    cache_dir: str = "data/06_models"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class AnswerParams(StrictModel):
    """How a final answer is read from a completion (:func:`taoflow.core.answers.extract_answer`)."""

    kind: Literal["last_number", "first_number", "boxed", "regex", "json_field", "full"] = (
        "last_number"
    )
    pattern: str | None = None
    field: str | None = None


class TaskParams(StrictModel):
    """How prompts are framed and answers read."""

    name: str = "task"
    system_prompt: str | None = None
    answer: AnswerParams = AnswerParams()
