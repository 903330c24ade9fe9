"""``evaluate``: benchmarks, sampling settings, statistics and the best-of-N baseline."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from taoflow.config.base import StrictModel
from taoflow.config.score import ScorerEntry

MODEL_NAME = r"^[A-Za-z0-9_]+$"
LABELED_METRICS = ("accuracy", "pass@1", "maj@k", "pass@k")
LABEL_FREE_METRICS = ("mean_reward", "win_rate")


class TextMetric(StrictModel):
    """A Hugging Face ``evaluate`` metric on the greedy completion vs the reference."""

    name: str = Field(description="metric name or path passed to taoflow.metrics.load_metric")
    key: str | None = Field(None, description="key of the metric's result; None = name")
    column: str | None = Field(None, description="per-prompt column; None = key")


class BenchmarkSpec(StrictModel):
    """One benchmark: where its items come from and which metrics it reports."""

    name: str = Field(pattern=MODEL_NAME, description="report / MLflow metric name")
    kind: Literal["labeled", "label_free"] = "labeled"
    source: str = Field(min_length=1, description="catalog dataset the items are read from")
    enabled: bool = True
    limit: int | None = Field(None, ge=0, description="overrides evaluate.limit when set")
    metrics: list[str] = Field(
        default_factory=list, description="subset of the kind's metrics; empty = all of them"
    )
    text_metrics: list[str | TextMetric] = Field(default_factory=list)
    # labeled benchmarks: columns of the source table (id absent → row number)
    id_field: str = "id"
    prompt_field: str = "question"
    reference_field: str = "answer"
    # label-free benchmarks: the `split` prompts of the source (`prompts`)
    split: str = "holdout"

    @model_validator(mode="after")
    def _known_metrics(self) -> BenchmarkSpec:
        allowed = LABELED_METRICS if self.kind == "labeled" else LABEL_FREE_METRICS
        unknown = [m for m in self.metrics if m not in allowed]
        if unknown:
            raise ValueError(
                f"unknown metrics {unknown} for a {self.kind} benchmark; {list(allowed)}"
            )
        return self

    @property
    def metric_names(self) -> list[str]:
        """The metrics to compute (the configured ones, else every metric of the kind)."""
        if self.metrics:
            return list(self.metrics)
        return list(LABELED_METRICS if self.kind == "labeled" else LABEL_FREE_METRICS)

    def effective_limit(self, default: int | None) -> int | None:
        """This benchmark's item limit: its own when set (even null), else ``evaluate.limit``."""
        return self.limit if "limit" in self.model_fields_set else default

    def identity(self) -> dict[str, Any]:
        """What defines the benchmark's items (the settings a user set plus the kind's defaults)."""
        out = {
            key: getattr(self, key)
            for key in self.model_fields_set
            if key not in ("metrics", "text_metrics")
        }
        out["kind"] = self.kind
        if self.kind == "labeled":
            keys = ("id_field", "prompt_field", "reference_field")
        else:
            keys = ("split",)
        out.update({key: getattr(self, key) for key in keys})
        return out


class BestOfNVariant(StrictModel):
    """One more best-of-N row: the same pick, by its own scorers (and reference answers)."""

    name: str = Field(pattern=MODEL_NAME, description="display name in results and report")
    from_: str | None = Field(
        None, alias="from", description="evaluated model whose samples are picked; None = baseline"
    )
    scorers: list[ScorerEntry] = Field(
        default_factory=list, description="scorer entries as in score.scorers; empty = score's"
    )
    references: str | None = Field(
        None,
        description="extra model whose greedy answers are attached as judge_answer / "
        "judge_confidence columns (the judge's reference answers to the benchmark items)",
    )

    def score_config(self, score: Any) -> Any:
        """``params:score`` with this variant's scorers (the advantage settings kept)."""
        if not self.scorers:
            return score
        raw = score.model_dump(mode="json") if hasattr(score, "model_dump") else dict(score)
        raw["scorers"] = [entry.model_dump(mode="json") for entry in self.scorers]
        return raw


class BestOfNParams(StrictModel):
    """best-of-N: a derived model picking among the ``from`` model's k samples (no generation)."""

    enabled: bool = False
    from_: str | None = Field(
        None, alias="from", description="evaluated model whose samples are picked; None = baseline"
    )
    name: str = Field("best_of_n", description="display name in results and report")
    variants: list[BestOfNVariant] = Field(
        default_factory=list, description="more best-of-N rows, each with its own scorers"
    )

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, variants: list[BestOfNVariant]) -> list[BestOfNVariant]:
        names = [v.name for v in variants]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"duplicate best-of-N variant name(s) {duplicated}")
        return variants


class ExtraModelParams(StrictModel):
    """A model evaluated beside the run's own: any model reference, loaded by a prepare node."""

    model: str = Field(min_length=1, description="model reference (taoflow.models)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    greedy_only: bool = Field(
        False, description="greedy completions only: accuracy, no k samples, no label-free rows"
    )


class EvaluateParams(StrictModel):
    """Every model of the run on the same benchmark items with the same seeds."""

    baseline: str = Field("base", description="model every other model is compared with")
    limit: int | None = Field(None, ge=0, description="first N items of each benchmark; None = all")
    k: int = Field(8, ge=1, description="samples per item")
    temperature: float = 0.8
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(64, ge=1)
    token_budget: int = Field(8192, ge=1, description="sequences × tokens per generation batch")
    shard_size: int = Field(100, ge=1, description="items per resumable output shard")
    n_bootstrap: int = Field(1000, ge=1, description="bootstrap resamples for every CI")
    confidence: float = Field(0.95, gt=0, lt=1)
    tie_rule: Literal["expected", "first", "strict"] = "expected"
    pool_models: bool = Field(True, description="label-free: score all models' samples together")
    report_examples: int = Field(5, description="regressions listed per model in the report")
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    best_of_n: BestOfNParams = BestOfNParams()
    extra_models: dict[str, ExtraModelParams] = Field(
        default_factory=dict, description="display name → a model evaluated beside the run's"
    )

    @field_validator("extra_models")
    @classmethod
    def _extra_names(cls, models: dict[str, ExtraModelParams]) -> dict[str, ExtraModelParams]:
        bad = [name for name in models if not re.match(MODEL_NAME, name)]
        if bad:
            raise ValueError(f"extra model name(s) {bad}: letters, digits, underscores only")
        return models

    def greedy_only(self, model: str) -> bool:
        """Whether ``model`` is an extra model evaluated by its greedy completions alone."""
        extra = self.extra_models.get(model)
        return extra is not None and extra.greedy_only

    @field_validator("benchmarks")
    @classmethod
    def _unique_names(cls, benchmarks: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        names = [b.name for b in benchmarks if b.enabled]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"duplicate benchmark name(s) {duplicated}")
        return benchmarks

    @property
    def enabled_benchmarks(self) -> list[BenchmarkSpec]:
        return [b for b in self.benchmarks if b.enabled]

    def sampling(self) -> dict[str, Any]:
        """The generation settings every model is evaluated with (part of the shard keys)."""
        return {
            "k": self.k,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "token_budget": self.token_budget,
        }
