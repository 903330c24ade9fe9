"""Promotion: register a tuned policy in the MLflow Model Registry, alias it champion only when it
earned it (decide champion/challenger, register, tag).

Every evaluated final policy is registered once (so nothing a run produced is lost; a policy whose
weights the registry already holds, ``taoflow.policy.fingerprint``, is not registered again and
moves no alias), but the alias
``champion`` — what ``serve`` and users load as ``models:/<name>@champion`` — moves only when the
policy's gate metric beats the current champion (or, before there is one, the base model) with
a *paired* bootstrap CI above ``min_ci_low`` (default 0). Otherwise the version gets
``challenger`` and the run and the version say why.

Pairing needs both models' per-item scores on the same items: the candidate's and the base's
come from this run's evaluation; the champion's were stored with it when it was registered
(``gate/scores.json`` in its run, plus a fingerprint of the benchmark and generation settings
as a version tag). A champion evaluated under a different fingerprint cannot be compared
paired, so the candidate stays challenger and the reason says to re-evaluate.

The tracking and registry URIs are whatever the active MLflow run uses (kedro-mlflow sets them
from ``mlflow.yml``); nothing here reads environment variables.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from taoflow.cards import policy_card
from taoflow.config.evaluate import EvaluateParams
from taoflow.config.promote import PromoteParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import stable_hash
from taoflow.core.lazy import lazy_module
from taoflow.core.stats import paired_comparison
from taoflow.datasets.mlflow_policy import log_policy_model
from taoflow.generation import policy_fingerprint
from taoflow.health import promotion_blocked
from taoflow.models import Policy

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
SCORES_ARTIFACT = "gate/scores.json"
TAG_PREFIX = "taoflow."
# content hash of the registered weights: one registry version per distinct policy
POLICY_FINGERPRINT_TAG = f"{TAG_PREFIX}policy.fingerprint"

mlflow = lazy_module("mlflow")  # imported on first use (taoflow.core.lazy)


@dataclass
class GateDecision:
    """What the gate did and why (saved as a report artifact and as run/version tags)."""

    registered_model: str
    version: str | None
    alias: str | None  # None: nothing registered or moved (disabled, or already registered)
    promoted: bool
    reason: str
    metric: str
    value: float
    compared_with: str
    reference_value: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    model_uri: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Champion:
    """The current champion version and the per-item gate scores stored with it."""

    version: str
    run_id: str | None
    fingerprint: str | None
    scores: dict[str, float] | None


def current_champion(client: MlflowClient, name: str) -> Champion | None:
    """The version holding ``@champion`` (None when the model or alias does not exist yet)."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None
    scores = None
    if version.run_id:
        try:
            stored = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{SCORES_ARTIFACT}")
            scores = {str(k): float(v) for k, v in stored["scores"].items()}
        except Exception:  # noqa: BLE001 - a champion without stored scores is still a champion
            logger.warning("champion %s v%s has no stored gate scores", name, version.version)
    return Champion(
        version=str(version.version),
        run_id=version.run_id,
        fingerprint=version.tags.get(f"{TAG_PREFIX}gate.fingerprint"),
        scores=scores,
    )


def decide(
    candidate: dict[str, float],
    baseline: dict[str, float],
    champion: Champion | None,
    *,
    fingerprint: str,
    metric: str,
    min_ci_low: float = 0.0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    refused: str = "",
) -> dict[str, Any]:
    """Champion or challenger, from per-item gate scores (pure: no MLflow calls).

    Compares ``candidate`` with the champion's stored scores when there is a champion, else with
    ``baseline`` (the base model in this run), on the items both have. ``refused`` (why the health
    guard blocks this policy) keeps it challenger whatever the comparison says.
    """
    if champion is None:
        reference, against = baseline, "base"
    elif champion.scores is None or champion.fingerprint != fingerprint:
        why = "no stored per-item scores" if champion.scores is None else "a different benchmark"
        return {
            "promoted": False,
            "compared_with": f"champion v{champion.version}",
            "reason": (
                f"the current champion v{champion.version} was evaluated on {why} "
                f"(fingerprint {champion.fingerprint} vs {fingerprint}), so no paired comparison "
                "is possible; re-evaluate the champion with this configuration to promote"
                + (f" (also refused by the health guard: {refused})" if refused else "")
            ),
            "reference_value": None,
            "diff": None,
            "ci_low": None,
            "ci_high": None,
            "n": 0,
        }
    else:
        reference, against = champion.scores, f"champion v{champion.version}"
    items = sorted(set(candidate) & set(reference))
    if not items:
        raise ValueError(f"gate: the candidate and {against} share no evaluated items")
    a = [candidate[i] for i in items]
    b = [reference[i] for i in items]
    paired = paired_comparison(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed)
    earned = paired.ci_low > min_ci_low
    promoted = earned and not refused
    interval = f"{paired.diff:+.4f} [{paired.ci_low:+.4f}, {paired.ci_high:+.4f}]"
    reason = f"{metric} vs {against}: paired difference {interval} over {paired.n} items; " + (
        f"CI lower bound above {min_ci_low:g}: promoted"
        if promoted
        else f"CI lower bound above {min_ci_low:g}, but kept as challenger"
        if earned
        else f"CI lower bound not above {min_ci_low:g}: kept as challenger"
    )
    if refused:
        reason = f"refused by the health guard: {refused}; {reason}"
    return {
        "promoted": promoted,
        "compared_with": against,
        "reason": reason,
        "reference_value": sum(b) / len(b),
        "diff": paired.diff,
        "ci_low": paired.ci_low,
        "ci_high": paired.ci_high,
        "n": paired.n,
    }


def _lineage_tags(lineage: dict[str, Any]) -> dict[str, str]:
    tags = {}
    for key, value in sorted(lineage.items()):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        tags[f"{TAG_PREFIX}lineage.{key}"] = text[:5000]
    return tags


def _log_and_register(policy: Policy, name: str, results: dict[str, Any] | None = None) -> str:
    """Log ``policy`` (an MLflow chat model, ``transformers`` flavour) as a new version of ``name``.

    Its model card (``model_card.md`` in the logged model) carries the gate's ``results``.
    """
    info = log_policy_model(
        policy,
        "policy",
        registered_model_name=name,
        model_card=policy_card(policy.lineage, results),
    )
    return str(info.registered_model_version)


LINEAGE_FIELDS = ("name", "base_model", "parent", "round", "algorithm", "lora", "config_hash")


def version_description(
    lineage: dict[str, Any], alias: str, verdict: dict[str, Any], metric: str, value: float
) -> str:
    """The registered version's description: what it is (lineage) and why it got its alias."""
    lines = [f"**@{alias}**: {verdict['reason']}", "", f"- gate metric: {metric} = {value:.4g}"]
    if verdict.get("diff") is not None:
        lines.append(
            f"- vs {verdict['compared_with']}: {verdict['diff']:+.4f} "
            f"[{verdict['ci_low']:+.4f}, {verdict['ci_high']:+.4f}] over {verdict['n']} items"
        )
    lines += ["", "Lineage:", ""]
    known = [k for k in LINEAGE_FIELDS if lineage.get(k) is not None]
    lines += [f"- {key}: `{lineage[key]}`" for key in known]
    for key, entry in sorted(lineage.items()):
        if key.endswith("hashes") and isinstance(entry, dict):
            lines += [f"- {key}.{k}: `{v}`" for k, v in sorted(entry.items())]
    run = mlflow.active_run()
    if run is not None:
        lines += ["", f"Logged by run `{run.info.run_id}` ({run.info.run_name})."]
    return "\n".join(lines)


def _describe_version(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    lineage: dict[str, Any],
    alias: str,
    verdict: dict[str, Any],
    gate_tags: dict[str, str],
) -> None:
    """Tag the version with its lineage and the decision; describe both in its description."""
    tags = {
        **_lineage_tags(lineage),
        **gate_tags,
        f"{TAG_PREFIX}gate.decision": alias,
        f"{TAG_PREFIX}gate.compared_with": verdict["compared_with"],
        f"{TAG_PREFIX}gate.reason": verdict["reason"][:5000],
    }
    for key, text in tags.items():
        client.set_model_version_tag(name, version, key, text)
    metric = gate_tags[f"{TAG_PREFIX}gate.metric"]
    value = float(gate_tags[f"{TAG_PREFIX}gate.value"])
    description = version_description(lineage, alias, verdict, metric, value)
    client.update_model_version(name, version, description=description)


def register_and_gate(
    policy: Policy,
    *,
    name: str,
    candidate_scores: dict[str, float],
    baseline_scores: dict[str, float],
    fingerprint: str,
    metric: str,
    min_ci_low: float = 0.0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    extra_tags: dict[str, str] | None = None,
    health: Any = None,
) -> GateDecision:
    """Register ``policy`` as a new version of ``name`` in the active run; alias it by the gate.

    Logs the model with the ``transformers`` flavour (so both ``mlflow.transformers.load_model``
    and ``mlflow.pyfunc.load_model`` on ``models:/<name>@champion`` give back a generator),
    stores the per-item gate scores with the run (the next gate pairs against them), tags the
    version with the policy's lineage and the decision, and tags the run with the decision.
    ``health`` (round verdicts, see :func:`taoflow.health.promotion_blocked`) can refuse
    ``champion`` to a policy flagged as collapsed, whatever its metric says.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            "The registry gate needs an active MLflow run (kedro-mlflow opens one per `kedro "
            "run`); MLflow tracking is disabled for this pipeline."
        )
    client = mlflow.tracking.MlflowClient()  # the active run's tracking/registry URIs
    weights = policy_fingerprint(policy)
    existing = registered_version(client, name, weights)
    if existing is not None:
        return _already_registered(name, existing, weights, metric, candidate_scores)
    champion = current_champion(client, name)
    blocked, why = promotion_blocked(health) if health is not None else (False, "")
    verdict = decide(
        candidate_scores,
        baseline_scores,
        champion,
        fingerprint=fingerprint,
        metric=metric,
        min_ci_low=min_ci_low,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        refused=why if blocked else "",
    )
    value = sum(candidate_scores.values()) / max(len(candidate_scores), 1)
    mlflow.log_dict(
        {"metric": metric, "fingerprint": fingerprint, "scores": candidate_scores},
        SCORES_ARTIFACT,
    )
    alias = CHAMPION if verdict["promoted"] else CHALLENGER
    results = {**verdict, "metric": metric, "value": value, "decision": alias}
    version = _log_and_register(policy, name, results)
    tags = {
        f"{TAG_PREFIX}gate.metric": metric,
        f"{TAG_PREFIX}gate.value": f"{value:.6g}",
        f"{TAG_PREFIX}gate.fingerprint": fingerprint,
        POLICY_FINGERPRINT_TAG: weights,
        **(extra_tags or {}),
    }
    _describe_version(
        client, name, version, lineage=policy.lineage, alias=alias, verdict=verdict, gate_tags=tags
    )
    client.set_registered_model_alias(name, alias, version)
    mlflow.set_tags(
        {
            f"{TAG_PREFIX}gate.decision": alias,
            f"{TAG_PREFIX}gate.version": f"{name}/{version}",
            f"{TAG_PREFIX}gate.reason": verdict["reason"][:5000],
        }
    )
    logger.info("registry gate: %s v%s → @%s (%s)", name, version, alias, verdict["reason"])
    return GateDecision(
        registered_model=name,
        version=version,
        alias=alias,
        value=value,
        metric=metric,
        model_uri=f"models:/{name}/{version}",
        **{k: verdict[k] for k in ("promoted", "reason", "compared_with", "reference_value")},
        **{k: verdict[k] for k in ("diff", "ci_low", "ci_high", "n")},
    )


def registered_version(client: MlflowClient, name: str, weights: str) -> Any | None:
    """The version of ``name`` already holding a policy with fingerprint ``weights``, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    same = [v for v in versions if (v.tags or {}).get(POLICY_FINGERPRINT_TAG) == weights]
    return min(same, key=lambda v: int(v.version)) if same else None


def _already_registered(
    name: str, version: Any, weights: str, metric: str, scores: dict[str, float]
) -> GateDecision:
    """No new version for a policy the registry holds already (e.g. ``promote`` run twice)."""
    reason = (
        f"this policy (fingerprint {weights[:12]}) is already registered as {name} "
        f"v{version.version}: nothing registered, aliases unchanged"
    )
    mlflow.set_tags(
        {
            f"{TAG_PREFIX}gate.decision": "already_registered",
            f"{TAG_PREFIX}gate.version": f"{name}/{version.version}",
            f"{TAG_PREFIX}gate.reason": reason,
        }
    )
    logger.info("registry gate: %s", reason)
    return GateDecision(
        registered_model=name,
        version=str(version.version),
        alias=None,
        promoted=False,
        reason=reason,
        metric=metric,
        value=sum(scores.values()) / max(len(scores), 1),
        compared_with="",
        reference_value=None,
        diff=None,
        ci_low=None,
        ci_high=None,
        n=0,
        model_uri=f"models:/{name}/{version.version}",
    )


def gate_target(promote: PromoteParams, evaluate: EvaluateParams) -> tuple[str, str]:
    """(benchmark, concrete metric) of the gate: ``maj@k`` → ``maj@<k>``."""
    benchmark = promote.benchmark or next(
        s.name for s in evaluate.enabled_benchmarks if s.kind == "labeled"
    )
    return benchmark, promote.metric.replace("@k", f"@{evaluate.k}")


def gate_fingerprint(
    evaluate: EvaluateParams, task: TaskParams, benchmark: str, items: list[str]
) -> str:
    """What makes two gate scores comparable: benchmark, items, generation and answer settings."""
    spec = next(s for s in evaluate.enabled_benchmarks if s.name == benchmark)
    settings = evaluate.sampling()
    del settings["token_budget"]  # memory, not results
    set_fields = task.model_fields_set
    return stable_hash(
        {
            "benchmark": spec.identity(),
            "items": sorted(items),
            "settings": settings,
            "tie_rule": evaluate.tie_rule,
            "system_prompt": task.system_prompt,
            "answer": task.answer.model_dump(exclude_unset=True)
            if "answer" in set_fields
            else None,
        }
    )


def item_scores(
    per_prompt: pd.DataFrame, benchmark: str, metric: str, model: str
) -> dict[str, float]:
    """Item id → ``model``'s score of ``metric`` on ``benchmark`` (from ``eval_per_prompt``)."""
    bench = per_prompt[per_prompt["benchmark"] == benchmark]
    if metric not in bench.columns:
        raise ValueError(f"gate metric {metric!r} was not computed on benchmark {benchmark!r}")
    rows = bench[bench["model"] == model]
    return {str(i): float(v) for i, v in zip(rows["item_id"], rows[metric], strict=True)}


def gate_report(decision: dict[str, Any] | None) -> str:
    """The gate's decision as a Markdown section (the promote stage's report)."""
    out = ["## Registry gate", ""]
    if not decision:
        out.append("No tuned policy was evaluated: nothing to register.")
    elif decision.get("alias") is None:
        out.append(str(decision.get("reason")))
    else:
        out.append(
            f"`{decision['registered_model']}` version {decision['version']} → "
            f"**@{decision['alias']}**. {decision['reason']}."
        )
    return "\n".join(out) + "\n"


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "POLICY_FINGERPRINT_TAG",
    "Champion",
    "GateDecision",
    "current_champion",
    "decide",
    "gate_fingerprint",
    "gate_report",
    "gate_target",
    "item_scores",
    "register_and_gate",
    "registered_version",
]
