"""Scoring throughput (candidates/s) per scorer, on one arithmetic workload in one process.

Workload: ``--groups`` chain_sum prompts × ``--group-size`` candidates, with completions in the
shapes a small model produces (bare number, "a + b = c", wrong sums, rambling, no answer). Every
scorer is built once, warmed up on a few candidates (model loading is not throughput), then timed
scoring the whole workload through ``CandidateScorer.score`` — combination and advantage included.
The baseline is ``majority_vote`` (pure Python); each row also prints its cost relative to it.

Scorers timed: majority_vote, format, length_penalty, semantic_consensus (all-MiniLM-L6-v2),
reward_model (the embedded SmolLM2-135M body with a fresh 1-logit head: a 135M reward model's cost),
verifier (a trivial function in 2 worker processes: the isolation overhead), llm_judge over HTTP
(a local fake OpenAI-compatible server: the client overhead only) and llm_judge with the embedded
model generating ``--judge-tokens`` tokens (on ``--judge-candidates`` candidates).

Run (heavy: take the shared lock)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \
        python benchmarks/bench_score.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from taoflow.scoring import CandidateScorer  # noqa: E402

TASK = {"name": "chain_sum", "answer": {"kind": "last_number"}}
SYSTEM = "Answer with the final number only."


def verify(prompt: str, completion: str) -> float:
    """A trivial verifier (the cost measured is the process isolation, not the check)."""
    return float(any(ch.isdigit() for ch in completion))


def workload(groups: int, group_size: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prompts and candidates in the data contracts of docs/architecture.md."""
    import reasoning_gym

    items = reasoning_gym.create_dataset(
        "chain_sum", size=groups, seed=seed, min_terms=2, max_terms=3, min_digits=1, max_digits=1
    )
    rng = random.Random(seed)
    prompt_rows, rows = [], []
    for g, item in enumerate(items):
        pid = f"p{g:05d}"
        prompt_rows.append(
            {
                "prompt_id": pid,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": item["question"]},
                ],
            }
        )
        answer = int(item["answer"])
        for c in range(group_size):
            shape = rng.random()
            wrong = answer + rng.choice([-2, -1, 1, 2])
            if shape < 0.4:
                text, reason = str(answer), "stop"
            elif shape < 0.6:
                text, reason = f"{item['question'].split(':')[-1].strip()} {wrong}", "stop"
            elif shape < 0.8:
                text, reason = f"The answer is {rng.choice([answer, wrong])}.", "stop"
            elif shape < 0.9:
                text, reason = "Let me think about this step by step. " * 4, "length"
            else:
                text, reason = str(wrong), "stop"
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-{c}",
                    "round": 1,
                    "strategy": "direct",
                    "completion": text,
                    "n_tokens": len(text.split()) * 2,
                    "finish_reason": reason,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(prompt_rows)


def fake_judge() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            payload = json.dumps({"choices": [{"message": {"content": "Score: 7"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def reward_model_dir(out: str) -> str:
    """The embedded model's body under a fresh 1-logit head, saved once (cost of a 135M RM)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from taoflow.models import resolve_model_path

    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    source = resolve_model_path("embedded")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def time_scorer(entry, candidates, prompts, n=None) -> tuple[float, int]:
    """Seconds to score ``n`` candidates (whole groups) after a warm-up on the first group."""
    if n is not None:
        keep = candidates["prompt_id"].drop_duplicates().head(max(1, n // 8))
        candidates = candidates[candidates["prompt_id"].isin(keep)]
    with CandidateScorer({"scorers": [entry]}, TASK) as scorer:
        first = candidates[candidates["prompt_id"] == candidates["prompt_id"].iloc[0]]
        scorer.score(first, prompts)  # loads models, starts workers
        started = time.perf_counter()
        scorer.score(candidates, prompts)
        return time.perf_counter() - started, len(candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--judge-candidates", type=int, default=32)
    parser.add_argument("--judge-tokens", type=int, default=8)
    parser.add_argument("--rm-dir", default="data/06_models/bench-reward-model")
    parser.add_argument("--only", nargs="*", help="scorer names to time (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    candidates, prompts = workload(args.groups, args.group_size)
    server, url = fake_judge()
    entries = {
        "majority_vote": ({"name": "majority_vote"}, None),
        "format": ({"name": "format"}, None),
        "length_penalty": ({"name": "length_penalty"}, None),
        "semantic_consensus": ({"name": "semantic_consensus"}, None),
        "reward_model": (
            {"name": "reward_model", "model": reward_model_dir(args.rm_dir), "batch_size": 16},
            None,
        ),
        "verifier": ({"name": "verifier", "function": "bench_score:verify", "workers": 2}, None),
        "llm_judge_http": ({"name": "llm_judge", "url": url, "concurrency": 4}, None),
        "llm_judge_local": (
            {
                "name": "llm_judge",
                "backend": "transformers",
                "model": "embedded",
                "max_new_tokens": args.judge_tokens,
                "batch_size": 16,
            },
            args.judge_candidates,
        ),
    }
    wanted = args.only or list(entries)
    print(
        f"workload: {len(candidates)} candidates in {args.groups} groups; torch threads "
        f"{torch.get_num_threads()}"
    )
    results = {}
    for label in wanted:
        entry, n = entries[label]
        seconds, count = time_scorer(entry, candidates, prompts, n)
        results[label] = count / seconds
        base = results.get("majority_vote")
        ratio = f"{base / results[label]:8.1f}x majority_vote's cost" if base else ""
        print(f"{label:20s} {count:6d} cand {seconds:8.3f} s {results[label]:10.1f} cand/s {ratio}")
    server.shutdown()


if __name__ == "__main__":
    main()
