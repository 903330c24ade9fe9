"""Serving load check: concurrent chat requests against ``taoflow serve`` on loopback.

Same process, same model, same prompts, two passes over a live uvicorn server on 127.0.0.1:

  (a) baseline — one request at a time (``--concurrency 1``): what a server without batching
      gives;
  (b) concurrent — ``--concurrency`` clients at once: the micro-batcher packs them into shared
      ``generate`` calls.

Reported per pass: requests answered / sent, throughput (requests/s and completion tokens/s),
latency p50 / p95 / max, batches run, and — with capture on — that every answered request has its
MLflow trace (read back by id from a throwaway SQLite store after flushing). Printed last: the
throughput ratio (b)/(a). Bounded: at most ``--requests`` per pass and ``--max-seconds`` in all;
it stops by itself and never binds anything but loopback.

Run (heavy with the real model: take the shared lock)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \\
        python benchmarks/bench_serve.py --model tiny-random
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \\
        python benchmarks/bench_serve.py --model embedded --requests 24 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import mlflow  # noqa: E402

from taoflow.serving import TraceRecorder, build_config, create_app, load_served_policy  # noqa: E402
from taoflow.serving.server import BackgroundServer  # noqa: E402

SYSTEM = "Answer with the final number only."


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"What is {rng.randint(0, 9)} + {rng.randint(0, 9)}?" for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def load(
    url: str, questions: list[str], concurrency: int, max_tokens: int, deadline: float
) -> dict:
    """Send every question with at most ``concurrency`` in flight; stop starting new ones at deadline."""
    semaphore = asyncio.Semaphore(concurrency)
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, i: int, question: str) -> None:
        async with semaphore:
            if time.monotonic() > deadline:
                results.append({"status": "skipped"})
                return
            body = {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                ],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": i,
            }
            started = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as err:
                results.append({"status": f"error: {err}"})
                return
            latency = time.perf_counter() - started
            data = (
                r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            )
            results.append(
                {
                    "status": r.status_code,
                    "latency": latency,
                    "tokens": (data.get("usage") or {}).get("completion_tokens", 0),
                    "trace_id": data.get("trace_id"),
                }
            )

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(one(client, i, q) for i, q in enumerate(questions)))
    wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    latencies = [r["latency"] for r in ok]
    return {
        "concurrency": concurrency,
        "sent": sum(r["status"] != "skipped" for r in results),
        "answered": len(ok),
        "statuses": sorted({str(r["status"]) for r in results}),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3) if wall else 0.0,
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2) if wall else 0.0,
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "max_s": round(max(latencies), 3) if latencies else None,
        "trace_ids": [r["trace_id"] for r in ok],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random", help="model reference or champion")
    parser.add_argument("--requests", type=int, default=48, help="requests per pass (≤ 500)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-window-ms", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="whole-run time bound")
    parser.add_argument("--no-capture", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the summary JSON here")
    args = parser.parse_args()
    requests = min(args.requests, 500)
    deadline = time.monotonic() + args.max_seconds

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        config = build_config(
            {
                "model": args.model,
                "max_tokens_cap": max(args.max_tokens, 16),
                "default_max_tokens": min(args.max_tokens, 16),
                "max_batch_size": args.max_batch_size,
                "batch_window_ms": args.batch_window_ms,
                "max_queue": max(requests, 64),
            }
        )
        t0 = time.perf_counter()
        policy, version = load_served_policy(config.model, config.registered_model)
        load_s = time.perf_counter() - t0
        recorder = None if args.no_capture else TraceRecorder("bench-serve", version)
        app = create_app(policy, config, model_version=version, recorder=recorder)
        questions = prompts(requests)
        summary: dict = {"model": version, "load_s": round(load_s, 2), "requests": requests}
        with BackgroundServer(app) as url:
            assert url.startswith("http://127.0.0.1:"), url
            asyncio.run(load(url, questions[:2], 1, args.max_tokens, deadline))  # warm-up
            for name, concurrency in (("baseline", 1), ("concurrent", args.concurrency)):
                before = app.state.queue.batches_run
                result = asyncio.run(load(url, questions, concurrency, args.max_tokens, deadline))
                result["batches"] = app.state.queue.batches_run - before
                summary[name] = result
        if recorder is not None:
            recorder.flush()
            for name in ("baseline", "concurrent"):
                ids = summary[name]["trace_ids"]
                found = sum(mlflow.get_trace(t, silent=True) is not None for t in ids if t)
                summary[name]["traced"] = found
        for name in ("baseline", "concurrent"):
            summary[name].pop("trace_ids")
        base, conc = summary["baseline"], summary["concurrent"]
        summary["throughput_ratio"] = (
            round(conc["requests_per_s"] / base["requests_per_s"], 2)
            if base["requests_per_s"]
            else None
        )
        summary["every_request_answered"] = all(
            summary[n]["answered"] == summary[n]["sent"] == requests
            for n in ("baseline", "concurrent")
        )
        if recorder is not None:
            summary["every_answer_traced"] = all(
                summary[n]["traced"] == summary[n]["answered"] for n in ("baseline", "concurrent")
            )
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
