"""The ``ingest:`` block (``conf/base/parameters_ingest.yml``): how usage rows become ``prompts``.

Where the rows come from (file paths, the MLflow store holding served requests) is catalog
configuration (``catalog_ingest.yml``); this block holds what to do with them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from taoflow.config.base import StrictModel
from taoflow.core.pii import PII_PLACEHOLDERS


class ColumnMapping(StrictModel):
    """Field/column names of a usage file; ``null`` switches a field off.

    A row is a chat if ``messages`` is present, else a plain prompt from ``prompt`` (+ ``system``).
    """

    prompt: str | None = "prompt"
    messages: str | None = "messages"
    system: str | None = "system"


class FileSourceParams(StrictModel):
    """How to read one file source of the catalog entry ``usage_files`` (by its name)."""

    mapping: ColumnMapping = ColumnMapping()
    meta_fields: list[str] = Field(
        default_factory=list, description="Extra fields copied into each prompt's meta."
    )


class TraceParams(StrictModel):
    """What becomes of the served requests read from MLflow (catalog: ``ingest_new_traces``)."""

    enabled: bool = True
    span_name: str | None = Field(
        "chat_completion", description="Root span of a served request; other traces are rejected."
    )
    source_name: str = Field("mlflow_traces", description="The `source` value of these prompts.")


class PiiParams(StrictModel):
    """PII redaction, applied before anything is stored or hashed."""

    enabled: bool = True
    kinds: list[str] = Field(default_factory=lambda: ["email", "phone", "card"])

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - set(PII_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown PII kind(s) {unknown}; valid: {sorted(PII_PLACEHOLDERS)}")
        return kinds


class LimitParams(StrictModel):
    """Sizes past which one row is rejected instead of parsed, so no row can stop the run."""

    max_line_bytes: int = Field(
        1_048_576, ge=1, description="A longer JSONL line or CSV/parquet row is rejected."
    )
    max_json_depth: int = Field(64, ge=1, description="Deeper nesting of a row is rejected.")
    max_messages: int = Field(256, ge=1, description="A chat with more turns is rejected.")


class IngestParams(StrictModel):
    """Knobs of the ingest stage."""

    files: dict[str, FileSourceParams] = Field(
        default_factory=dict, description="Per file source of `usage_files`, by name."
    )
    traces: TraceParams = TraceParams()
    system_prompt: str | None = Field(None, description="Fixed system turn; null: none.")
    system_prompt_mode: Literal["missing", "replace"] = Field(
        "missing",
        description="missing: add it to rows without a system turn; replace: drop rows' own.",
    )
    max_prompt_tokens: int | None = Field(
        256, ge=0, description="Longer prompts (chat template included) are rejected as too_long."
    )
    pii: PiiParams = PiiParams()
    max_prompts: int | None = Field(
        None, ge=0, description="Keep at most this many prompts (seeded choice); null: all."
    )
    holdout_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of prompts in the holdout split."
    )
    max_raw_chars: int = Field(4000, ge=0, description="Rejects keep this much of the raw row.")
    limits: LimitParams = LimitParams()
