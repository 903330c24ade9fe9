"""Training under ``accelerate launch``: a multi-process child, Kedro and MLflow in the parent.

With ``launch.mode: accelerate`` a training node hands its trainer's inputs (examples, the
resolved settings, the input model folder) to a work folder and runs
``python -m accelerate.commands.launch --config_file <launch.config_file> -m
taoflow.training.launch <spec.json>`` from the same interpreter. Every rank builds the same TRL
trainer as the in-process path (:func:`taoflow.training.trainers.fit_policy`); rank 0 saves the
trained model and writes the metrics and per-step curves; every rank records its rank, the
world size and a hash of its weights. The parent checks that the world size is the one asked
for (``accelerate launch --cpu`` silently runs one process) and that data-parallel ranks ended
with identical weights, loads the model rank 0 wrote, and returns the metrics through the node's
normal ``*_metrics`` output, so MLflow logs them once.

The child runs a *job*, ``"module:function"``, called as ``function(payload, work_dir)`` on every
rank and returning ``(result, weights_hash)``: ``result`` is rank 0's JSON-able answer (other
ranks' is ignored), ``weights_hash`` the :func:`weights_hash` of the rank's model (None where
the model is sharded: FSDP, DeepSpeed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from taoflow.config.launch import LaunchParams
from taoflow.config.train import TrainParams
from taoflow.errors import UserError
from taoflow.models import LINEAGE_FILE, Policy, read_lineage, save_policy

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
RANKS_DIR = "ranks"
LOG_FILE = "child.log"
OUTPUT_DIR = "output"
POLICY_JOB = "taoflow.training.launch:policy_job"
# accelerate distributed types whose ranks each hold the whole model (weights comparable).
REPLICATED = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_HPU")


class LaunchError(UserError, RuntimeError):
    """The ``accelerate launch`` child failed or ran other than asked; one line with its log tail."""


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of a one-machine launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_accelerate_config(launch: LaunchParams) -> dict[str, Any]:
    """The accelerate config file ``launch.config_file`` names (a clear error when missing)."""
    path = Path(launch.config_file)
    if not path.is_file():
        raise LaunchError(
            f"launch.config_file {launch.config_file!r} is not a file (from {Path.cwd()}); "
            "ship one in conf/accelerate/ or run `accelerate config`"
        )
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise LaunchError(f"launch.config_file {launch.config_file!r} is not a YAML mapping")
    return loaded


def expected_world_size(launch: LaunchParams, config: dict[str, Any]) -> int:
    """Processes the launch must run: ``launch.num_processes``, else the config file's."""
    return int(launch.num_processes or config.get("num_processes") or 1)


def accelerate_command(launch: LaunchParams, spec: Path) -> list[str]:
    """``python -m accelerate.commands.launch ... -m taoflow.training.launch <spec>``."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--config_file", str(Path(launch.config_file).resolve())]
    if launch.num_processes is not None:
        command += ["--num_processes", str(launch.num_processes)]
    command += ["--main_process_port", str(launch.main_process_port or free_port())]
    return [*command, *launch.extra_args, "-m", "taoflow.training.launch", str(spec)]


@contextlib.contextmanager
def work_folder(launch: LaunchParams) -> Iterator[Path]:
    """``launch.work_dir`` (emptied first, kept after) or a temporary folder, removed after a
    success and kept after a failure (its ``child.log`` is what the error names)."""
    if launch.work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="taoflow-launch-"))
        yield tmp
        shutil.rmtree(tmp, ignore_errors=True)
        return
    work = Path(launch.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    yield work


ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception|Interrupt)\b.*)$")


def failure_summary(log: Path, lines: int) -> str:
    """The child's first exception (the rank that crashed first: the others then fail on a
    closed connection) and the ``lines`` log lines up to it, joined on one line."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    found = [(i, m.group(1)) for i, m in enumerate(map(ERROR_LINE.match, kept)) if m]
    ranked = [i for i, line in enumerate(kept) if line.startswith("[rank")]
    end = found[0][0] + 1 if found else (ranked[-1] + 1 if ranked else len(kept))
    tail = " | ".join(kept[max(0, end - lines) : end]) or "(empty log)"
    return f"{found[0][1] if found else 'no exception in the log'}; log {log}: {tail}"


def _share_datasets_cache(work: Path) -> None:
    """Cache files of in-memory ``datasets`` named by fingerprint in one folder of the work dir.

    TRL's reference log-prob precompute (dpo, kto) broadcasts rank 0's fingerprint, has rank 0
    write ``dataset._get_cache_file_path(fingerprint)`` and every rank open that path; for an
    in-memory dataset ``datasets`` makes the name random and the folder per process, so the
    other ranks would look where nothing was written. Here every rank gets the path an on-disk
    dataset would get: ``cache-<fingerprint>.arrow``, in a folder all ranks share.
    """
    from datasets import Dataset

    folder = work / "datasets_cache"
    folder.mkdir(exist_ok=True)
    original = Dataset._get_cache_file_path  # noqa: SLF001 - patched in the child only

    def shared_path(self: Any, fingerprint: str) -> str:
        if self.cache_files:
            return original(self, fingerprint)
        return str(folder / f"cache-{fingerprint}.arrow")

    Dataset._get_cache_file_path = shared_path  # noqa: SLF001


def run_job(launch: LaunchParams, job: str, payload: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run ``job`` on every rank of an ``accelerate launch`` child; rank 0's result + checks.

    Returns rank 0's result with ``launch`` = ``{world_size, weights_hash, wall_time_s}``.
    Raises :class:`LaunchError` (one line, with the tail of the child's log) when the child
    fails, runs another number of processes than asked, or its data-parallel ranks disagree.
    """
    config = read_accelerate_config(launch)
    expected = expected_world_size(launch, config)
    spec = work / SPEC_FILE
    spec.write_text(json.dumps({"job": job, "payload": payload}, default=str))
    (work / RANKS_DIR).mkdir(exist_ok=True)
    command = accelerate_command(launch, spec)
    log = work / LOG_FILE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logger.info("launch: %s processes via %s (log: %s)", expected, launch.config_file, log)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise LaunchError(
            f"accelerate launch ({launch.config_file}) exited with {code}: "
            f"{failure_summary(log, launch.log_tail_lines)}"
        )
    checked = check_ranks(work, expected, launch)
    result_file = work / RESULT_FILE
    if not result_file.is_file():
        raise LaunchError(f"accelerate launch ({launch.config_file}): rank 0 wrote no result")
    result = json.loads(result_file.read_text())
    result["launch"] = {**checked, "wall_time_s": wall}
    return result


def check_ranks(work: Path, expected: int, launch: LaunchParams) -> dict[str, Any]:
    """Every rank reported, the world size is ``expected``, replicated weights are identical."""
    reports = [json.loads(p.read_text()) for p in sorted((work / RANKS_DIR).glob("rank_*.json"))]
    sizes = sorted({int(r["world_size"]) for r in reports})
    ranks = sorted(int(r["rank"]) for r in reports)
    if sizes != [expected] or ranks != list(range(expected)):
        raise LaunchError(
            f"accelerate launch ({launch.config_file}) ran ranks {ranks} of world size(s) {sizes}, "
            f"not {expected} processes: check the config's distributed_type (on CPU use "
            "MULTI_GPU with use_cpu: true, as conf/accelerate/ddp_cpu.yaml; MULTI_CPU, `--cpu` "
            "and FSDP on CPU run a single process)"
        )
    hashes = {r["weights_hash"] for r in reports}
    if None not in hashes and len(hashes) != 1:
        raise LaunchError(
            f"accelerate launch ({launch.config_file}): the {expected} data-parallel ranks ended "
            f"with different weights ({len(hashes)} distinct hashes)"
        )
    return {
        "world_size": expected,
        "weights_hash": hashes.pop() if len(hashes) == 1 else None,
        "distributed_type": reports[0].get("distributed_type"),
    }


def weights_hash(model: Any) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, bytes): equal iff equal weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- parent side: policies


def train_policy_distributed(
    policy: Policy,
    examples: pd.DataFrame,
    settings: TrainParams,
    launch: LaunchParams,
    *,
    seed: int,
    round_: int,
    data_hashes: dict[str, str],
    metrics_prefix: str | None = None,
    reference: Policy | None = None,
) -> tuple[Policy, dict[str, float], dict[str, list[dict[str, float]]]]:
    """:func:`taoflow.training.train_policy` run by an ``accelerate launch`` child.

    Same return values; the run numbers gain ``launch_world_size`` and ``launch_wall_time_s``
    (the child's whole life: start-up, training, saving). The input policy is left untouched.
    """
    if settings.algorithm == "grpo":
        raise LaunchError(
            "launch.mode=accelerate runs dpo, rft and kto; grpo's reward calls the scorers "
            "in the parent's process: run it with launch.mode=in_process"
        )
    config = read_accelerate_config(launch)
    if settings.lora.enabled and str(config.get("distributed_type")) not in REPLICATED:
        raise LaunchError(
            f"train.lora with {config.get('distributed_type')} ({launch.config_file}): LoRA "
            "trains under DDP configs (ddp_cpu.yaml, ddp_gpu.yaml); shard full fine-tuning only"
        )
    with work_folder(launch) as work:
        save_policy(policy, work / "input")
        if reference is not None:
            save_policy(reference, work / "reference")
        examples.to_pickle(work / "examples.pkl")
        payload = {
            "settings": settings.model_dump(mode="json", exclude_unset=True),
            "seed": int(seed),
            "round": int(round_),
            "data_hashes": dict(data_hashes),
            "metrics_prefix": metrics_prefix,
            "reference": reference is not None,
        }
        result = run_job(launch, POLICY_JOB, payload, work)
        trained = _load_trained(work / OUTPUT_DIR, policy, settings)
    metrics = dict(result["metrics"])
    metrics.update(
        launch_world_size=result["launch"]["world_size"],
        launch_wall_time_s=result["launch"]["wall_time_s"],
    )
    return trained, metrics, result["curves"]


def _load_trained(folder: Path, policy: Policy, settings: TrainParams) -> Policy:
    """The model rank 0 wrote, with its lineage; the parent's tokenizer (as in process)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    dtype = next(policy.model.parameters()).dtype
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    model.eval()
    adapter = None
    if settings.lora.enabled and settings.lora.save_adapter:
        from peft import PeftModel

        adapter = PeftModel.from_pretrained(copy.deepcopy(policy.model), folder / "adapter")
    return Policy(
        model=model, tokenizer=policy.tokenizer, lineage=read_lineage(folder), adapter=adapter
    )


# ---------------------------------------------------------------- child side


def _load_folder(folder: Path) -> Policy:
    """A policy folder as written, lineage unchanged (load_policy would add name_or_path)."""
    import torch
    from transformers import AutoModelForCausalLM

    from taoflow.models import load_tokenizer

    config = json.loads((folder / "config.json").read_text())
    dtype = getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return Policy(model=model, tokenizer=load_tokenizer(str(folder)), lineage=read_lineage(folder))


def _state() -> Any:
    """The process group accelerate launched, on CPU when there is no GPU (gloo): without
    ``cpu=True`` a CPU rank would see no distributed setup at all."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def policy_job(payload: dict[str, Any], work: Path) -> tuple[dict[str, Any], str | None]:
    """Child side of :func:`train_policy_distributed`: the in-process trainer, on every rank."""
    from taoflow.training.trainers import fit_policy

    state = _state()
    settings = TrainParams.model_validate(payload["settings"])
    policy = _load_folder(work / "input")
    reference = _load_folder(work / "reference") if payload["reference"] else None
    trained, metrics, curves, trainer = fit_policy(
        policy,
        pd.read_pickle(work / "examples.pkl"),
        settings,
        seed=payload["seed"],
        round_=payload["round"],
        data_hashes=payload["data_hashes"],
        metrics_prefix=payload["metrics_prefix"],
        reference=reference,
    )
    out = work / OUTPUT_DIR
    replicated = state.distributed_type.value in REPLICATED
    if replicated:
        if state.is_main_process:
            save_policy(trained, out)
    else:  # sharded weights: the trainer gathers them (a collective every rank joins)
        trainer.save_model(str(out))
        if state.is_main_process:
            (out / LINEAGE_FILE).write_text(
                json.dumps(trained.lineage, indent=2, sort_keys=True, default=str)
            )
    state.wait_for_everyone()
    return {"metrics": metrics, "curves": curves}, (
        weights_hash(trained.model) if replicated else None
    )


def main(argv: list[str] | None = None) -> int:
    """Entry of every rank: run the spec's job, record this rank, rank 0 writes the result."""
    import importlib

    args = sys.argv[1:] if argv is None else argv
    spec_path = Path(args[0])
    spec = json.loads(spec_path.read_text())
    work = spec_path.parent
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = _state()
    _share_datasets_cache(work)
    module, _, name = spec["job"].partition(":")
    result, digest = getattr(importlib.import_module(module), name)(spec["payload"], work)
    report = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "local_rank": state.local_process_index,
        "distributed_type": state.distributed_type.value,
        "backend": state.backend,
        "weights_hash": digest,
    }
    (work / RANKS_DIR / f"rank_{state.process_index}.json").write_text(json.dumps(report))
    if state.is_main_process:
        (work / RESULT_FILE).write_text(json.dumps(result, default=float))
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
