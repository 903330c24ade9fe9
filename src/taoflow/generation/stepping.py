"""The engine's own decoding loop: the alternative to one ``model.generate`` call per chunk.

``generate.decode`` picks how :func:`taoflow.generation.engine.generate_completions` decodes
after its shared prefill:

* ``generate`` (default) — ``model.generate`` per chunk of ``chunk_tokens`` steps (engine.py).
* ``steps`` — this module's loop over the model's forward with the same ``DynamicCache``, the
  same inputs (positions, mask, one token per row per step) and the same sampler, so tokens and
  log-probs are bit for bit those of ``generate`` (tested); it skips ``generate``'s per-call
  set-up, its logits copies and the argmax over the sampler's one-hot row.
* ``static`` — the loop over a preallocated ``StaticCache`` (``prompt + max_new_tokens`` slots
  per row): no per-step concatenation of the whole cache, at the price of attending over the
  empty slots (masked). Same tokens up to float noise in attention (greedy equality tested).
* ``compiled`` — ``static`` with the decoding step through ``torch.compile`` (inductor, dynamic
  shapes, compiled once per model per process; prefill stays eager): fuses the step's
  element-wise work (norms, rotary, activations) and drops most per-operator Python overhead.
  Needs a C++ compiler; the first batch pays the compilation.

Finished rows are dropped every ``chunk_tokens`` steps in every mode (the same compaction as the
``generate`` path), and every row keeps sampling from its own generator, so seeds survive
re-batching exactly as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from taoflow.core.lazy import lazy_module

torch = lazy_module("torch")
transformers = lazy_module("transformers")

DECODE_MODES = ("generate", "steps", "static", "compiled")
ChunkCollector = Callable[[Any, list, list[int]], list[int]]


def new_cache(model: Any, mode: str, max_len: int) -> Any:
    """The KV cache the prefill fills: dynamic (``generate``/``steps``) or static (``max_len`` slots)."""
    if mode in ("static", "compiled"):
        return transformers.StaticCache(config=model.config, max_cache_len=max_len)
    return transformers.DynamicCache(config=model.config)


def select_rows(cache: Any, index: Any) -> None:
    """Keep only the cache rows ``index`` (in that order), for either kind of cache."""
    if isinstance(cache, transformers.StaticCache):
        cache.reorder_cache(index)  # index_select on the batch dimension of every layer
    else:
        cache.batch_select_indices(index)


def _forward(mode: str, model: Any) -> Callable[..., Any]:
    if mode != "compiled":
        return model
    config = transformers.CompileConfig(fullgraph=False, dynamic=True, mode="default")
    return model.get_compiled_call(config)  # cached on the model: compiled once per process


def decode_loop(
    model: Any,
    cache: Any,
    ids: Any,
    mask: Any,
    *,
    mode: str,
    active: list[int],
    sampler: Any,
    max_new_tokens: int,
    stop_set: set[int],
    chunk_tokens: int,
    collect: ChunkCollector,
    streamer_for: Callable[[list[int]], Any] | None = None,
) -> None:
    """Decode every active row until it stops or reaches ``max_new_tokens``.

    ``ids``/``mask``: the rows' prompts (left-padded) whose last token is not in ``cache`` yet.
    ``sampler(active) -> draw`` gives the chunk's token chooser (None: greedy argmax).
    ``collect(new_tokens, logits_per_step, active)`` files a chunk and returns the positions
    still going; ``streamer_for(active)`` optionally gives a streamer to observe tokens.
    """
    forward = _forward(mode, model)
    cache_kw = cache_argument(model, cache)
    stops = torch.tensor(sorted(stop_set), device=ids.device)
    static = mode in ("static", "compiled")
    width = cache.layers[0].max_cache_len if static else None
    last = ids[:, -1:]
    produced = 0
    while active and produced < max_new_tokens:
        steps = min(chunk_tokens, max_new_tokens - produced)
        draw = sampler(active)
        streamer = streamer_for(active) if streamer_for else None
        if streamer is not None:
            streamer.put(ids)  # the prompt, skipped by the streamer as generate's first put is
        tokens, logits = [], []
        running = torch.ones(len(active), dtype=torch.bool, device=ids.device)
        for _ in range(steps):
            step_logits = _step(forward, cache_kw, last, mask, width=width)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            logits.append(step_logits)
            chosen = step_logits.argmax(dim=-1) if draw is None else draw(step_logits)
            tokens.append(chosen)
            if streamer is not None:
                streamer.put(chosen)
            last = chosen[:, None]
            running &= ~torch.isin(chosen, stops)
            if not running.any():
                break
        new = torch.stack(tokens, dim=1)
        keep = collect(new, logits, active)
        produced += new.shape[1]
        if not keep or produced >= max_new_tokens:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=ids.device)
            select_rows(cache, index)
            mask, last, ids = mask[index], last[index], ids[index]
        active = [active[k] for k in keep]


def _step(
    forward: Callable[..., Any],
    cache_kw: dict[str, Any],
    last: Any,
    mask: Any,
    *,
    width: int | None,
) -> Any:
    """One decoding step: the next-token logits (float32, one row per sequence).

    The inputs ``generate`` gives a decoding step: the token, the 2-D mask over cache + token,
    the token's position counted over the mask (left padding skipped).
    """
    positions = mask.sum(dim=-1, keepdim=True) - 1
    if width is not None:  # a static cache attends over all its slots: mask the empty ones
        mask = torch.nn.functional.pad(mask, (0, width - mask.shape[1]))
    out = forward(
        input_ids=last, attention_mask=mask, position_ids=positions, **cache_kw, use_cache=True
    )
    return out.logits[:, -1].to(copy=True, dtype=torch.float32)


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """``cache=``, or ``past_key_values=`` in transformers < 5.20 (what vLLM's extras pin)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def decode_generate(
    model: Any,
    cache: Any,
    ids: Any,
    mask: Any,
    *,
    sampler: Callable[[list[int]], Any],
    max_new_tokens: int,
    stop_set: set[int],
    pad_id: int,
    chunk_tokens: int,
    collect: ChunkCollector,
    streamer_for: Callable[[list[int]], Any] | None = None,
) -> None:
    """``decode: generate``: one ``model.generate`` call per chunk of ``chunk_tokens`` steps.

    ``sampler(active)`` here gives the chunk's logits processors (empty: greedy).
    """
    active = list(range(ids.shape[0]))
    produced = 0
    while active and produced < max_new_tokens:
        steps = min(chunk_tokens, max_new_tokens - produced)
        config = transformers.GenerationConfig(
            do_sample=False,  # sampling happens in SeededSampler; argmax follows its choice
            max_new_tokens=steps,
            eos_token_id=sorted(stop_set),
            pad_token_id=pad_id,
            return_dict_in_generate=True,
            output_logits=True,
            use_cache=True,
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            **cache_argument(model, cache),
            generation_config=config,
            logits_processor=transformers.LogitsProcessorList(sampler(active)),
            streamer=streamer_for(active) if streamer_for else None,
        )
        new = out.sequences[:, ids.shape[1] :]
        keep = collect(new, out.logits, active)
        produced += new.shape[1]
        if not keep or produced >= max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], new.shape[1])], dim=1)
        ids = out.sequences
        if len(keep) < len(active):
            index = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(index)
            ids, mask = ids[index], mask[index]
        active = [active[k] for k in keep]
