"""TRL / PEFT wiring: the TRL config and trainer for the configured algorithm, LoRA, ``train_policy``.

Offline algorithms train on candidates already generated and scored: ``dpo`` (preference pairs →
``DPOTrainer``), ``rft`` (best candidates → ``SFTTrainer``), ``kto`` (unpaired desirable /
undesirable → ``KTOTrainer``). ``grpo`` is online: ``GRPOTrainer`` samples fresh completions and
scores them with the score stage's scorers (:mod:`taoflow.training.rewards`).
"""

from __future__ import annotations

import copy
import logging
import re
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from taoflow.config.launch import LaunchParams
from taoflow.config.train import LoraParams, TrainParams, trl_config_class
from taoflow.core.ids import derive_seed
from taoflow.core.text import as_messages
from taoflow.models import Policy
from taoflow.training.callbacks import StepMetricsCallback
from taoflow.training.checkpoints import (
    checkpoint_dir,
    cleanup_checkpoints,
    prepare_checkpoint_dir,
    run_key,
)

logger = logging.getLogger(__name__)

# How taoflow runs every trainer (defaults a YAML knob of the same name may override):
# per-step logs leave through StepMetricsCallback, not a reporting integration.
WIRING: dict[str, Any] = {
    "save_strategy": "steps",
    "report_to": "none",
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}
# rft trains prompt/completion rows on the completion only, one example per sequence.
ALGORITHM_WIRING: dict[str, dict[str, Any]] = {
    "rft": {"packing": False, "completion_only_loss": True},
}
# Logged values kept as final_<key> run metrics.
FINAL_LOG_KEYS = (
    "rewards/margins",
    "rewards/accuracies",
    "kl",
    "reward",
    "entropy",
    "mean_token_accuracy",
)
Curves = dict[str, list[dict[str, float]]]


def check_lora_targets(model: Any, target_modules: Sequence[str] | str) -> None:
    """Fail before training when a LoRA target names no module (PEFT would error deep inside)."""
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):
        if target_modules == "all-linear" or any(re.fullmatch(target_modules, n) for n in names):
            return
        missing = [target_modules]
    else:
        missing = [
            t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in names)
        ]
    if missing:
        import torch

        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ValueError(
            f"train.lora.target_modules {missing} match no module of {type(model).__name__}; "
            f"its linear layers are {linear}."
        )


def lora_config(settings: LoraParams) -> Any:
    """``peft.LoraConfig`` from ``train.lora`` (other LoraConfig fields pass through as set)."""
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
        **settings.passthrough(),
    )


def trl_config(settings: TrainParams, output_dir: Path, seed: int, *, peft: bool) -> Any:
    """The active algorithm's TRL config: wiring, then the YAML's knobs, then this run's own.

    With LoRA the reference model of dpo/kto is the adapter-disabled model, so reference
    log-probs are never precomputed.
    """
    kwargs = {**WIRING, **ALGORITHM_WIRING.get(settings.algorithm, {})}
    kwargs.update(settings.trl_values())
    if peft and settings.algorithm in ("dpo", "kto"):
        kwargs["precompute_ref_log_probs"] = False
    kwargs.update(output_dir=str(output_dir), seed=seed, data_seed=seed)
    return trl_config_class(settings.algorithm)(**kwargs)


def _assistant(texts: Iterable[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": str(t)}] for t in texts]


def _dataset(settings: TrainParams, examples: pd.DataFrame) -> Any:
    """The trainer's dataset in TRL's conversational prompt/completion (or pair) format."""
    from datasets import Dataset

    prompts = [as_messages(p) for p in examples["prompt"]]
    if settings.algorithm == "dpo":
        columns = {
            "chosen": _assistant(examples["chosen"]),
            "rejected": _assistant(examples["rejected"]),
        }
    elif settings.algorithm == "rft":
        columns = {"completion": _assistant(examples["completion"])}
    elif settings.algorithm == "kto":
        columns = {
            "completion": _assistant(examples["completion"]),
            "label": [bool(x) for x in examples["label"]],
        }
    else:
        columns = {"prompt_id": [str(p) for p in examples["prompt_id"]]}
    return Dataset.from_dict({"prompt": prompts, **columns})


def build_trainer(
    policy: Policy,
    examples: pd.DataFrame,
    *,
    settings: TrainParams,
    output_dir: Path,
    seed: int,
    callbacks: list[Any],
    reward_fn: Callable[..., list[float]] | None,
    reference: Policy | None = None,
) -> Any:
    """The TRL trainer for the configured algorithm, with its config and dataset.

    Without ``reference`` no ``ref_model`` is passed: with LoRA the adapter-disabled model is
    the reference (no copy in memory); in full fine-tuning dpo/kto precompute reference
    log-probs up front with the model before training. With ``reference`` (dpo,
    ``train.dpo_reference: initial``) that model is DPO's ``ref_model``; TRL precomputes the
    log-probs with it when ``precompute_ref_log_probs`` is on.
    """
    import trl

    peft_config = lora_config(settings.lora) if settings.lora.enabled else None
    if settings.algorithm == "grpo" and reward_fn is None:
        raise ValueError("train.algorithm=grpo needs a reward function (the scoring stage's)")
    config = trl_config(settings, output_dir, seed, peft=peft_config is not None)
    common = {
        "model": policy.model,
        "processing_class": policy.tokenizer,
        "callbacks": callbacks,
        "peft_config": peft_config,
        "args": config,
        "train_dataset": _dataset(settings, examples),
    }
    trainers = {"dpo": "DPOTrainer", "rft": "SFTTrainer", "kto": "KTOTrainer"}
    if settings.algorithm == "grpo":
        return trl.GRPOTrainer(reward_funcs=[reward_fn], **common)
    if reference is not None:
        if settings.algorithm != "dpo":
            raise ValueError(f"a reference policy is a dpo option, not {settings.algorithm}'s")
        if reference.model is policy.model:
            raise ValueError("the reference policy must be a separate copy of the model")
        reference.model.eval()
        common["ref_model"] = reference.model
    return getattr(trl, trainers[settings.algorithm])(**common)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_policy(
    policy: Policy,
    examples: pd.DataFrame,
    settings: TrainParams,
    *,
    seed: int,
    round_: int,
    data_hashes: dict[str, str],
    reward_fn: Callable[..., list[float]] | None = None,
    callbacks: Sequence[Any] = (),
    metrics_prefix: str | None = None,
    reference: Policy | None = None,
    launch: LaunchParams | None = None,
) -> tuple[Policy, dict[str, float], Curves]:
    """Train ``policy`` (in place) on ``examples``; resume a matching interrupted run.

    Returns the trained policy — plain full weights in ``model`` (LoRA merged), the PEFT model in
    ``adapter`` when LoRA is on —, a flat dict of run numbers for the stage's metrics, and the
    per-step curves (``{name: [{"value", "step"}, ...]}``) named ``<metrics_prefix>.<log key>``
    (default prefix ``train.round_<k>``; a baseline trained in the same run passes its own so
    the histories do not interleave). ``reference`` is DPO's fixed reference model (see
    :func:`build_trainer`); None keeps TRL's own (the policy as it enters training).
    With ``launch.mode: accelerate`` the same trainer runs in an ``accelerate launch`` child
    (:mod:`taoflow.training.launch`; no ``reward_fn``/``callbacks``: they live in this process).
    """
    if launch is not None and launch.distributed:
        from taoflow.training.launch import train_policy_distributed

        if settings.algorithm != "grpo" and (reward_fn is not None or callbacks):
            raise ValueError("launch.mode=accelerate takes no reward_fn or callbacks")
        return train_policy_distributed(
            policy,
            examples,
            settings,
            launch,
            seed=seed,
            round_=round_,
            data_hashes=data_hashes,
            metrics_prefix=metrics_prefix,
            reference=reference,
        )
    trained, metrics, curves, _ = fit_policy(
        policy,
        examples,
        settings,
        seed=seed,
        round_=round_,
        data_hashes=data_hashes,
        reward_fn=reward_fn,
        callbacks=callbacks,
        metrics_prefix=metrics_prefix,
        reference=reference,
    )
    return trained, metrics, curves


def fit_policy(
    policy: Policy,
    examples: pd.DataFrame,
    settings: TrainParams,
    *,
    seed: int,
    round_: int,
    data_hashes: dict[str, str],
    reward_fn: Callable[..., list[float]] | None = None,
    callbacks: Sequence[Any] = (),
    metrics_prefix: str | None = None,
    reference: Policy | None = None,
) -> tuple[Policy, dict[str, float], Curves, Any]:
    """:func:`train_policy` in this process, also returning the TRL trainer (its saving under
    FSDP/ZeRO-3 gathers sharded weights). Under ``accelerate launch`` only rank 0 touches the
    checkpoint folder."""
    from transformers import set_seed

    if settings.lora.enabled:
        check_lora_targets(policy.model, settings.lora.target_modules)
    train_seed = derive_seed(seed, round_, "train")
    set_seed(train_seed)
    config_hash = settings.config_hash(seed)
    directory = checkpoint_dir(settings, round_)
    last = _claim_checkpoints(directory, run_key(config_hash, data_hashes), settings.resume)
    steps = StepMetricsCallback(prefix=metrics_prefix or f"train.round_{round_}")
    policy.model.train()
    trainer = build_trainer(
        policy,
        examples,
        settings=settings,
        output_dir=directory,
        seed=train_seed,
        callbacks=[steps, *callbacks],
        reward_fn=reward_fn,
        reference=reference,
    )
    if last:
        logger.info("Resuming %s training from %s", settings.algorithm, last)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    trained = _trained_policy(policy, trainer, settings, round_)
    trained.lineage.update(
        config_hash=config_hash,
        data_hashes=dict(data_hashes),
        seed=int(seed),
        global_step=int(trainer.state.global_step),
        resumed_from=Path(last).name if last else None,
    )
    if reference is not None:
        trained.lineage["reference"] = reference.name
    metrics = _run_metrics(trainer, result, examples, wall, resumed=bool(last))
    if _rank() in (None, 0):
        cleanup_checkpoints(directory, keep=settings.keep_checkpoints)
    return trained, metrics, steps.curves, trainer


def _rank() -> int | None:
    """This process's rank under torch.distributed; None outside a process group."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def _claim_checkpoints(directory: Path, key: dict[str, str], resume: bool) -> str | None:
    """:func:`prepare_checkpoint_dir` by rank 0 alone; the others then read what it left."""
    rank = _rank()
    if rank is None:
        return prepare_checkpoint_dir(directory, key, resume)
    import torch.distributed as dist
    from transformers.trainer_utils import get_last_checkpoint

    last = prepare_checkpoint_dir(directory, key, resume) if rank == 0 else None
    dist.barrier()
    if rank != 0 and resume:
        last = get_last_checkpoint(str(directory))
    return last


def _trained_policy(policy: Policy, trainer: Any, settings: TrainParams, round_: int) -> Policy:
    """The trainer's model as a policy: LoRA merged into plain weights, the adapter kept aside."""
    trained = trainer.model
    adapter = None
    if settings.lora.enabled:
        adapter = trained if settings.lora.save_adapter else None
        merged_source = copy.deepcopy(trained) if adapter is not None else trained
        model = merged_source.merge_and_unload()
    else:
        model = trained
    model.eval()
    base = policy.lineage.get("base_model", policy.name)
    lineage = {
        "name": f"{base}-r{round_}-{settings.algorithm}",
        "base_model": base,
        "parent": policy.name,
        "round": round_,
        "algorithm": settings.algorithm,
        "lora": settings.lora.enabled,
    }
    return Policy(model=model, tokenizer=policy.tokenizer, lineage=lineage, adapter=adapter)


def _run_metrics(
    trainer: Any, result: Any, examples: pd.DataFrame, wall: float, *, resumed: bool
) -> dict[str, float]:
    last_logs: dict[str, float] = {}
    for entry in trainer.state.log_history:
        last_logs.update({k: v for k, v in entry.items() if isinstance(v, int | float)})
    metrics = {
        "n_examples": len(examples),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "wall_time_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "trainable_parameters": sum(
            p.numel() for p in trainer.model.parameters() if p.requires_grad
        ),
        "resumed": resumed,
    }
    for key in FINAL_LOG_KEYS:
        if key in last_logs:
            metrics[f"final_{key.replace('/', '_')}"] = last_logs[key]
    return metrics
