"""The shape stage metrics take on their way to MLflow (through kedro-mlflow datasets)."""

from __future__ import annotations

import math


def mlflow_metrics(
    values: dict[str, float | int | None], prefix: str = "", step: int = 0
) -> dict[str, dict[str, float]]:
    """Plain ``{name: number}`` → the shape ``MlflowMetricsHistoryDataset`` saves; drops None/NaN.

    Stage nodes return this as their ``*_metrics`` output; the catalog logs it to the run.
    ``prefix`` is the stage (``generate.tokens_per_s``); ``step`` is the round, so the same
    metric of successive rounds forms one MLflow history instead of overwriting itself.
    """
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        value = float(value)
        if math.isnan(value):
            continue
        out[f"{prefix}.{name}" if prefix else name] = {"value": value, "step": step}
    return out
