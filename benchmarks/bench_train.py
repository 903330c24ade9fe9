"""Wall time and peak memory of one default ``train`` round, per algorithm, with and without LoRA.

Workload: the project's train prompts (``data/03_primary/prompts.parquet``, written by ``ingest``;
or ``--prompts``) × ``--group-size`` candidates in the shapes the embedded model produces (bare
number, "a + b + c = s", wrong sums, a rambling line, no answer; ~45 % correct), scored by the score
stage's default scorers (majority vote + format, ``conf/base/parameters_score.yml``). Examples come
from ``conf/base/parameters_train.yml`` defaults; only the algorithm and ``lora.enabled`` vary.

Each configuration trains the embedded SmolLM2-135M in its own process (clean peak RSS), capped at
``--max-steps`` optimizer steps (``--grpo-steps`` for GRPO) to keep the measurement short. The
report gives measured seconds per step, the steps a full default round would take, the projected
full-round time (setup + steps × s/step), and peak RSS — each also as a ratio against the
baseline (rft, full fine-tuning) measured in the same run.

Run (heavy: take the shared lock)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \
        python benchmarks/bench_train.py --max-steps 8 --grpo-steps 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _conf(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / name).read_text())


def _truth(messages) -> int | None:
    text = messages[-1]["content"]
    expr = re.findall(r"-?\d+(?:\s*[-+]\s*-?\d+)+", text)
    if not expr:
        return None
    return int(eval(expr[-1], {"__builtins__": {}}))  # noqa: S307 - digits and +/- only


def build_scored(prompts: pd.DataFrame, group_size: int, seed: int = 7) -> pd.DataFrame:
    """Candidates in the generate contract with realistic shapes, scored by the default scorers."""
    from taoflow.core.text import as_messages
    from taoflow.scoring import CandidateScorer

    rng = random.Random(seed)
    rows = []
    train = prompts[prompts["split"] == "train"]
    for prompt_id, messages in zip(train["prompt_id"], train["messages"], strict=True):
        messages = as_messages(messages)
        truth = _truth(messages)
        if truth is None:
            continue
        expr = re.findall(r"-?\d+(?:\s*[-+]\s*-?\d+)+", messages[-1]["content"])[-1]
        for j in range(group_size):
            correct = rng.random() < 0.45
            value = truth if correct else truth + rng.choice([-2, -1, 1, 2, 10])
            shape = rng.random()
            if shape < 0.5:
                text, finish = f"{value}", "stop"
            elif shape < 0.8:
                text, finish = f"{expr} = {value}", "stop"
            elif shape < 0.93:
                text = f"To solve {expr}, add the numbers one at a time: the total is {value}."
                finish = "stop"
            else:
                text, finish = "Let me think about this problem step by step. First we", "length"
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "candidate_id": f"{prompt_id}-{j}",
                    "round": 1,
                    "strategy": "direct",
                    "temperature": 0.8,
                    "seed": j,
                    "completion": text,
                    "n_tokens": len(text.split()) * 2,
                    "finish_reason": finish,
                    "logprob": -float(len(text)),
                }
            )
    candidates = pd.DataFrame(rows)
    params = _conf("parameters.yml")
    with CandidateScorer(_conf("parameters_score.yml")["score"], params["task"]) as scorer:
        scored, _ = scorer.score(candidates, prompts)
    return scored


def child(args: argparse.Namespace) -> None:
    """One configuration in a fresh process: train, print a JSON line."""
    from taoflow.config.shared import TaskParams
    from taoflow.config.train import TrainParams
    from taoflow.core.ids import frame_hash
    from taoflow.models import load_policy
    from taoflow.training import (
        build_examples,
        make_grpo_reward,
        peak_rss_mb,
        scoring_reward_fn,
        train_policy,
    )

    params = _conf("parameters.yml")
    train = _conf("parameters_train.yml")["train"]
    train["algorithm"] = args.algorithm
    train["lora"]["enabled"] = args.lora
    if args.lora:  # the lora experiment env's learning rates
        lora_env = yaml.safe_load((ROOT / "conf/lora/parameters_train.yml").read_text())["train"]
        for key, block in lora_env.items():
            if isinstance(block, dict) and key != "lora":
                train[key].update(block)
    train["output_dir"] = args.workdir
    scored = pd.read_parquet(args.scored)
    prompts = pd.read_parquet(args.prompts)
    task = TaskParams.model_validate(params["task"])
    full = TrainParams.model_validate(train)
    examples, rejects = build_examples(scored, prompts, full, task)
    if args.algorithm == "grpo":
        full_steps = full.effective("max_steps")
        cap = args.grpo_steps
    else:
        per_epoch = math.ceil(len(examples) / full.effective("per_device_train_batch_size"))
        per_epoch = math.ceil(per_epoch / full.effective("gradient_accumulation_steps"))
        full_steps = math.ceil(per_epoch * full.effective("num_train_epochs"))
        cap = args.max_steps
    train["trainer"]["max_steps"] = min(cap, full_steps)
    train["trainer"]["save_steps"] = 10_000  # no mid-run checkpoint: saving is not timed here
    settings = TrainParams.model_validate(train)
    start = time.perf_counter()
    policy = load_policy("embedded", cache_dir=str(ROOT / "data/06_models"))
    load_s = time.perf_counter() - start
    scorer = reward_fn = None
    if args.algorithm == "grpo":
        scorer = scoring_reward_fn(_conf("parameters_score.yml")["score"], task)
        reward_fn = make_grpo_reward(
            scorer.score, prompts, 1, settings.effective("max_completion_length")
        )

    step_times: list[float] = []
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

    start = time.perf_counter()
    _, metrics, _ = train_policy(
        policy,
        examples,
        settings,
        seed=42,
        round_=1,
        data_hashes={"scored": frame_hash(scored)},
        reward_fn=reward_fn,
        callbacks=[StepTimer()],
    )
    total_s = time.perf_counter() - start
    if scorer is not None:
        scorer.close()
    # the first step includes warm-up (allocations, lazy inits): median of the rest
    steady = sorted(step_times[1:] or step_times)[len(step_times[1:] or step_times) // 2]
    setup_s = total_s - sum(step_times)
    print(
        "RESULT "
        + json.dumps(
            {
                "algorithm": args.algorithm,
                "lora": args.lora,
                "n_examples": len(examples),
                "n_unused_rows": len(rejects),
                "steps_measured": int(metrics["global_step"]),
                "steps_full_round": full_steps,
                "s_per_step": steady,
                "setup_s": setup_s,
                "measured_s": total_s,
                "projected_full_round_s": setup_s + full_steps * steady,
                "model_load_s": load_s,
                "peak_rss_mb": peak_rss_mb(),
                "cpu_s": time.process_time(),
                "load_avg_1m": os.getloadavg()[0],  # other work on the machine inflates s/step
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default=str(ROOT / "data/03_primary/prompts.parquet"))
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--algorithms", default="rft,dpo,kto,grpo")
    parser.add_argument("--lora", default="both", choices=["both", "on", "off"])
    parser.add_argument("--max-steps", type=int, default=8, help="cap per offline run")
    parser.add_argument("--grpo-steps", type=int, default=2, help="cap for grpo")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", help=argparse.SUPPRESS)
    parser.add_argument("--scored", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--lora-on", dest="lora_flag", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.lora = args.lora_flag
        child(args)
        return

    prompts = pd.read_parquet(args.prompts)
    start = time.perf_counter()
    scored = build_scored(prompts, args.group_size)
    print(
        f"workload: {scored['prompt_id'].nunique()} prompts x {args.group_size} candidates, "
        f"{scored['zero_signal'].mean():.0%} rows in zero-signal groups, mean reward "
        f"{scored['reward'].mean():.2f} (built and scored in {time.perf_counter() - start:.1f}s)"
    )
    loras = {"both": [False, True], "on": [True], "off": [False]}[args.lora]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        scored_path = Path(tmp) / "scored.parquet"
        scored.to_parquet(scored_path)
        for algorithm in args.algorithms.split(","):
            for lora in loras:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--algorithm",
                    algorithm,
                    "--scored",
                    str(scored_path),
                    "--prompts",
                    args.prompts,
                    "--workdir",
                    str(Path(tmp) / f"ckpt-{algorithm}-{lora}"),
                    "--max-steps",
                    str(args.max_steps),
                    "--grpo-steps",
                    str(args.grpo_steps),
                ] + (["--lora-on"] if lora else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{algorithm} lora={lora} FAILED:\n{proc.stderr[-3000:]}")
                    continue
                result = json.loads(line[-1][len("RESULT ") :])
                results.append(result)
                print(json.dumps(result))
    base = next((r for r in results if r["algorithm"] == "rft" and not r["lora"]), None)
    header = (
        f"{'algorithm':<9} {'lora':<5} {'examples':>8} {'steps':>11} {'s/step':>7} "
        f"{'full round':>11} {'peak RSS':>9} {'x time':>7} {'x RSS':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        rt = r["projected_full_round_s"] / base["projected_full_round_s"] if base else float("nan")
        rm = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
        print(
            f"{r['algorithm']:<9} {r['lora']!s:<5} {r['n_examples']:>8} "
            f"{r['steps_measured']:>4}/{r['steps_full_round']:<6} {r['s_per_step']:>7.2f} "
            f"{r['projected_full_round_s']:>10.0f}s {r['peak_rss_mb'] / 1024:>8.2f}G "
            f"{rt:>7.2f} {rm:>6.2f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
