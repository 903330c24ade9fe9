"""How good and how costly is a packaged judge model on the labeled benchmark?

A judge is only worth its CPU if it is clearly stronger than the policy it judges. This loads a
packaged judge (``--model embedded-judge``: Qwen2.5-Coder-1.5B-Instruct, or
``embedded-judge-0.5b``: the 0.5B), answers ``data/01_raw/benchmark.jsonl`` greedily with the
project's generation engine under the task's system prompt and answer extractor
(``conf/base/parameters.yml``: ``task``), and prints accuracy overall and by number of terms
(read from the question's expression), the one-time build (assembly + conversion, in a child
process so its memory does not count below), load time, seconds per problem and peak RSS.

Run (heavy: take the shared lock)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \
        python benchmarks/bench_judge.py --model embedded-judge-0.5b
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from taoflow.core.answers import answers_match, extract_answer  # noqa: E402
from taoflow.generation import frame_conversation, generate_completions  # noqa: E402
from taoflow.models import load_policy  # noqa: E402
from taoflow.packaged_weights import PACKAGED, is_materialised  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_EXPRESSION = re.compile(r":\s*([^:]*?)\s*=\s*$")


def num_terms(question: str) -> int:
    """Operands in the question's expression ("…problem: 1 - 7 + 9 =" → 3)."""
    match = _EXPRESSION.search(question)
    if not match:
        raise ValueError(f"no 'expression =' at the end of {question!r}")
    return len(re.findall(r"\d+(?:\.\d+)?", match.group(1)))


def peak_rss_gib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # Linux: KiB


def build(ref: str, cache_dir: Path) -> float:
    """Materialise the judge in a child process (seconds; 0 when already built)."""
    if is_materialised(PACKAGED[ref], cache_dir / PACKAGED[ref].name):
        return 0.0
    start = time.perf_counter()
    code = "import sys; from taoflow.models import resolve_model_path as r; r(*sys.argv[1:])"
    subprocess.run([sys.executable, "-c", code, ref, str(cache_dir)], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PACKAGED), default="embedded-judge")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--data", type=Path, default=ROOT / "data/01_raw/benchmark.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "data/06_models")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=4096)
    args = parser.parse_args()

    task = yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())["task"]
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = rows[: args.limit]

    build_s = build(args.model, args.cache_dir)
    start = time.perf_counter()
    judge = load_policy(args.model, args.cache_dir)
    load_s = time.perf_counter() - start
    rss_loaded = peak_rss_gib()

    conversations = [
        frame_conversation(
            [{"role": "user", "content": row["question"]}], default_system=task["system_prompt"]
        )
        for row in rows
    ]
    start = time.perf_counter()
    outputs = generate_completions(
        judge,
        conversations,
        do_sample=False,
        max_new_tokens=args.max_new_tokens,
        token_budget=args.token_budget,
        progress=args.model,
    )
    generate_s = time.perf_counter() - start

    correct: dict[str, list[bool]] = defaultdict(list)
    truncated = 0
    for row, (output,) in zip(rows, outputs, strict=True):
        ok = answers_match(extract_answer(output["completion"], task["answer"]), row["answer"])
        correct["all"].append(ok)
        correct[f"{num_terms(row['question'])}-term"].append(ok)
        truncated += output["finish_reason"] == "length"

    print(f"model: {args.model} ({judge.name}), problems: {len(rows)}")
    for key in ["all"] + sorted(k for k in correct if k != "all"):
        hits = correct[key]
        print(f"  accuracy {key:>7}: {sum(hits) / len(hits):.3f}  ({sum(hits)}/{len(hits)})")
    print(f"  hit max_new_tokens={args.max_new_tokens}: {truncated}")
    if build_s:
        print(
            f"  one-time build: {build_s:.1f} s, peak RSS {peak_rss_gib(resource.RUSAGE_CHILDREN):.2f} GiB"
        )
    print(f"  load: {load_s:.1f} s, peak RSS after load {rss_loaded:.2f} GiB")
    print(f"  generate: {generate_s:.1f} s, {generate_s / len(rows):.3f} s/problem")
    print(f"  peak RSS: {peak_rss_gib():.2f} GiB (threads: {os.environ.get('OMP_NUM_THREADS')})")


if __name__ == "__main__":
    main()
