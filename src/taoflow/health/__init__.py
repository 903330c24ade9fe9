"""Label-free health of a policy: signals, the collapse verdict, the promotion gate, a probe, a report.

A label-free reward can be satisfied by a wrong but *consistent* answer (a policy that answers
"7 - 2" with "7" every time earns full majority-vote reward). Nothing in the reward notices; the
signals here do, without labels. The ``health`` pipeline, the registry gate
(:func:`promotion_blocked`) and the report (:func:`health_report`) share one definition.

* :mod:`~taoflow.health.signals` — pure signals per prompt group and per round;
* :mod:`~taoflow.health.trusted` — agreement with a frozen judge's answers, when there is one;
* :mod:`~taoflow.health.verdict` — the collapse detector, :class:`Verdict`, the gate;
* :mod:`~taoflow.health.probe` — samples a policy (the only module that runs a model);
* :mod:`~taoflow.health.report` — the report's Markdown section and figure.
"""

from taoflow.health.probe import DEFAULT_PROBE, probe_policy
from taoflow.health.report import PLOTTED, health_report
from taoflow.health.signals import (
    candidate_answers,
    copies_prompt,
    group_signals,
    health_signals,
    prompt_texts,
)
from taoflow.health.trusted import judge_agreement_by_prompt, trusted_signals
from taoflow.health.verdict import (
    DEFAULT_THRESHOLDS,
    Verdict,
    detect_collapse,
    promotion_blocked,
    threshold_values,
)

__all__ = [
    "DEFAULT_PROBE",
    "DEFAULT_THRESHOLDS",
    "PLOTTED",
    "Verdict",
    "candidate_answers",
    "copies_prompt",
    "detect_collapse",
    "group_signals",
    "health_report",
    "health_signals",
    "judge_agreement_by_prompt",
    "probe_policy",
    "promotion_blocked",
    "prompt_texts",
    "threshold_values",
    "trusted_signals",
]
