"""Peak RSS of the default's heaviest nodes on the real model, with a small workload.

    python benchmarks/bench_memory.py train --data /tmp/e2e/data --examples 48
    python benchmarks/bench_memory.py evaluate --data /tmp/e2e/data --limit 50
    python benchmarks/bench_memory.py train --data /tmp/e2e/data --release   # what the run does
    python benchmarks/bench_memory.py train --data /tmp/e2e/data --release --threshold 1048576

``--data`` is the ``data/`` folder of a finished default run (``bench_e2e.py --keep``): its base
policy, ``round_1`` training examples, benchmark and prompts. ``train`` runs the round's DPO
training (``conf/base`` train block) on the first ``--examples`` pairs; ``evaluate`` generates
one model's evaluation shards (``conf/base`` evaluate block, ``limit`` items). RSS is sampled
every 20 ms and reported per phase (training step, evaluation shard), with a hash of the trained
weights or of the outputs, so two runs (with and without ``--release``, which applies
``taoflow.memory``'s fixed mmap threshold as ``kedro run`` does) can be compared for identity.
Peak memory does not depend on CPU contention; wall and CPU times do.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "base"


class RssSampler:
    """Resident memory sampled in a thread; ``mark`` closes a phase with its own peak."""

    def __init__(self, interval: float = 0.02) -> None:
        self.peak, self.rows = 0.0, []
        self.interval = interval
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def rss_gb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 1e9

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss_gb())
            time.sleep(self.interval)

    def mark(self, phase: str) -> None:
        now = self.rss_gb()
        self.rows.append((phase, now, max(self.peak, now)))
        print(f"{phase:<40} rss {now:5.2f} GB  phase peak {self.rows[-1][2]:5.2f} GB", flush=True)
        self.peak = now


def _block(name: str) -> dict:
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())[name]


def run_train(data: Path, n: int, sampler: RssSampler) -> str:
    from transformers import TrainerCallback

    from taoflow.config.train import TrainParams
    from taoflow.models import load_policy
    from taoflow.training.trainers import fit_policy

    class Steps(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            sampler.mark("reference log-probs precomputed")

        def on_step_end(self, args, state, *rest, **kwargs):
            sampler.mark(f"step {state.global_step}")

    examples = pd.read_parquet(data / "05_model_input/round_1/train_examples.parquet").head(n)
    policy = load_policy(str(data / "06_models/base"))
    sampler.mark("policy loaded")
    with tempfile.TemporaryDirectory() as checkpoints:  # never the checkout's data/
        settings = TrainParams.model_validate({**_block("train"), "output_dir": checkpoints})
        trained, *_ = fit_policy(
            policy, examples, settings, seed=0, round_=1, data_hashes={}, callbacks=[Steps()]
        )
    digest = hashlib.sha256()
    for name, tensor in sorted(trained.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().numpy().tobytes())
    return digest.hexdigest()


def run_evaluate(data: Path, limit: int, sampler: RssSampler) -> str:
    from taoflow.config.evaluate import EvaluateParams
    from taoflow.config.generate import GenerateParams
    from taoflow.evaluation.benchmarks import SOURCE_PREFIX
    from taoflow.models import load_policy
    from taoflow.pipelines.evaluate.nodes import generate_eval_outputs

    top = yaml.safe_load((CONF / "parameters.yml").read_text())
    params = EvaluateParams.model_validate({**_block("evaluate"), "limit": limit})
    sources = {
        SOURCE_PREFIX + "benchmark": pd.read_json(data / "01_raw/benchmark.jsonl", lines=True),
        SOURCE_PREFIX + "prompts": pd.read_parquet(data / "03_primary/prompts.parquet"),
    }
    policy = load_policy(str(data / "06_models/base"))
    sampler.mark("policy loaded")
    shards = generate_eval_outputs(
        policy,
        params,
        top["task"],
        top["seed"],
        GenerateParams.model_validate(_block("generate")),
        model_name="base",
        **sources,
    )
    digest = hashlib.sha256()
    for key in sorted(shards):
        frame = shards[key]()
        sampler.mark(f"shard {key.split('-')[0]}-{key.split('-')[1]} ({len(frame)} rows)")
        digest.update(pd.util.hash_pandas_object(frame.astype(str), index=True).values.tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["train", "evaluate"])
    parser.add_argument("--data", type=Path, required=True, help="data/ of a finished default run")
    parser.add_argument("--examples", type=int, default=48, help="train: DPO pairs used")
    parser.add_argument("--limit", type=int, default=50, help="evaluate: items per benchmark")
    parser.add_argument("--release", action="store_true", help="fixed mmap threshold, as a run")
    parser.add_argument(
        "--threshold", type=int, default=None, help="with --release: memory.mmap_threshold (bytes)"
    )
    args = parser.parse_args(argv)
    sampler = RssSampler()
    if args.release:
        from taoflow.memory import MMAP_THRESHOLD, fix_mmap_threshold

        threshold = args.threshold or MMAP_THRESHOLD
        print(f"fixed mmap threshold {threshold}:", fix_mmap_threshold(threshold))
    sampler.mark("imports")
    if args.stage == "train":
        digest = run_train(args.data, args.examples, sampler)
    else:
        digest = run_evaluate(args.data, args.limit, sampler)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"peak {max(p for *_, p in sampler.rows):.2f} GB, VmHWM {usage.ru_maxrss * 1024 / 1e9:.2f} GB"
    )
    print(f"CPU user {usage.ru_utime:.1f} s, sys {usage.ru_stime:.1f} s; output sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
