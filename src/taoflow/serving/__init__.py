"""Serving: the champion behind an OpenAI-compatible API, with usage and feedback in MLflow.

Exports resolve lazily: validating the ``serve`` block (``taoflow.serving.config``) at every Kedro
context must not import the web stack and the model runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "taoflow.serving.app",
    "ServeConfig": "taoflow.serving.config",
    "build_config": "taoflow.serving.config",
    "load_served_policy": "taoflow.serving.loading",
    "FEEDBACK_NAME": "taoflow.serving.tracing",
    "MODEL_VERSION_TAG": "taoflow.serving.tracing",
    "MODEL_NAME_TAG": "taoflow.serving.tracing",
    "MODEL_NUMBER_TAG": "taoflow.serving.tracing",
    "MODEL_ALIAS_TAG": "taoflow.serving.tracing",
    "model_trace_tags": "taoflow.serving.tracing",
    "ROOT_SPAN": "taoflow.serving.tracing",
    "TraceRecorder": "taoflow.serving.tracing",
    "redact_exchange": "taoflow.serving.tracing",
}

__all__ = [
    "FEEDBACK_NAME",
    "MODEL_ALIAS_TAG",
    "MODEL_NAME_TAG",
    "MODEL_NUMBER_TAG",
    "MODEL_VERSION_TAG",
    "ROOT_SPAN",
    "ServeConfig",
    "TraceRecorder",
    "build_config",
    "create_app",
    "load_served_policy",
    "model_trace_tags",
    "redact_exchange",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taoflow.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
