"""``promote``: the MLflow Model Registry gate for the run's final tuned policy."""

from __future__ import annotations

from pydantic import Field

from taoflow.config.base import StrictModel


class PromoteParams(StrictModel):
    """Which evaluated policy is registered, and what it must beat to become ``champion``."""

    enabled: bool = Field(True, description="register the final policy and alias it")
    model: str | None = Field(None, description="evaluated model to register; None = last tuned")
    benchmark: str | None = Field(None, description="gate benchmark; None = first labeled one")
    metric: str = Field("accuracy", description="accuracy | pass@1 | maj@k | pass@k")
    registered_model_name: str = Field("taoflow-policy", description="MLflow registry name")
    min_ci_low: float = Field(0.0, description="champion only if the paired CI low exceeds this")
