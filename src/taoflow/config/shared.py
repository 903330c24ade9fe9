"""Blocks every stage shares (``conf/base/parameters.yml``): the seed, the model, the task."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

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


class ViewParams(StrictModel):
    """A semantically equivalent rewrite of a prompt's last user turn (same correct answer).

    ``reorder_terms``: the signed terms of its one ``a + b - c`` expression in reverse order
    (the sum is unchanged; a prompt without exactly one such expression is left as is).
    ``template``: ``template`` with ``{question}`` replaced by the user turn (a paraphrase).
    """

    kind: Literal["reorder_terms", "template"]
    template: str | None = Field(None, description="template kind: text with {question}")

    @model_validator(mode="after")
    def _template(self) -> ViewParams:
        if self.kind == "template" and "{question}" not in (self.template or ""):
            raise ValueError("a template view needs 'template' containing {question}")
        if self.kind != "template" and self.template is not None:
            raise ValueError(f"'template' belongs to template views, not {self.kind}")
        return self


class TaskParams(StrictModel):
    """How prompts are framed and answers read."""

    name: str = "task"
    system_prompt: str | None = None
    answer: AnswerParams = AnswerParams()
    views: dict[str, ViewParams] = Field(
        default_factory=dict, description="name → rewrite a generate strategy may answer"
    )
