"""tao: ingest → rounds × (generate → score → train → health) → evaluate → promote, as one graph.

Beside TAO, the same run trains the ``sft_oracle`` baseline (SFT on the gold answers: what labels
would buy at the same budget) and evaluates ``best_of_n`` (the base model's samples picked by the
same scorers: the test-time compute TAO distils), so one report compares all of them.

With gold answers for the usage prompts (``usage_gold``), each round's rewards are also audited
against them (``tao.audit_rewards``): how often the label-free signal was right, never used to
train.

Each round is the same template instantiated under its own namespace (``round_1``, …), so
kedro-viz shows rounds as collapsible groups and every intermediate gets its own catalog entry
through dataset factories. Round ``k`` starts from round ``k-1``'s ``next_policy``: its trained
policy, or — when the health guard judged that policy collapsed — the policy it started from.

The number of rounds is read while the graph is built (Kedro builds pipelines before nodes see
``params:``), from the running session's config loader (:mod:`taoflow.config`): set
``tao.rounds`` in an environment (``kedro run --env two_rounds``) or on the command line
(``kedro run --params tao.rounds=2``).
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Pipeline, pipeline

from taoflow.config.graph import graph_parameters
from taoflow.config.judge import JudgeParams
from taoflow.config.tao import TaoParams
from taoflow.config.train import TrainParams
from taoflow.pipelines.audit.pipeline import SHARED_PARAMETERS as AUDIT_PARAMETERS
from taoflow.pipelines.audit.pipeline import SIGNAL_PARAMETERS
from taoflow.pipelines.audit.pipeline import create_signal_template as signal_template
from taoflow.pipelines.audit.pipeline import create_template as audit_template
from taoflow.pipelines.evaluate.pipeline import create_pipeline as evaluate_pipeline
from taoflow.pipelines.generate.pipeline import create_template as generate_template
from taoflow.pipelines.health.pipeline import (
    create_reference_probe,
    create_report_pipeline,
    shared_params,
)
from taoflow.pipelines.health.pipeline import create_template as health_template
from taoflow.pipelines.ingest.pipeline import create_pipeline as ingest_pipeline
from taoflow.pipelines.judge.pipeline import create_prepare as judge_prepare
from taoflow.pipelines.judge.pipeline import create_references as judge_references
from taoflow.pipelines.judge.pipeline import create_verdict_template as judge_verdicts
from taoflow.pipelines.judge_distill.pipeline import create_pipeline as judge_distill_pipeline
from taoflow.pipelines.prepare_base.pipeline import create_pipeline as prepare_base_pipeline
from taoflow.pipelines.prepare_extra.pipeline import create_pipeline as prepare_extra_pipeline
from taoflow.pipelines.promote.pipeline import create_pipeline as promote_pipeline
from taoflow.pipelines.score.pipeline import create_template as score_template
from taoflow.pipelines.sft_oracle.pipeline import create_pipeline as sft_oracle_pipeline
from taoflow.pipelines.train.pipeline import create_template as train_template

BASE = "base_model"


def round_template(judge: JudgeParams | None = None, reference: bool = False) -> Pipeline:
    """One round, un-namespaced: ``input_policy`` → candidates → scored → policy → next_policy.

    With ``judge.enabled`` the score node also takes the judge's output: the run's
    ``judge_references`` (reference mode) or the round's own ``judgements`` (verdict mode); in
    reference mode health weighs the probe's agreement with those references too.
    ``reference``: training also reads ``reference_policy`` (DPO's fixed reference).
    """
    judge = judge or JudgeParams()
    judgements = None
    verdicts = Pipeline([])
    if judge.enabled:
        judgements = "judgements" if judge.mode == "verdict" else "judge_references"
        verdicts = judge_verdicts() if judge.mode == "verdict" else verdicts
    return (
        generate_template()
        + verdicts
        + score_template(judgements)
        + train_template(reference=reference)
        + health_template(
            select_policy=True,
            probe_policy=True,
            judge_references=judge.enabled and judge.mode == "reference",
        )
    )


def create_round(
    k: int,
    input_policy: str,
    judge: JudgeParams | None = None,
    reference_policy: str | None = None,
) -> Pipeline:
    """Round ``k`` under namespace ``round_k``, starting from the catalog entry ``input_policy``.

    ``reference_policy`` (a catalog entry, the base model) is wired as DPO's fixed reference;
    None leaves the template without that input.
    """
    template = round_template(judge, reference=reference_policy is not None)
    free = {name for name in template.inputs() if not name.startswith("params:")}
    inputs = {name: name for name in free}
    inputs.update(input_policy=input_policy, health_reference="health_base_probe")
    if reference_policy is not None:
        inputs["reference_policy"] = reference_policy
    return pipeline(
        template, namespace=f"round_{k}", inputs=inputs, parameters=shared_params(template)
    )


def create_audit(k: int) -> Pipeline:
    """Round ``k``'s rewards checked against ``usage_gold`` (read-only; never feeds training)."""
    template = audit_template()
    inputs = {"prompts": "prompts", "usage_gold": "usage_gold"}
    return pipeline(template, namespace=f"round_{k}", inputs=inputs, parameters=AUDIT_PARAMETERS)


def create_signal(k: int) -> Pipeline:
    """Round ``k``'s label-free signal estimate (no gold), logged before training reads scored."""
    return pipeline(signal_template(), namespace=f"round_{k}", parameters=SIGNAL_PARAMETERS)


def create_pipeline(rounds: int | None = None, **kwargs: Any) -> Pipeline:
    params = graph_parameters()
    tao: TaoParams = params.get("tao") or TaoParams()
    train: TrainParams = params.get("train") or TrainParams()
    judge: JudgeParams = params.get("judge") or JudgeParams()
    rounds = tao.rounds if rounds is None else rounds
    composed = ingest_pipeline() + prepare_base_pipeline() + create_reference_probe()
    if judge.enabled:  # a frozen judge stronger than the policy, for the `judge` scorer
        composed += judge_prepare()
        if judge.mode == "reference":
            composed += judge_references()
    models, health = {"base": BASE}, {}
    if tao.sft_oracle:
        # the labeled-training yardstick; evaluated beside TAO, never gated
        composed += sft_oracle_pipeline()
        models["sft_oracle"] = "sft_oracle.policy"
    if tao.judge_distill:
        # plain distillation of the judge (reads judge_references); evaluated, never gated
        composed += judge_distill_pipeline()
        models["judge_distill"] = "judge_distill.policy"
    policy = BASE
    namespaces = []
    for k in range(1, rounds + 1):
        namespace = f"round_{k}"
        # round 1 trains the base model itself: its own reference already
        reference = BASE if k > 1 and train.reference_is_initial else None
        composed += create_round(k, policy, judge, reference) + create_signal(k)
        if tao.audit_rewards:
            composed += create_audit(k)
        policy = f"{namespace}.next_policy"
        models[namespace] = f"{namespace}.policy"
        health[namespace] = f"{namespace}.health"
        namespaces.append(namespace)
    composed += create_report_pipeline(namespaces)
    # extra models (evaluate.extra_models, e.g. the judge) are evaluated, never promoted
    composed += prepare_extra_pipeline()
    return (
        composed + evaluate_pipeline(models=models) + promote_pipeline(models=models, health=health)
    )
