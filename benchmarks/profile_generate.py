"""Where generation's time goes: operator time by kind, per ``generate.decode`` mode.

Runs the engine on ``--prompts`` benchmark prompts x ``--candidates`` samples (T=0.8) under
``torch.profiler`` and groups the operators' self CPU time: body, LM-head and prefill matmuls,
attention, KV-cache concatenation, row selection, sampling and log-probs, the rest. Proportions
hold on a busy machine; times do not. ``compiled`` is warmed up (compiled) before profiling.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/profile_generate.py \\
        --decode generate,steps,static
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_generate import workload  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from taoflow.generation import (  # noqa: E402
    frame_conversation,
    generate_completions,
    render_prompts,
)
from taoflow.models import load_policy  # noqa: E402

SAMPLING_OPS = {
    "aten::_softmax",
    "aten::cumsum",
    "aten::argmax",
    "aten::_log_softmax",
    "aten::div",
    "aten::searchsorted",
    "aten::scatter_",
    "aten::rand",
    "aten::full_like",
    "aten::fill_",
    "aten::gather",
}
SELECT_OPS = {"aten::index", "aten::index_select", "aten::index_copy_"}


def kind(name: str, shapes: str, vocab: int, prefill_rows: int) -> str:
    """The bucket an operator's time goes to."""
    if name == "aten::mm":
        if str(vocab) in shapes:
            return "mm LM head"
        return "mm prefill" if f"[{prefill_rows}," in shapes else "mm body (decoding)"
    if "scaled_dot_product" in name:
        return "attention (sdpa)"
    if name == "aten::cat":
        return "cat (dynamic KV cache growth, mask)"
    if name in SELECT_OPS:
        return "cache row selection / static slot writes"
    if name in SAMPLING_OPS:
        return "sampling + log-probs"
    return "other (norms, rotary, activations, copies)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--decode", default="generate", help="comma list of generate.decode modes")
    args = parser.parse_args()
    policy = load_policy(args.model)
    conversations = [frame_conversation(m) for m in workload(args.prompts)["messages"]]
    # the prefill's matmul rows: distinct prompts x (longest - 1), left-padded
    prefill_rows = len(conversations) * (max(map(len, render_prompts(policy, conversations))) - 1)
    vocab = policy.model.get_output_embeddings().weight.shape[0]
    kwargs = {
        "num_return_sequences": args.candidates,
        "temperature": 0.8,
        "max_new_tokens": args.max_new_tokens,
        "seed": 1,
    }
    for decode in args.decode.split(","):
        generate_completions(policy, conversations[:1], **kwargs, decode=decode)  # warm-up
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            out = generate_completions(policy, conversations, **kwargs, decode=decode)
        wall = time.perf_counter() - start
        buckets: dict[str, float] = {}
        for event in prof.key_averages(group_by_input_shape=True):
            key = kind(event.key, str(event.input_shapes), vocab, prefill_rows)
            buckets[key] = buckets.get(key, 0.0) + event.self_cpu_time_total / 1e6
        total = sum(buckets.values())
        tokens = sum(s["n_tokens"] for samples in out for s in samples)
        print(f"decode={decode}: wall {wall:.1f} s, operators {total:.2f} s, {tokens} tokens")
        for key, seconds in sorted(buckets.items(), key=lambda kv: -kv[1]):
            print(f"  {key:<46}{seconds:8.2f} s {seconds / total:7.1%}")


if __name__ == "__main__":
    main()
