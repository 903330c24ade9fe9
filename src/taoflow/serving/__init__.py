"""Serving: the champion behind an OpenAI-compatible API, with usage and feedback in MLflow."""

from taoflow.serving.app import create_app
from taoflow.serving.config import ServeConfig, build_config
from taoflow.serving.loading import load_served_policy
from taoflow.serving.tracing import (
    FEEDBACK_NAME,
    MODEL_VERSION_TAG,
    ROOT_SPAN,
    TraceRecorder,
    redact_exchange,
)

__all__ = [
    "FEEDBACK_NAME",
    "MODEL_VERSION_TAG",
    "ROOT_SPAN",
    "ServeConfig",
    "TraceRecorder",
    "build_config",
    "create_app",
    "load_served_policy",
    "redact_exchange",
]
