"""The optional vLLM backend of :func:`taoflow.generation.generate_completions` (same contract).

Imported only when ``backend: vllm`` is selected; fails with a clear message when vLLM or a CUDA
GPU is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taoflow.core.ids import derive_seed
from taoflow.core.lazy import lazy_module
from taoflow.models import Policy

torch = lazy_module("torch")  # imported on first use (taoflow.core.lazy)


def _model_path(policy: Policy) -> str:
    path = getattr(policy.model, "name_or_path", "") or policy.lineage.get("name_or_path", "")
    if not path or not Path(path).exists():
        raise ValueError(
            f"The vLLM backend loads weights from disk, but policy {policy.name!r} has no local "
            f"folder (name_or_path={path!r}). Save it with PolicyDataset first."
        )
    return str(path)


def generate_vllm(
    policy: Policy,
    conversations: Sequence[Sequence[dict]],
    *,
    counts: list[int],
    seeds: Sequence[int],
    greedy: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
) -> list[list[dict]]:
    """The same contract through vLLM: one request per conversation with ``n`` samples."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "generate backend 'vllm' was selected but vLLM is not installed: "
            "pip install 'taoflow[vllm]' on a GPU machine, or use backend: transformers."
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "generate backend 'vllm' was selected but no CUDA GPU is visible; "
            "use backend: transformers on this machine."
        )
    from vllm import LLM, SamplingParams

    llm = _vllm_engine(LLM, _model_path(policy))
    params = [
        SamplingParams(
            n=1 if greedy else count,
            temperature=0.0 if greedy else temperature,
            top_p=top_p,
            top_k=top_k if top_k > 0 else -1,
            max_tokens=max_new_tokens,
            seed=int(seeds[i]),
            logprobs=0,  # only the sampled token's log-prob, from raw logits
        )
        for i, count in enumerate(counts)
    ]
    live = [i for i, c in enumerate(counts) if c]
    outputs = llm.chat([list(conversations[i]) for i in live], [params[i] for i in live])
    results: list[list[dict]] = [[] for _ in counts]
    for i, request in zip(live, outputs, strict=True):
        samples = []
        for j, sample in enumerate(request.outputs):
            samples.append(
                {
                    "completion": sample.text,
                    "n_tokens": len(sample.token_ids),
                    "finish_reason": "stop" if sample.finish_reason == "stop" else "length",
                    "logprob": float(sample.cumulative_logprob or 0.0),
                    "token_ids": list(sample.token_ids),
                    "seed": derive_seed(seeds[i], j),
                }
            )
        results[i] = [dict(samples[0]) for _ in range(counts[i])] if greedy else samples
    return results


_VLLM_ENGINES: dict[str, Any] = {}


def _vllm_engine(llm_cls: Any, path: str) -> Any:
    """One vLLM engine per model folder per process: building one takes tens of seconds."""
    if path not in _VLLM_ENGINES:
        _VLLM_ENGINES.clear()  # one model on the GPU at a time
        _VLLM_ENGINES[path] = llm_cls(model=path, seed=0)
    return _VLLM_ENGINES[path]
