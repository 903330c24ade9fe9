"""The one generation engine: ``generate``, ``evaluate``, health's probe, the judge and ``serve``.

``engine`` batches and seeds transformers generation; ``vllm`` is the optional vLLM backend with
the same output contract; ``sampling`` draws each row from its own generator; ``candidates`` is
the row contract of sampled completions.
"""

from typing import Any

from taoflow.generation.candidates import CANDIDATE_COLUMNS, candidate_record
from taoflow.generation.engine import (
    BACKENDS,
    STOP_TOKENS,
    frame_conversation,
    generate_completions,
    plan_batches,
    render_prompts,
    stop_token_ids,
)
from taoflow.generation.fingerprint import policy_fingerprint


def __getattr__(name: str) -> Any:
    """``SeededSampler`` subclasses a transformers class: imported only when asked for."""
    if name == "SeededSampler":
        from taoflow.generation.sampling import SeededSampler

        return SeededSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "CANDIDATE_COLUMNS",
    "STOP_TOKENS",
    "SeededSampler",
    "candidate_record",
    "frame_conversation",
    "generate_completions",
    "plan_batches",
    "policy_fingerprint",
    "render_prompts",
    "stop_token_ids",
]
