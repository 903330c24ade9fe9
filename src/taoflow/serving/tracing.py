"""Usage capture: one MLflow trace per answered request, and user feedback on it.

Trace contract (read back by ingest's traces source — keep in sync):

* root span ``chat_completion``; inputs = the OpenAI request body (``messages``, ``max_tokens``,
  ``temperature``, ...); outputs = the OpenAI chat-completion response (``id``, ``choices``,
  ``model``, ``usage``);
* trace tag ``taoflow.model_version``: the model reference or registry version that answered;
* feedback: an assessment named ``user_feedback`` (1.0 thumbs up, 0.0 thumbs down, or a score in
  [0, 1]) from a ``HUMAN`` source.

Spans are created after the answer exists, with the request's real start time, so only answered
requests are recorded (a 429 or a validation error never becomes a half-empty trace) and the
timings are still the true ones.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import mlflow
from mlflow.entities import AssessmentSource, AssessmentSourceType, SpanType
from mlflow.tracking import MlflowClient

from taoflow.core.pii import PII_PLACEHOLDERS, redact_pii

logger = logging.getLogger(__name__)

ROOT_SPAN = "chat_completion"
MODEL_VERSION_TAG = "taoflow.model_version"
FEEDBACK_NAME = "user_feedback"
PII_KINDS = tuple(PII_PLACEHOLDERS)


def redact_exchange(
    request: dict[str, Any], response: dict[str, Any], kinds: tuple[str, ...] = PII_KINDS
) -> tuple[dict, dict, int]:
    """Copies of request and response with PII redacted in every message and choice.

    Uses ingest's redaction, so what serving records and what ingest keeps follow one set of rules.
    """
    request, response = copy.deepcopy(request), copy.deepcopy(response)
    total = 0
    for message in request.get("messages", []):
        message["content"], counts = redact_pii(str(message.get("content", "")), kinds)
        total += sum(counts.values())
    for choice in response.get("choices", []):
        message = choice.get("message") or {}
        if "content" in message:
            message["content"], counts = redact_pii(str(message["content"]), kinds)
            total += sum(counts.values())
    return request, response, total


class TraceRecorder:
    """Writes ``chat_completion`` traces into one experiment and feedback onto them."""

    def __init__(self, experiment: str, model_version: str, redact: bool = True):
        self.model_version = model_version
        self.redact = redact
        client = MlflowClient()
        found = client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found is not None else client.create_experiment(experiment)
        )
        self.experiment = experiment

    def record(
        self,
        request: dict[str, Any],
        response: dict[str, Any],
        *,
        start_ns: int,
        generate_start_ns: int,
        generate_end_ns: int,
        end_ns: int,
        attributes: dict[str, Any] | None = None,
    ) -> str:
        """Record one exchange as a trace; returns its trace id."""
        redactions = 0
        if self.redact:
            request, response, redactions = redact_exchange(request, response)
        root = mlflow.start_span_no_context(
            ROOT_SPAN,
            span_type=SpanType.CHAT_MODEL,
            inputs=request,
            tags={MODEL_VERSION_TAG: self.model_version},
            experiment_id=self.experiment_id,
            start_time_ns=start_ns,
            attributes={"taoflow.pii_redactions": redactions},
        )
        child = mlflow.start_span_no_context(
            "generate",
            span_type=SpanType.LLM,
            parent_span=root,
            start_time_ns=generate_start_ns,
            attributes=attributes or {},
        )
        child.end(end_time_ns=generate_end_ns)
        root.end(outputs=response, end_time_ns=end_ns)
        return root.trace_id

    def flush(self) -> None:
        """Wait for asynchronous trace writes (before shutdown, or before reading back)."""
        mlflow.flush_trace_async_logging()


def trace_exists(trace_id: str) -> bool:
    """Whether the store knows ``trace_id``, waiting for pending async writes if needed."""
    try:
        return mlflow.get_trace(trace_id, silent=True, flush=True) is not None
    except Exception:  # noqa: BLE001 - malformed ids make some stores raise instead of None
        return False


def log_user_feedback(
    trace_id: str, value: float, user: str | None = None, comment: str | None = None
) -> str:
    """Attach a human ``user_feedback`` assessment to a trace; returns the assessment id."""
    assessment = mlflow.log_feedback(
        trace_id=trace_id,
        name=FEEDBACK_NAME,
        value=float(value),
        source=AssessmentSource(
            source_type=AssessmentSourceType.HUMAN, source_id=user or "anonymous"
        ),
        rationale=comment,
    )
    return assessment.assessment_id
