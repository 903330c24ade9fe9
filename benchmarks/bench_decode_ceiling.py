"""The ceiling under the generate node: how close to the fp32 matmul peak can decoding get here?

The node's share of the peak (``bench_generate.py``) mixes the engine's own costs with what the
model's forward costs on this CPU. This script measures the second part alone, on the same model:

  (1) the decoding step's matmul shapes (``F.linear`` with the model's own weight shapes: the
      attention projections, the MLP, the LM head) at ``--rows`` rows, as a share of the peak;
  (2) a bare decoding step — one ``model(...)`` call, one new token per row, over a KV cache of
      ``--prompt-tokens`` positions, no sampling, no log-probs, no Python of ours — at the same
      rows: milliseconds per step, tokens per second and share of the peak, counting the work as
      ``bench_generate.py`` does (2 × parameters per token, the tied LM head once).

No generation loop can beat (2) at its batch size: it is what PyTorch and this CPU give a
batched forward, so it bounds what any change inside the engine can reach.

Run (heavy: take the shared lock; a minute or two)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \\
        python benchmarks/bench_decode_ceiling.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_generate import matmul_flops  # noqa: E402

from taoflow.models import load_policy  # noqa: E402


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """(in, out) of each distinct linear layer of one decoder layer, plus the LM head."""
    shapes: dict[str, tuple[int, int]] = {}
    layer = model.model.layers[0]
    for name, module in layer.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name.split(".")[-1]] = (module.in_features, module.out_features)
    head = model.get_output_embeddings().weight
    shapes["lm_head"] = (head.shape[1], head.shape[0])
    return shapes


def rate(fn, flops: float, seconds: float) -> float:
    """Median FLOP/s of ``fn`` over ``seconds`` (one warm-up call first)."""
    fn()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times)


def step_seconds(model, rows: int, prompt_tokens: int, steps: int) -> float:
    """Median wall time of one decoding step at ``rows`` rows (the cache grows as it goes)."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (rows, prompt_tokens), generator=generator)
    token = torch.randint(0, vocab, (rows, 1), generator=generator)
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        times = []
        for _ in range(steps + 2):
            start = time.perf_counter()
            cache = model(input_ids=token, past_key_values=cache, use_cache=True).past_key_values
            times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--rows", default="8,32,64,128,256", help="comma list of batch rows")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16, help="decoding steps timed per size")
    parser.add_argument("--seconds", type=float, default=1.0, help="per matmul shape and size")
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]

    torch.manual_seed(0)
    policy = load_policy(args.model)
    model = policy.model.eval()
    # the peak before and after, the higher one counted: a share is then never flattered
    peak = matmul_flops()
    shapes = linear_shapes(model)
    print(
        f"model={args.model} threads={torch.get_num_threads()} rows={rows} "
        f"prompt_tokens={args.prompt_tokens} steps={args.steps}"
    )

    linear_share: dict[str, list[float]] = {}
    with torch.inference_mode():
        for name, (fan_in, fan_out) in shapes.items():
            weight = torch.randn(fan_out, fan_in)
            linear_share[name] = []
            for m in rows:
                x = torch.randn(m, fan_in)
                flops = 2.0 * m * fan_in * fan_out
                linear_share[name].append(
                    rate(lambda x=x, w=weight: F.linear(x, w), flops, args.seconds)
                )

    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    per_token = 2.0 * (body + head)
    steps = {m: step_seconds(model, m, args.prompt_tokens, args.steps) for m in rows}
    peak = max(peak, matmul_flops())

    print(f"\nfp32 matmul peak (1024^3, best of two measurements): {peak / 1e9:.1f} GFLOP/s")
    print("\n(1) F.linear at the decoding step's shapes, share of the peak")
    print("| layer (in x out) | " + " | ".join(f"{m} rows" for m in rows) + " |")
    print("| --- | " + " | ".join("---" for _ in rows) + " |")
    for name, (fan_in, fan_out) in shapes.items():
        cells = " | ".join(f"{f / peak:.0%}" for f in linear_share[name])
        print(f"| {name} ({fan_in} x {fan_out}) | {cells} |")
    print("\n(2) a bare decoding step (model forward, one token per row, dynamic KV cache)")
    print("| rows | ms per step | tokens/s | GFLOP/s | share of the peak |")
    print("| --- | --- | --- | --- | --- |")
    for m in rows:
        flops = per_token * m / steps[m]
        print(
            f"| {m} | {steps[m] * 1e3:.1f} | {m / steps[m]:.1f} | {flops / 1e9:.1f} | "
            f"{flops / peak:.1%} |"
        )


if __name__ == "__main__":
    main()
