"""health: a round template (signals + verdict [+ next policy]) and a report pipeline; wiring only."""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Pipeline, node, pipeline

from taoflow.config.graph import graph_parameters
from taoflow.config.health import HealthParams
from taoflow.config.tao import TaoParams
from taoflow.pipelines.health.nodes import (
    build_health_report,
    compute_health,
    probe,
    select_next_policy,
)


def shared_params(template: Pipeline) -> dict[str, str]:
    """The template's parameters, mapped to themselves: shared by every round, not namespaced."""
    return {name: name for name in sorted(template.inputs()) if name.startswith("params:")}


def create_template(
    select_policy: bool = False, probe_policy: bool = False, judge_references: bool = False
) -> Pipeline:
    """Un-namespaced round template.

    Inputs: ``scored`` (candidates of the judged policy), ``prompts``, ``health_reference`` (the
    base's candidates), ``params:health``, ``params:task``. Outputs: ``health``,
    ``health_metrics``. ``select_policy`` adds ``policy`` + ``input_policy`` → ``next_policy``.
    ``probe_policy`` judges ``policy`` itself: it samples it (``params:health.probe``,
    ``params:seed``) into ``health_probe`` and judges that instead of ``scored``; map
    ``health_reference`` to ``health_base_probe`` (:func:`create_reference_probe`) then.
    ``judge_references`` adds that input (the judge stage's reference answers): the verdict then
    also weighs agreement with the judge (``health.thresholds.trusted_*``).
    """
    nodes = []
    judged = "scored"
    if probe_policy:
        nodes.append(
            node(
                probe,
                inputs=["policy", "prompts", "params:health", "params:task", "params:seed"],
                outputs="health_probe",
                name="probe_policy",
            )
        )
        judged = "health_probe"
    inputs = {
        "scored": judged,
        "prompts": "prompts",
        "reference": "health_reference",
        "health": "params:health",
        "task": "params:task",
    }
    if judge_references:
        inputs["judge_references"] = "judge_references"
    nodes.append(
        node(
            compute_health,
            inputs=inputs,
            outputs=["health", "health_metrics"],
            name="compute_health",
        )
    )
    if select_policy:
        nodes.append(
            node(
                select_next_policy,
                inputs=["policy", "input_policy", "health"],
                outputs="next_policy",
                name="select_next_policy",
            )
        )
    return Pipeline(nodes)


def create_reference_probe() -> Pipeline:
    """``base_model`` sampled like every round's probe: the reference for probe-judged rounds."""
    return Pipeline(
        [
            node(
                probe,
                inputs=["base_model", "prompts", "params:health", "params:task", "params:seed"],
                outputs="health_base_probe",
                name="probe_base_model",
            )
        ]
    )


def create_report_pipeline(namespaces: Sequence[str]) -> Pipeline:
    """``{ns}.health`` of every round → ``health_report`` (Markdown) and ``health_plot`` (figure)."""
    return Pipeline(
        [
            node(
                build_health_report,
                inputs=["params:health", *[f"{ns}.health" for ns in namespaces]],
                outputs=["health_report", "health_plot"],
                name="build_health_report",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Stand-alone run: one policy probed and judged against the base model, and its report.

    The policy is the catalog entry ``health.policy`` (default: the last round's,
    ``round_<tao.rounds>.policy``), judged under its own namespace (``round_2.policy`` →
    ``round_2.health``) exactly as the composed run judges a round before the next one.
    """
    graph = graph_parameters()
    health: HealthParams = graph.get("health") or HealthParams()
    tao: TaoParams = graph.get("tao") or TaoParams()
    target = health.policy or f"round_{tao.rounds}.policy"
    namespace = target.rsplit(".", 1)[0] if "." in target else target
    template = create_template(probe_policy=True)
    judged = pipeline(
        template,
        namespace=namespace,
        inputs={"prompts": "prompts", "policy": target, "health_reference": "health_base_probe"},
        parameters=shared_params(template),
    )
    return create_reference_probe() + judged + create_report_pipeline([namespace])
