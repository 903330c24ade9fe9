"""Which models the evaluate and promote stages see, decided from configuration alone."""

from __future__ import annotations

from typing import Any

from taoflow.config.tao import TaoParams

BASE_MODEL = "base_model"


def configured_models(graph: dict[str, Any]) -> dict[str, str]:
    """Display name → policy dataset: ``base``, ``sft_oracle`` when ``tao.sft_oracle``, then
    ``round_1`` … ``round_k`` for k = ``tao.rounds`` (the order the composed ``tao`` run uses).

    ``graph`` is :func:`taoflow.config.graph.graph_parameters` (validated blocks by name).
    """
    tao: TaoParams = graph.get("tao") or TaoParams()
    models = {"base": BASE_MODEL}
    if tao.sft_oracle:
        models["sft_oracle"] = "sft_oracle.policy"
    for k in range(1, tao.rounds + 1):
        models[f"round_{k}"] = f"round_{k}.policy"
    return models
