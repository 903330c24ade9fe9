"""Batched generation engine shared by ``generate``, ``evaluate`` and ``serve``.

Why it exists rather than calling ``model.generate`` directly:

* **Throughput.** Prompts are rendered with the chat template, expanded into one row per
  requested sequence, sorted by length and packed into batches by a *token budget*
  (``rows × (longest prompt + max_new_tokens)``), so short prompts are not padded to long
  ones and batch size adapts to the workload.
* **Seeds that survive re-batching.** Each row (conversation ``i``, sample ``j``) samples from
  its own ``torch.Generator`` seeded with ``derive_seed(seeds[i], j)``. A row's completion
  therefore depends on its seed and the model, not on which other rows shared its batch, so a
  different token budget, shard size or ordering yields the same candidates (up to float noise
  in batched matmuls).
* **Log-probabilities for free.** ``logprob`` is the sum over the completion's tokens (stop token
  included) of ``log_softmax`` of the *raw* logits ``generate`` returns in the same pass
  (``output_logits=True``) — the policy at temperature 1, whatever sampling settings were used,
  and no second forward pass.

The optional vLLM backend (:mod:`taoflow.generation.vllm`) has the same output contract; it is
used only when selected and fails with a clear message when vLLM is missing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from taoflow.core.ids import derive_seed
from taoflow.core.lazy import lazy_module
from taoflow.generation.chat import render_chat_ids, special_token_texts
from taoflow.generation.stepping import (
    DECODE_MODES,
    cache_argument,
    decode_generate,
    decode_loop,
    new_cache,
    select_rows,
)
from taoflow.models import Policy

# imported on first use (taoflow.core.lazy): importing a stage's nodes stays cheap
torch = lazy_module("torch")
transformers = lazy_module("transformers")

BACKENDS = ("transformers", "vllm")
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")


def frame_conversation(
    messages: Sequence[dict],
    *,
    system_prompt: str | None = None,
    instruction: str | None = None,
    default_system: str | None = None,
) -> list[dict[str, str]]:
    """Messages as the model should see them under a strategy's prompt variant.

    ``system_prompt`` replaces any system turn (a strategy's variant, e.g. "reason step by
    step"); otherwise ``default_system`` (the task's) is added only where the prompt has no
    system turn. ``instruction`` is appended to the last user turn. The input is not modified.
    """
    framed = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    system = system_prompt
    if system is None and default_system and not any(m["role"] == "system" for m in framed):
        system = default_system
    if system is not None:
        framed = [{"role": "system", "content": system}] + [
            m for m in framed if m["role"] != "system"
        ]
    if instruction:
        for m in reversed(framed):
            if m["role"] == "user":
                m["content"] = f"{m['content']}\n\n{instruction}"
                break
    return framed


def stop_token_ids(policy: Policy) -> list[int]:
    """Token ids that end a completion: EOS from tokenizer and generation config, plus ChatML ends."""
    tokenizer = policy.tokenizer
    ids: set[int] = set()
    for value in (
        tokenizer.eos_token_id,
        getattr(policy.model.generation_config, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in STOP_TOKENS if t in vocab)
    if not ids:
        raise ValueError(
            f"{policy.name}: tokenizer defines no EOS token; cannot tell when to stop."
        )
    return sorted(ids)


def render_prompts(policy: Policy, conversations: Sequence[Sequence[dict]]) -> list[list[int]]:
    """Chat-template each conversation (with the assistant turn opened) into token ids.

    Special-token text typed inside a message stays text (``taoflow.generation.chat``), so
    content cannot open or close turns.
    """
    tokenizer = policy.tokenizer
    specials = special_token_texts(tokenizer)
    out = []
    for i, conversation in enumerate(conversations):
        if not conversation:
            raise ValueError(f"conversation {i} is empty: nothing to answer.")
        out.append(render_chat_ids(tokenizer, list(conversation), specials))
    return out


def plan_batches(lengths: Sequence[int], max_new_tokens: int, token_budget: int) -> list[list[int]]:
    """Row indices sorted by prompt length, packed so ``rows × (longest + new) ≤ token_budget``.

    A row longer than the budget on its own still gets a batch of one rather than failing.
    """
    order = sorted(range(len(lengths)), key=lambda r: (lengths[r], r))
    batches: list[list[int]] = []
    current: list[int] = []
    for r in order:
        width = lengths[r] + max_new_tokens  # ascending order: the new row is the longest
        if current and (len(current) + 1) * width > token_budget:
            batches.append(current)
            current = []
        current.append(r)
    if current:
        batches.append(current)
    return batches


def _counts(num_return_sequences: int | Sequence[int], n: int) -> list[int]:
    if isinstance(num_return_sequences, int):
        counts = [num_return_sequences] * n
    else:
        counts = [int(c) for c in num_return_sequences]
        if len(counts) != n:
            raise ValueError(
                f"num_return_sequences has {len(counts)} entries for {n} conversations."
            )
    if any(c < 0 for c in counts):
        raise ValueError("num_return_sequences must be ≥ 0.")
    return counts


def generate_completions(
    policy: Policy,
    conversations: Sequence[Sequence[dict]],
    *,
    num_return_sequences: int | Sequence[int] = 1,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 64,
    seed: int = 0,
    token_budget: int = 8192,
    progress: bool | str = False,
    seeds: Sequence[int] | None = None,
    backend: str = "transformers",
    chunk_tokens: int = 4,
    on_token: Callable[[int, int, int], None] | None = None,
    engine: Any = None,
    decode: str = "generate",
) -> list[list[dict]]:
    """Sample completions for chat conversations, batched for throughput.

    Returns one list per conversation of ``num_return_sequences`` dicts:
    ``{"completion": str, "n_tokens": int, "finish_reason": "stop"|"length", "logprob": float,
    "seed": int, "token_ids": list[int]}``. ``n_tokens``, ``token_ids`` and ``logprob`` include
    the stop token when there is one; ``completion`` is the decoded text without special tokens.

    ``num_return_sequences`` may be a per-conversation list. ``seeds`` optionally gives each
    conversation its own seed (default ``derive_seed(seed, i)``); sample ``j`` uses
    ``derive_seed(seeds[i], j)``, reported as ``seed``. Greedy (``do_sample=False`` or
    ``temperature == 0``) decodes once per conversation and repeats the result.
    ``token_budget`` bounds ``rows × (longest prompt + max_new_tokens)`` per batch, i.e. the KV
    cache; bigger batches amortise each decoding step's fixed cost (on CPU, reading the weights).
    ``chunk_tokens``: decoding steps between drops of finished rows (the raw logits kept for
    ``logprob`` are ``rows × chunk_tokens × vocab`` floats at a time).
    ``progress``: show a bar (a string is used as its label).
    ``on_token(conversation, sample, token_id)``: called from the generating thread with each
    decoded token as it is produced (stop tokens excluded; greedy reports sample 0 only), for
    streaming; it only observes, so the results are the same with or without it.
    ``backend``: ``transformers`` (this module) or ``vllm`` (:mod:`taoflow.generation.vllm`, the
    same contract); ``engine`` is the vLLM engine's settings (``generate.vllm``, a
    :class:`~taoflow.config.generate.VllmEngineParams`; None: its defaults).
    ``decode``: how the transformers backend decodes, one of ``DECODE_MODES``
    (:mod:`taoflow.generation.stepping`); ``generate`` is today's path.
    """
    _check_arguments(
        backend=backend,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        chunk_tokens=chunk_tokens,
        token_budget=token_budget,
    )
    if decode not in DECODE_MODES:
        raise ValueError(f"Unknown decode mode {decode!r}; expected one of {DECODE_MODES}.")
    counts = _counts(num_return_sequences, len(conversations))
    if seeds is None:
        seeds = [derive_seed(seed, i) for i in range(len(conversations))]
    elif len(seeds) != len(conversations):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(conversations)} conversations.")
    greedy = not do_sample or temperature == 0
    if backend == "vllm":
        if on_token is not None:
            raise ValueError("token streaming (on_token) needs the transformers backend.")
        from taoflow.generation.vllm import generate_vllm

        return generate_vllm(
            policy,
            conversations,
            counts=counts,
            seeds=seeds,
            greedy=greedy,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            engine=engine,
            progress=progress,
        )

    prompts = render_prompts(policy, conversations)
    rows = _plan_rows(counts, seeds, greedy)
    batches = plan_batches([len(prompts[i]) for i, _, _ in rows], max_new_tokens, token_budget)
    sampling = {
        "greedy": greedy,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_new_tokens": max_new_tokens,
        "stops": stop_token_ids(policy),
        "chunk_tokens": chunk_tokens,
        "decode": decode,
    }
    label = progress if isinstance(progress, str) else "generate"
    bar = tqdm(total=len(conversations), desc=label, unit="prompt", disable=not progress)
    was_training = policy.model.training
    policy.model.eval()  # dropout off: a policy handed over mid-training must still reproduce
    try:
        return _run_batches(
            policy,
            prompts,
            rows,
            batches=batches,
            counts=counts,
            sampling=sampling,
            bar=bar,
            on_token=on_token,
        )
    finally:
        policy.model.train(was_training)
        bar.close()


def _plan_rows(counts: list[int], seeds: Sequence[int], greedy: bool) -> list[tuple[int, int, int]]:
    """One row per sequence to generate: (conversation, sample index, row seed)."""
    rows: list[tuple[int, int, int]] = []
    for i, count in enumerate(counts):
        for j in range(1 if greedy and count else count):
            rows.append((i, j, derive_seed(seeds[i], j)))
    return rows


def _check_arguments(
    *,
    backend: str,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    chunk_tokens: int,
    token_budget: int,
) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown generation backend {backend!r}; expected one of {BACKENDS}.")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be ≥ 1.")
    if do_sample and temperature < 0:
        raise ValueError("temperature must be ≥ 0.")
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1].")
    if chunk_tokens < 1 or token_budget < 1:
        raise ValueError("chunk_tokens and token_budget must be ≥ 1.")


def _run_batches(
    policy: Policy,
    prompts: list[list[int]],
    rows: list[tuple[int, int, int]],
    *,
    batches: list[list[int]],
    counts: list[int],
    sampling: dict[str, Any],
    bar: Any,
    on_token: Callable[[int, int, int], None] | None = None,
) -> list[list[dict]]:
    """Generate every planned batch and file each row's output under its conversation."""
    greedy = sampling["greedy"]
    results: list[list[dict | None]] = [[None] * c for c in counts]
    remaining = [1 if greedy and c else c for c in counts]
    bar.update(sum(1 for c in counts if c == 0))
    n_tokens_total, started = 0, time.perf_counter()
    for batch in batches:
        row_token = on_token and (lambda k, t, b=batch: on_token(*rows[b[k]][:2], t))
        outputs = _generate_batch(
            policy,
            [prompts[rows[r][0]] for r in batch],
            [rows[r][2] for r in batch],
            on_token=row_token,
            **sampling,
        )
        finished = 0
        for r, output in zip(batch, outputs, strict=True):
            i, j, row_seed = rows[r]
            output["seed"] = row_seed
            n_tokens_total += output["n_tokens"]
            if greedy:
                results[i] = [dict(output) for _ in range(counts[i])]
            else:
                results[i][j] = output
            remaining[i] -= 1
            finished += remaining[i] == 0
        bar.update(finished)
        bar.set_postfix(tok_s=f"{n_tokens_total / (time.perf_counter() - started):.1f}")
    return results  # type: ignore[return-value]


def _generate_batch(
    policy: Policy,
    prompts: list[list[int]],
    row_seeds: list[int],
    *,
    greedy: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    stops: list[int],
    chunk_tokens: int,
    decode: str = "generate",
    on_token: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Generate one batch of rows; returns completion, finish reason, log-prob per row.

    Two savings over a single ``generate`` call, both through the KV cache ``generate`` takes:

    * **shared prefill** — rows with the same prompt (the samples of one conversation) are
      prefilled once and the cache rows are copied, instead of recomputing the prompt per sample;
    * **compaction** — decoding runs in chunks of ``chunk_tokens`` steps; after each chunk the
      rows that have stopped are dropped from the batch and the cache, so a batch no longer
      pays for its finished rows until its longest one ends.

    Rows sample from their own generators (kept across chunks), so results do not depend on
    either saving. ``on_token(row, token_id)`` sees each row's tokens as they are decoded.
    ``decode``: how the chunks are decoded (:mod:`taoflow.generation.stepping`: ``model.generate``
    per chunk, or its own loop over a dynamic or static cache, optionally compiled).
    """
    from taoflow.generation.sampling import SeededSampler  # subclasses of transformers classes
    from taoflow.generation.streaming import RowStreamer

    tokenizer, model = policy.tokenizer, policy.model
    device = model.device
    unique: dict[tuple[int, ...], int] = {}
    row_prompt = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
    padded = tokenizer.pad(
        {"input_ids": [list(p) for p in unique]},
        padding=True,
        padding_side="left",
        return_tensors="pt",
    ).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    gather = torch.tensor(row_prompt, device=device)
    generators = [torch.Generator().manual_seed(int(s)) for s in row_seeds]
    n_rows = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    logprobs: list[list[float]] = [[] for _ in range(n_rows)]
    stopped = [False] * n_rows
    stop_set = set(stops)

    collect = functools.partial(
        _collect_chunk, stop_set=stop_set, tokens=tokens, logprobs=logprobs, stopped=stopped
    )

    def sampler(active: list[int]) -> Any:
        if decode == "generate":  # logits processors: a one-hot row that generate's argmax follows
            return [] if greedy else [SeededSampler([generators[r] for r in active], *warp)]
        return None if greedy else SeededSampler([generators[r] for r in active], *warp).draw

    warp = (temperature, top_p, top_k)
    streamer_for = on_token and (lambda active: RowStreamer(active, stop_set, on_token))
    with torch.inference_mode():
        cache = new_cache(model, decode, padded["input_ids"].shape[1] + max_new_tokens)
        cache, ids, mask = _shared_prefill(model, padded, gather, cache)
        common = {
            "sampler": sampler,
            "max_new_tokens": max_new_tokens,
            "stop_set": stop_set,
            "chunk_tokens": chunk_tokens,
            "collect": collect,
            "streamer_for": streamer_for,
        }
        if decode == "generate":
            decode_generate(model, cache, ids, mask, pad_id=pad_id, **common)
        else:
            decode_loop(model, cache, ids, mask, mode=decode, active=list(range(n_rows)), **common)

    return [_row_result(tokenizer, tokens[r], logprobs[r], stopped[r]) for r in range(n_rows)]


def _collect_chunk(
    new: torch.Tensor,
    logits: Sequence[torch.Tensor],
    active: list[int],
    *,
    stop_set: set[int],
    tokens: list[list[int]],
    logprobs: list[list[float]],
    stopped: list[bool],
) -> list[int]:
    """Append a decoded chunk to each active row (up to its stop token); positions still going."""
    chosen = _chosen_logprobs(new, logits)
    new_cpu = new.cpu().tolist()
    keep = []
    for k, r in enumerate(active):
        row = new_cpu[k]
        end = next((t + 1 for t, tok in enumerate(row) if tok in stop_set), None)
        tokens[r].extend(row[:end])
        logprobs[r].extend(chosen[k, : end or len(row)].tolist())
        if end is None:
            keep.append(k)
        else:
            stopped[r] = True
    return keep


def _shared_prefill(
    model: Any, padded: Any, gather: torch.Tensor, cache: Any
) -> tuple[Any, Any, Any]:
    """Prefill each distinct prompt once, then copy its cache rows to every row that shares it.

    All but the last prompt token are prefilled; ``generate`` feeds that one.
    """
    ids, mask = padded["input_ids"], padded["attention_mask"]
    if ids.shape[1] > 1:
        model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=(mask[:, :-1].cumsum(-1) - 1).clamp_(min=0),
            **cache_argument(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        select_rows(cache, gather)
    return cache, ids[gather], mask[gather]


def _chosen_logprobs(new: torch.Tensor, logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Log-prob of each chosen token under the raw (temperature-1) distribution, on the CPU."""
    return (
        torch.stack(
            [
                torch.log_softmax(step.float(), dim=-1).gather(1, new[:, t : t + 1]).squeeze(1)
                for t, step in enumerate(logits)
            ],
            dim=1,
        )
        .double()
        .cpu()
    )


def _row_result(
    tokenizer: Any, tokens: list[int], logprobs: list[float], stopped: bool
) -> dict[str, Any]:
    text_ids = tokens[:-1] if stopped else tokens
    return {
        "completion": tokenizer.decode(text_ids, skip_special_tokens=True),
        "n_tokens": len(tokens),
        "finish_reason": "stop" if stopped else "length",
        "logprob": float(sum(logprobs)),
        "token_ids": tokens,
    }
