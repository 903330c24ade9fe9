"""Usage capture: one MLflow trace per answered request, and user feedback on it.

Trace contract (read back by ingest's traces source — keep in sync):

* root span ``chat_completion``; inputs = the OpenAI request body (``messages``, ``max_tokens``,
  ``temperature``, ...); outputs = the OpenAI chat-completion response (``id``, ``choices``,
  ``model``, ``usage``);
* trace tag ``taoflow.model_version``: the model reference or registry version that answered;
  tags ``taoflow.model.name`` (registered name, or the reference), ``taoflow.model.version`` and
  ``taoflow.model.alias`` (the registry version and the alias it was served by, when it came from
  the registry), so traces can be searched per model version; a registry version logged as an
  MLflow 3 LoggedModel also links its traces to it (trace metadata ``mlflow.modelId``);
* feedback: an assessment named ``user_feedback`` (1.0 thumbs up, 0.0 thumbs down, or a score in
  [0, 1]) from a ``HUMAN`` source; at most one per (trace, user), a new vote replaces the old.

Spans are created after the answer exists, with the request's real start time, so only answered
requests are recorded (a 429 or a validation error never becomes a half-empty trace) and the
timings are still the true ones.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import AssessmentSource, AssessmentSourceType, SpanType
from mlflow.tracking import MlflowClient

from taoflow.core.pii import PII_PLACEHOLDERS, redact_pii

logger = logging.getLogger(__name__)

ROOT_SPAN = "chat_completion"
MODEL_VERSION_TAG = "taoflow.model_version"
MODEL_NAME_TAG = "taoflow.model.name"
MODEL_NUMBER_TAG = "taoflow.model.version"
MODEL_ALIAS_TAG = "taoflow.model.alias"
MODEL_ID_METADATA = "mlflow.modelId"  # MLflow's own link from a trace to a LoggedModel
FEEDBACK_NAME = "user_feedback"
USER_KEY_METADATA = "taoflow.user_key"
PII_KINDS = tuple(PII_PLACEHOLDERS)
_FEEDBACK_LOCK = threading.Lock()  # check-then-write of one vote per (trace, user)


# OpenTelemetry's default id generator draws trace ids from Python's global `random`, which a
# pipeline run seeds (seed_everything): a process that runs kedro and then serves (the simulator,
# a notebook) would hand out the same ids again, and a new trace would overwrite an old one in the
# store and take its feedback. MLflow's isolated generator draws from a private Random instead.
# Read when MLflow first builds its tracer provider; set it to "false" to restore the default.
ISOLATED_TRACE_IDS = "MLFLOW_TRACE_USE_ISOLATED_RANDOM_ID_GENERATOR"
os.environ.setdefault(ISOLATED_TRACE_IDS, "true")


def _redact_strings(value: Any, kinds: tuple[str, ...]) -> tuple[Any, int]:
    """``value`` with PII redacted in every string it holds (dict values, list items)."""
    if isinstance(value, str):
        text, counts = redact_pii(value, kinds)
        return text, sum(counts.values())
    if isinstance(value, dict):
        total = 0
        out = {}
        for key, item in value.items():
            out[key], n = _redact_strings(item, kinds)
            total += n
        return out, total
    if isinstance(value, list):
        items = [_redact_strings(item, kinds) for item in value]
        return [i for i, _ in items], sum(n for _, n in items)
    return value, 0


def redact_exchange(
    request: dict[str, Any], response: dict[str, Any], kinds: tuple[str, ...] = PII_KINDS
) -> tuple[dict, dict, int]:
    """Copies of request and response with PII redacted in every request field and every choice.

    Every string the client sent is redacted (messages, ``model``, any other field), since any of
    them may carry what a user typed; the response's own ids and version stay as they are. Uses
    ingest's redaction, so what serving records and what ingest keeps follow one set of rules.
    """
    request, total = _redact_strings(copy.deepcopy(request), kinds)
    response = copy.deepcopy(response)
    for choice in response.get("choices", []):
        message = choice.get("message") or {}
        if "content" in message:
            message["content"], counts = redact_pii(str(message["content"]), kinds)
            total += sum(counts.values())
    return request, response, total


def model_trace_tags(model_version: str, lineage: Mapping[str, Any] | None = None) -> dict:
    """Trace tags naming the served model, from ``load_served_policy``'s lineage.

    A registry version gets its registered name, version number and the alias it was served by
    (``tag.`taoflow.model.version` = '3'`` then finds what version 3 answered); any other model
    is named by its reference.
    """
    lineage = lineage or {}
    tags = {
        MODEL_VERSION_TAG: model_version,
        MODEL_NAME_TAG: str(lineage.get("registered_name") or model_version),
    }
    for tag, key in (
        (MODEL_NUMBER_TAG, "registered_version"),
        (MODEL_ALIAS_TAG, "registered_alias"),
    ):
        if lineage.get(key):
            tags[tag] = str(lineage[key])
    return tags


class TraceRecorder:
    """Writes ``chat_completion`` traces into one experiment and feedback onto them.

    ``lineage`` (the served policy's, see ``load_served_policy``) adds the registered model's
    name, version and alias as trace tags and links the traces to its logged model.
    """

    def __init__(
        self,
        experiment: str,
        model_version: str,
        redact: bool = True,
        lineage: Mapping[str, Any] | None = None,
    ):
        self.model_version = model_version
        self.redact = redact
        self.tags = model_trace_tags(model_version, lineage)
        model_id = (lineage or {}).get("logged_model_id")
        self.metadata = {MODEL_ID_METADATA: str(model_id)} if model_id else {}
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
        with _trace_metadata(self.metadata):
            root = mlflow.start_span_no_context(
                ROOT_SPAN,
                span_type=SpanType.CHAT_MODEL,
                inputs=request,
                tags=dict(self.tags),
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


def _trace_metadata(metadata: dict[str, str]) -> contextlib.AbstractContextManager:
    """Trace metadata set when the trace starts (``mlflow.tracing.context``, MLflow >= 3.x)."""
    scope = getattr(mlflow.tracing, "context", None)
    if not metadata or scope is None:
        return contextlib.nullcontext()
    return scope(metadata=metadata)


def trace_exists(trace_id: str) -> bool:
    """Whether the store knows ``trace_id``, waiting for pending async writes if needed."""
    try:
        return mlflow.get_trace(trace_id, silent=True, flush=True) is not None
    except Exception:  # noqa: BLE001 - malformed ids make some stores raise instead of None
        return False


def user_key(user: str | None) -> str:
    """A stable, non-reversible key for a feedback author: one vote per (trace, user)."""
    return hashlib.sha256((user or "anonymous").encode()).hexdigest()[:24]


def log_user_feedback(
    trace_id: str,
    value: float,
    user: str | None = None,
    comment: str | None = None,
    *,
    redact: bool = True,
) -> tuple[str, bool]:
    """Attach a human ``user_feedback`` assessment to a trace: ``(assessment id, replaced)``.

    A user's new vote on a trace replaces their earlier one (matched by :func:`user_key` of the
    raw user, so two users whose names redact alike still count apart). With ``redact`` the
    comment and the user name are PII-redacted before they are stored.
    """
    key = user_key(user)
    with _FEEDBACK_LOCK:
        return _replace_feedback(trace_id, value, key, user, comment=comment, redact=redact)


def _replace_feedback(
    trace_id: str, value: float, key: str, user: str | None, *, comment: str | None, redact: bool
) -> tuple[str, bool]:
    trace = mlflow.get_trace(trace_id, silent=True, flush=True)
    replaced = False
    for old in (trace.info.assessments or []) if trace is not None else []:
        if old.name == FEEDBACK_NAME and (old.metadata or {}).get(USER_KEY_METADATA) == key:
            mlflow.delete_assessment(trace_id=trace_id, assessment_id=old.assessment_id)
            replaced = True
    source_id = user or "anonymous"
    if redact:
        source_id = redact_pii(source_id, PII_KINDS)[0]
        comment = redact_pii(comment, PII_KINDS)[0] if comment is not None else None
    assessment = mlflow.log_feedback(
        trace_id=trace_id,
        name=FEEDBACK_NAME,
        value=float(value),
        source=AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=source_id),
        rationale=comment,
        metadata={USER_KEY_METADATA: key},
    )
    return assessment.assessment_id, replaced
