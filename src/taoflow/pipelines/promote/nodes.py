"""The ``promote`` stage's one node: the only place that writes the MLflow Model Registry."""

from __future__ import annotations

from typing import Any

import pandas as pd

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.promote import PromoteParams
from taoflow.core.ids import derive_seed
from taoflow.evaluation.benchmarks import as_task
from taoflow.models import Policy
from taoflow.promotion import (
    gate_fingerprint,
    gate_report,
    gate_target,
    item_scores,
    register_and_gate,
)


def promote_policy(
    policy: Policy,
    per_prompt: pd.DataFrame,
    promote: PromoteParams,
    evaluate: EvaluateParams,
    task: Any,
    *,
    seed: int,
    model_name: str,
    **health: Any,
) -> tuple[dict[str, Any], str]:
    """Register the final policy and alias it ``champion`` or ``challenger`` (:mod:`taoflow.promotion`).

    It talks to MLflow itself: registry aliases depend on what the registry already holds, which
    no catalog dataset models; it uses the active run's URIs. ``health`` (one keyword per round,
    e.g. ``round_1=<verdict>``) lets the health guard refuse ``champion`` to a collapsed policy.
    The paired comparison uses the evaluation's bootstrap settings and seed, so the gate quotes
    the report's CI.
    """
    if not promote.enabled:
        decision = {
            "alias": None,
            "promoted": False,
            "reason": "registry gate disabled (promote.enabled)",
        }
        return decision, gate_report(decision)
    benchmark, metric = gate_target(promote, evaluate)
    candidate = item_scores(per_prompt, benchmark, metric, model_name)
    baseline = item_scores(per_prompt, benchmark, metric, evaluate.baseline)
    result = register_and_gate(
        policy,
        name=promote.registered_model_name,
        candidate_scores=candidate,
        baseline_scores=baseline,
        fingerprint=gate_fingerprint(evaluate, as_task(task), benchmark, list(candidate)),
        metric=f"{benchmark}/{metric}",
        min_ci_low=promote.min_ci_low,
        n_resamples=evaluate.n_bootstrap,
        confidence=evaluate.confidence,
        # the report's bootstrap seed (and sorted item order): the gate quotes the report's CI
        seed=derive_seed(seed, "bootstrap", benchmark, metric),
        extra_tags={"taoflow.evaluated_as": model_name},
        health=health or None,
    )
    decision = result.as_dict()
    return decision, gate_report(decision)
