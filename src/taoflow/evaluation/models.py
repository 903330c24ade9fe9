"""Which models the evaluate and promote stages see, decided from configuration alone."""

from __future__ import annotations

from typing import Any

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.tao import TaoParams

BASE_MODEL = "base_model"


def configured_models(graph: dict[str, Any]) -> dict[str, str]:
    """Display name → policy dataset: ``base``, ``sft_oracle`` when ``tao.sft_oracle``,
    ``judge_distill`` when ``tao.judge_distill``, then ``round_1`` … ``round_k`` for
    k = ``tao.rounds`` (the order the composed ``tao`` run uses).

    ``graph`` is :func:`taoflow.config.graph.graph_parameters` (validated blocks by name).
    """
    tao: TaoParams = graph.get("tao") or TaoParams()
    models = {"base": BASE_MODEL}
    if tao.sft_oracle:
        models["sft_oracle"] = "sft_oracle.policy"
    if tao.judge_distill:
        models["judge_distill"] = "judge_distill.policy"
    for k in range(1, tao.rounds + 1):
        models[f"round_{k}"] = f"round_{k}.policy"
    return models


def extra_model_datasets(params: EvaluateParams) -> dict[str, str]:
    """``evaluate.extra_models``: display name → the dataset ``prepare_extra`` saves it as."""
    return {name: f"extra_policy_{name}" for name in params.extra_models}
