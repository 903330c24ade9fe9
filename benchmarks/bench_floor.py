"""The compute floor of a finished `kedro run`: each stage's seconds at the machine's matmul peak.

A wall-time target means something only beside the work it asks for. This script counts, from a
finished run's own outputs, the tokens each model-running stage pushed through the model, turns
them into floating-point work and divides by this machine's measured fp32 matmul FLOP/s. The
result is the time no engine, kernel or loop change can beat on this CPU at this configuration:

* generation (evaluate, generate, the health probes): each distinct prompt once through the body
  per pass (its shared prefill), each generated token through the body and the LM head
  (2 × parameters per token; attention scores ignored), as ``bench_generate.py`` counts;
* training (sft_oracle, train): every token of every sequence forward and backward per epoch
  (6 × parameters per token, the LM head included: training computes logits at every position),
  plus DPO's reference log-probs, one forward over chosen and rejected sequences.

``--ceiling`` adds a second, tighter bound: the same work at the speed a bare model call reaches
here, measured in the same run — one decoding step at ``--gen-rows`` rows
(``bench_decode_ceiling.py``'s step) for the generated tokens, one training step (forward,
backward, AdamW) for the trained ones; prefill is still counted at the full peak. No engine or
trainer built on these calls can beat that column; the stages without model work count at their
measured wall time.

Prompt lengths are the chat template's over the task's system prompt and the user turn (the way
the stages frame them). Epochs come from the run's resolved parameters. The run's own
``stage_timings.json`` gives each stage's wall time, so the table also says how close each stage
got to its floor.

Run (heavy only for the 2-second peak measurement; take the lock)::

    OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \\
        python benchmarks/bench_floor.py --run /tmp/e2e_default
    # the first run's wall times: bench_e2e.py's stage_timings_first.json (--timings: another)
    # --ceiling: also the bound at a bare decoding and training call's measured speed
    # --peak-gflops 150: skip the measurement and use this peak
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def model_sizes(model_dir: Path) -> tuple[int, int]:
    """(body, head) parameter counts: matmul weights outside the LM head, and the LM head."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o; k, v
    mlp = 3 * hidden * config.intermediate_size  # gate, up, down
    return layers * (attention + mlp), hidden * config.vocab_size


class Lengths:
    """Token counts of chat-framed prompts and completions under the run's tokenizer."""

    def __init__(self, tokenizer_dir: Path, system_prompt: str | None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.system = system_prompt
        self._cache: dict[str, int] = {}

    def _framed(self, messages: Sequence[dict]) -> list[dict]:
        framed = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if self.system and not any(m["role"] == "system" for m in framed):
            framed = [{"role": "system", "content": self.system}, *framed]
        return framed

    def prompt(self, messages: Sequence[dict] | str) -> int:
        """Tokens of the prompt with the assistant turn opened (what generation prefills)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        key = json.dumps(list(messages), sort_keys=True, default=str)
        if key not in self._cache:
            ids = self.tokenizer.apply_chat_template(
                self._framed(messages), add_generation_prompt=True, tokenize=True
            )
            self._cache[key] = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self._cache[key]

    def completion(self, text: str) -> int:
        """Tokens of an assistant reply, its end-of-turn token included."""
        return len(self.tokenizer(str(text), add_special_tokens=False)["input_ids"]) + 1


def _messages(value) -> list[dict]:
    if isinstance(value, str):
        value = json.loads(value)
    return [dict(m) for m in value]


def _parquet(path: Path) -> pd.DataFrame:
    """A stage's table, or an empty one where the run did not write it."""
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def generation_work(
    prefill_tokens: int, generated_tokens: int, body: int, head: int
) -> dict[str, float]:
    """Inference work: prompt tokens through the body, generated ones through body and head."""
    prefill = 2.0 * body * prefill_tokens
    return {
        "prefill": prefill_tokens,
        "generated": generated_tokens,
        "trained": 0,
        "flops": prefill + 2.0 * (body + head) * generated_tokens,
        "prefill_flops": prefill,
    }


def training_work(
    items: Sequence[Sequence[int]],
    epochs: float,
    body: int,
    head: int,
    *,
    ref_forward: bool,
    max_steps: int = -1,
    batch_items: int = 1,
) -> dict[str, float]:
    """Training work over ``items`` (each its sequences' token counts: a DPO pair is two).

    ``max_steps`` (> 0) caps the items seen at ``max_steps × batch_items`` (the trainer's cap
    over any epoch count); the reference forward runs once over every item.
    """
    tokens = sum(sum(item) for item in items)
    seen = epochs * len(items)
    if max_steps > 0:
        seen = min(seen, max_steps * batch_items)
    trained = tokens * seen / len(items) if items else 0.0
    forwards = 3.0 * trained + (tokens if ref_forward else 0.0)  # forward 1, backward 2; ref 1
    return {
        "prefill": 0,
        "generated": 0,
        "trained": int(trained),
        "flops": 2.0 * (body + head) * forwards,
    }


SHARD = re.compile(r"^\w+-(greedy|sampled)-\d{4}-[0-9a-f]+\.parquet$")


def eval_shards(run: Path) -> pd.DataFrame | None:
    """Every model's evaluation shards (``evaluate/<model>/<benchmark>-<mode>-<n>-<key>``)."""
    files = sorted(
        f
        for folder in (run / "data" / "07_model_output" / "evaluate").glob("*/")
        for f in folder.glob("*.parquet")
        if SHARD.match(f.name)
    )
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None


def evaluate_tokens(run: Path, lengths: Lengths) -> tuple[int, int]:
    """Prefill (each item's prompt once per model and pass) and generated tokens of evaluate."""
    outputs = eval_shards(run)
    if outputs is None:
        return 0, 0
    passes = outputs.drop_duplicates(["model", "benchmark", "item_id", "mode"])
    prefill = sum(lengths.prompt(p) for p in passes["prompt"])
    return prefill, int(outputs["n_tokens"].sum())


def candidates_tokens(candidates: pd.DataFrame, prompts: pd.DataFrame, lengths: Lengths):
    """Prefill (each prompt once per strategy) and generated tokens of a candidates table."""
    if candidates.empty:
        return 0, 0
    messages = dict(zip(prompts["prompt_id"].astype(str), prompts["messages"], strict=True))
    groups = candidates.drop_duplicates(["prompt_id", "strategy"])
    prefill = sum(lengths.prompt(_messages(messages[str(p)])) for p in groups["prompt_id"])
    return prefill, int(candidates["n_tokens"].sum())


def load_parameters(run: Path, env: str | None) -> dict:
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(
        conf_source=str(run / "conf"), base_env="base", default_run_env=env or "local"
    )
    return dict(loader["parameters"])


def stage_work(run: Path, params: dict, lengths: Lengths, body: int, head: int) -> dict[str, dict]:
    data = run / "data"
    prompts = pd.read_parquet(data / "03_primary" / "prompts.parquet")
    work: dict[str, dict] = {}
    work["evaluate"] = generation_work(*evaluate_tokens(run, lengths), body, head)

    generated = [0, 0]
    health = [0, 0]
    for folder in sorted((data / "03_primary").glob("round_*")):
        candidates = _parquet(folder / "candidates.parquet")
        for i, n in enumerate(candidates_tokens(candidates, prompts, lengths)):
            generated[i] += n
    for probe in [
        data / "07_model_output" / "health_base_probe.parquet",
        *sorted((data / "07_model_output").glob("round_*/health_probe.parquet")),
    ]:
        for i, n in enumerate(candidates_tokens(_parquet(probe), prompts, lengths)):
            health[i] += n
    work["generate"] = generation_work(*generated, body, head)
    work["health"] = generation_work(*health, body, head)

    train = params["train"]
    oracle = data / "05_model_input" / "sft_oracle" / "examples.parquet"
    if oracle.exists():
        examples = pd.read_parquet(oracle)
        own = params.get("sft_oracle", {})
        trainer = {**train["trainer"], **own.get("trainer", {})}
        epochs = {**train["rft"], **own.get("rft", {})}["num_train_epochs"]
        items = [
            [lengths.prompt(_messages(p)) + lengths.completion(c)]
            for p, c in zip(examples["prompt"], examples["completion"], strict=True)
        ]
        work["sft_oracle"] = training_work(
            items, float(epochs), body, head, ref_forward=False, **_batching(trainer)
        )

    algorithm = train["algorithm"]
    settings = train[algorithm]
    ref = algorithm in ("dpo", "kto") and bool(settings.get("precompute_ref_log_probs", False))
    rounds = []
    for path in sorted((data / "05_model_input").glob("round_*/train_examples.parquet")):
        items = []
        for row in pd.read_parquet(path).itertuples(index=False):
            prompt = lengths.prompt(_messages(row.prompt))
            if algorithm == "dpo":
                chosen, rejected = lengths.completion(row.chosen), lengths.completion(row.rejected)
                items.append([prompt + chosen, prompt + rejected])
            elif algorithm in ("rft", "kto"):
                items.append([prompt + lengths.completion(row.completion)])
        epochs = float(settings["num_train_epochs"])
        rounds.append(
            training_work(items, epochs, body, head, ref_forward=ref, **_batching(train["trainer"]))
        )
    if rounds:  # each round's training is capped on its own
        work["train"] = {key: sum(r[key] for r in rounds) for key in rounds[0]}
    # a stage that ran nothing (no probe, no pairs) is left out
    return {stage: w for stage, w in work.items() if w["flops"] > 0}


def _batching(trainer: dict) -> dict[str, int]:
    batch = int(trainer.get("per_device_train_batch_size", 8))
    batch *= int(trainer.get("gradient_accumulation_steps", 1))
    return {"max_steps": int(trainer.get("max_steps", -1)), "batch_items": batch}


def timings_from(path: Path) -> dict[str, float]:
    """Stage wall times (and start-up) from a StageTimingHook ``stage_timings.json``."""
    data = json.loads(path.read_text())
    timings = {s["stage"]: float(s["seconds"]) for s in data["stages"]}
    if data.get("startup_seconds"):
        timings["start-up"] = float(data["startup_seconds"])
    return timings


def ceilings(model_dir: Path, gen_rows: int, train_rows: int, train_tokens: int) -> dict:
    """Shares of the peak a bare model call reaches here: a decoding step and a training step.

    Decoding: one ``model(...)`` call per step at ``gen_rows`` rows over a 64-token cache
    (``bench_decode_ceiling.py``). Training: forward, backward and an AdamW step on
    ``train_rows`` sequences of ``train_tokens`` tokens (no trainer, no data loading).
    Returns FLOP/s of each.
    """
    import statistics
    import time

    import torch
    from bench_decode_ceiling import step_seconds
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    body, head = model_sizes(model_dir)
    decode = 2.0 * (body + head) * gen_rows / step_seconds(model.eval(), gen_rows, 64, 16)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, model.config.vocab_size, (train_rows, train_tokens))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    train = 6.0 * (body + head) * train_rows * train_tokens / statistics.median(times[1:])
    return {"decode": decode, "train": train}


GENERATION = ("evaluate", "generate", "health")


def table(
    work: dict[str, dict], timings: dict[str, float], peak: float, ceiling: dict | None = None
) -> str:
    """Per stage: tokens, work, the floor at the peak (and at the bare calls' ceiling), wall."""
    at_ceiling = ceiling is not None
    head = (
        "| stage | prefill tokens | generated tokens | trained tokens | TFLOP | floor at peak (s) "
    )
    head += "| floor at bare-call ceiling (s) " if at_ceiling else ""
    lines = [head + "| wall (s) | share of peak |"]
    lines.append("| --- " * (8 + at_ceiling) + "|")
    floor_sum = ceil_sum = wall_sum = flops_sum = 0.0
    for stage, w in work.items():
        floor = w["flops"] / peak
        wall = timings.get(stage)
        floor_sum += floor
        flops_sum += w["flops"]
        wall_sum += wall or 0.0
        cells = [stage, f"{w['prefill']:,}", f"{w['generated']:,}", f"{w['trained']:,}"]
        cells += [f"{w['flops'] / 1e12:.1f}", f"{floor:.0f}"]
        if at_ceiling:
            # prefill counted at the full peak (a generous bound); decoding, training at theirs
            rest = w["flops"] - w.get("prefill_flops", 0.0)
            seconds = w.get("prefill_flops", 0.0) / peak
            seconds += rest / ceiling["decode" if stage in GENERATION else "train"]
            ceil_sum += seconds
            cells.append(f"{seconds:.0f}")
        cells += ["-" if wall is None else f"{wall:.0f}", f"{floor / wall:.1%}" if wall else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    others = sum(v for k, v in timings.items() if k not in work)
    row = ["other stages", "", "", "", "", "0"] + ([f"{others:.0f}"] if at_ceiling else [])
    lines.append("| " + " | ".join([*row, f"{others:.0f}", "-"]) + " |")
    total = wall_sum + others
    last = f"| **all** | | | | {flops_sum / 1e12:.1f} | **{floor_sum:.0f}** "
    if at_ceiling:
        last += f"| **{ceil_sum + others:.0f}** "
    lines.append(last + f"| **{total:.0f}** | {floor_sum / total:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT, help="folder of a finished kedro run")
    parser.add_argument("--env", default=None, help="the run's kedro env (default: local)")
    parser.add_argument("--model", type=Path, default=None, help="the policy's model folder")
    parser.add_argument(
        "--timings",
        type=Path,
        default=None,
        help="a stage_timings.json; default: bench_e2e.py's stage_timings_first.json in the run "
        "folder, else the run's data/08_reporting/stage_timings.json",
    )
    parser.add_argument("--peak-gflops", type=float, default=None, help="skip the measurement")
    parser.add_argument(
        "--ceiling", action="store_true", help="also measure bare decoding and training calls"
    )
    parser.add_argument("--gen-rows", type=int, default=256, help="rows of the bare decode step")
    parser.add_argument("--train-rows", type=int, default=16, help="sequences per training step")
    parser.add_argument("--train-tokens", type=int, default=64, help="tokens per sequence")
    args = parser.parse_args()

    params = load_parameters(args.run, args.env)
    model_dir = args.model or args.run / "data" / "06_models" / "base"
    body, head = model_sizes(model_dir)
    tokenizer_dir = args.run / "data" / "06_models" / "base_tokenizer"
    system = params["task"].get("system_prompt")
    lengths = Lengths(tokenizer_dir if tokenizer_dir.is_dir() else model_dir, system)
    work = stage_work(args.run, params, lengths, body, head)
    first = args.run / "stage_timings_first.json"
    default = (
        first if first.is_file() else args.run / "data" / "08_reporting" / "stage_timings.json"
    )
    timings = timings_from(args.timings or default)

    ceiling = None
    if args.peak_gflops:
        peak = args.peak_gflops * 1e9
    else:
        from bench_generate import matmul_flops

        peak = matmul_flops()
        if args.ceiling:
            ceiling = ceilings(model_dir, args.gen_rows, args.train_rows, args.train_tokens)
        peak = max(peak, matmul_flops())  # before and after, the higher: a share never flattered
    print(
        f"run={args.run} body={body / 1e6:.1f}M head={head / 1e6:.1f}M "
        f"matmul peak={peak / 1e9:.1f} GFLOP/s"
    )
    if ceiling:
        print(
            f"bare decoding step at {args.gen_rows} rows: {ceiling['decode'] / peak:.1%} of the "
            f"peak; bare training step ({args.train_rows} x {args.train_tokens} tokens, AdamW): "
            f"{ceiling['train'] / peak:.1%}"
        )
    print(table(work, timings, peak, ceiling))


if __name__ == "__main__":
    main()
