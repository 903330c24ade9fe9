"""Trainer glue for the ``train`` stage: typed settings, example builders, TRL/PEFT wiring, resume.

The ``train`` pipeline's nodes stay thin; everything that knows about TRL, PEFT and checkpoints
lives here so it can be tested (and reused by benchmarks) without Kedro.

Offline algorithms train on candidates already generated and scored (persisted by the catalog):

* ``dpo``  — preference pairs (top-reward vs low-reward candidate of one prompt) → ``DPOTrainer``;
* ``rft``  — rejection-sampling fine-tuning on the top-k candidates above a reward → ``SFTTrainer``;
* ``kto``  — unpaired desirable / undesirable candidates by reward → ``KTOTrainer``.

``grpo`` is online: ``GRPOTrainer`` samples fresh completions of the train prompts and scores them
with the scoring stage's own ``taoflow.scoring.score_candidates``, so both paths judge alike.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import TrainerCallback

from taoflow.core.ids import derive_seed, stable_hash
from taoflow.core.text import as_messages
from taoflow.models import Policy

logger = logging.getLogger(__name__)

ALGORITHMS = ("dpo", "rft", "kto", "grpo")
RUN_FILE = "taoflow_run.json"  # beside the checkpoints: which config + data they belong to
REJECT_COLUMNS = ["prompt_id", "candidate_id", "round", "reason"]
_METRIC_CHARS = re.compile(r"[^0-9A-Za-z_\-. :/]")  # what MLflow accepts in a metric name


# --------------------------------------------------------------------------------------------
# Settings: one typed dataclass per block of parameters_train.yml (meanings documented there;
# the defaults here are the same, a test keeps them in sync).
# --------------------------------------------------------------------------------------------


def _from_mapping(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Build a settings dataclass, rejecting unknown keys by name (a typo must not be ignored)."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True)
class TrainerSettings:
    """Knobs every algorithm shares (mapped onto ``transformers.TrainingArguments``)."""

    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    max_steps: int = -1
    warmup_steps: float = 0.1
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 25
    save_total_limit: int = 1
    use_cpu: bool = True
    bf16: bool = False


@dataclass(frozen=True)
class DPOSettings:
    """``train.dpo``: preference pairs and DPOTrainer knobs."""

    learning_rate: float = 5e-6
    num_train_epochs: float = 1.0
    beta: float = 0.1
    loss_type: tuple[str, ...] = ("sigmoid",)
    min_margin: float = 0.5
    pairs_per_prompt: int = 1
    allow_truncated_chosen: bool = False
    precompute_ref_log_probs: bool = True


@dataclass(frozen=True)
class RFTSettings:
    """``train.rft``: which candidates are distilled, and SFTTrainer knobs."""

    learning_rate: float = 3e-5
    num_train_epochs: float = 2.0
    min_reward: float = 0.5
    top_k: int = 1
    dedupe: bool = False
    skip_zero_signal: bool = False
    allow_truncated: bool = False


@dataclass(frozen=True)
class KTOSettings:
    """``train.kto``: desirable/undesirable labelling and KTOTrainer knobs."""

    learning_rate: float = 5e-6
    num_train_epochs: float = 1.0
    beta: float = 0.1
    threshold: float = 0.5
    max_per_prompt: int = 2
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    skip_zero_signal: bool = False
    allow_truncated: bool = False
    precompute_ref_log_probs: bool = True


@dataclass(frozen=True)
class GRPOSettings:
    """``train.grpo``: online sampling and GRPOTrainer knobs."""

    learning_rate: float = 2e-6
    max_steps: int = 30
    beta: float = 0.04
    num_generations: int = 8
    per_device_train_batch_size: int = 16
    max_completion_length: int = 32
    temperature: float = 0.8
    top_p: float = 1.0
    loss_type: str = "dapo"
    scale_rewards: str = "group"


@dataclass(frozen=True)
class LoraSettings:
    """``train.lora``: PEFT LoRA; off means full fine-tuning."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    save_adapter: bool = True


@dataclass(frozen=True)
class TrainSettings:
    """The whole ``params:train`` block, validated before any compute."""

    algorithm: str = "dpo"
    output_dir: str = "data/06_models/checkpoints"
    resume: bool = True
    keep_checkpoints: bool = False
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    rft: RFTSettings = field(default_factory=RFTSettings)
    kto: KTOSettings = field(default_factory=KTOSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> TrainSettings:
        """Parse ``params:train``; an unknown algorithm or key is an error naming it."""
        params = dict(params or {})
        algorithm = str(params.get("algorithm", cls.algorithm)).lower()
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"train.algorithm={params.get('algorithm')!r} is not supported; choose one of "
                f"{list(ALGORITHMS)}."
            )
        blocks = {
            "trainer": TrainerSettings,
            "dpo": DPOSettings,
            "rft": RFTSettings,
            "kto": KTOSettings,
            "grpo": GRPOSettings,
            "lora": LoraSettings,
        }
        top = {k: v for k, v in params.items() if k not in blocks}
        top["algorithm"] = algorithm
        parsed = {}
        for name, block_cls in blocks.items():
            values = dict(params.get(name) or {})
            for key in ("loss_type", "target_modules"):
                if isinstance(values.get(key), list):
                    values[key] = tuple(values[key])
            if name == "dpo" and isinstance(values.get("loss_type"), str):
                values["loss_type"] = (values["loss_type"],)
            parsed[name] = _from_mapping(block_cls, values, f"train.{name}")
        settings = _from_mapping(cls, {**top, **parsed}, "train")
        settings.validate()
        return settings

    def validate(self) -> None:
        t = self.trainer
        if t.per_device_train_batch_size < 1 or t.gradient_accumulation_steps < 1:
            raise ValueError("train.trainer: batch size and gradient accumulation must be >= 1")
        if t.warmup_steps < 0 or (t.warmup_steps >= 1 and not float(t.warmup_steps).is_integer()):
            raise ValueError("train.trainer.warmup_steps: a ratio in [0, 1) or a whole step count")
        if self.algorithm == "dpo" and self.dpo.pairs_per_prompt < 1:
            raise ValueError("train.dpo.pairs_per_prompt must be >= 1")
        if self.algorithm == "rft" and self.rft.top_k < 1:
            raise ValueError("train.rft.top_k must be >= 1")
        if self.algorithm == "kto" and t.per_device_train_batch_size < 2:
            raise ValueError(
                "train.trainer.per_device_train_batch_size must be >= 2 for kto (its KL term "
                "pairs each completion with another prompt of the batch)"
            )
        if self.algorithm == "grpo":
            g = self.grpo
            if g.num_generations < 2:
                raise ValueError(
                    "train.grpo.num_generations must be >= 2 (advantages are relative)"
                )
            if g.per_device_train_batch_size % g.num_generations:
                raise ValueError(
                    f"train.grpo.per_device_train_batch_size={g.per_device_train_batch_size} must be "
                    f"a multiple of num_generations={g.num_generations} (it counts completions)"
                )

    @property
    def algo(self) -> DPOSettings | RFTSettings | KTOSettings | GRPOSettings:
        return getattr(self, self.algorithm)

    def config_hash(self, seed: int) -> str:
        """What decides the trained weights, besides the data: the active algorithm's blocks + seed."""
        return stable_hash(
            {
                "algorithm": self.algorithm,
                "trainer": asdict(self.trainer),
                self.algorithm: asdict(self.algo),
                "lora": asdict(self.lora),
                "seed": int(seed),
            }
        )


# --------------------------------------------------------------------------------------------
# Inputs: hashing, lineage checks, prompt framing.
# --------------------------------------------------------------------------------------------


def scored_round(scored: pd.DataFrame) -> int:
    """The single round the scored rows belong to (an error if they mix rounds or lack one)."""
    if "round" not in scored.columns:
        raise ValueError("scored: column 'round' is missing (DESIGN.md {round}.scored contract)")
    rounds = sorted({int(r) for r in scored["round"].dropna().unique()})
    if len(rounds) != 1:
        raise ValueError(f"scored: rows must come from one round, found rounds {rounds}")
    return rounds[0]


def check_lineage(scored: pd.DataFrame, lineage: dict[str, Any]) -> int:
    """Fail fast when the scored candidates were not generated by (the round after) this policy.

    Training a policy on another model's candidates silently mixes lineages; the round number and,
    where the generate stage records them, the base-model / policy names must agree.
    Returns the round being trained.
    """
    round_ = scored_round(scored)
    expected = int(lineage.get("round", 0)) + 1
    if round_ != expected:
        raise ValueError(
            f"scored rows are from round {round_}, but the input policy "
            f"{lineage.get('name')!r} is round {expected - 1} (it generates round {expected}): "
            "the candidates were not generated by this policy."
        )
    for column, key in (("base_model", "base_model"), ("policy_name", "name")):
        if column in scored.columns and lineage.get(key):
            found = sorted({str(v) for v in scored[column].dropna().unique()})
            if found and found != [str(lineage[key])]:
                raise ValueError(
                    f"scored.{column} is {found}, but the input policy's {key} is "
                    f"{lineage[key]!r}: the scored data comes from a different model."
                )
    return round_


def prompt_messages(messages: Any, task: dict[str, Any] | None) -> list[dict[str, str]]:
    """The chat the policy is trained to answer: the prompt framed by the task's default system.

    Strategy variants used while generating (other system prompts, appended instructions) are
    deliberately not reproduced: TAO distils what they found into the plain prompt, so the tuned
    model answers better at the original inference cost.
    """
    from taoflow.generation import frame_conversation

    return frame_conversation(
        as_messages(messages), default_system=(task or {}).get("system_prompt")
    )


def _check_scored(scored: pd.DataFrame, prompts: pd.DataFrame) -> None:
    required = ["prompt_id", "candidate_id", "round", "completion", "reward"]
    missing = [c for c in required if c not in scored.columns]
    if missing:
        raise ValueError(f"scored: missing column(s) {missing}; has {sorted(scored.columns)}")
    for column in ("prompt_id", "messages"):
        if column not in prompts.columns:
            raise ValueError(f"prompts: missing column {column!r}")
    dup = scored["candidate_id"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(
            f"scored: candidate_id {scored['candidate_id'].iloc[row]!r} repeats (row {row}); "
            "candidate ids must be unique"
        )


def _usable_candidates(
    scored: pd.DataFrame, prompts: pd.DataFrame
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Rows with a known train prompt, a completion and a finite reward; the rest with reasons."""
    _check_scored(scored, prompts)
    frame = scored.copy()
    known = set(prompts["prompt_id"])
    holdout = (
        set(prompts.loc[prompts["split"].astype(str) == "holdout", "prompt_id"])
        if "split" in prompts.columns
        else set()
    )
    reward = pd.to_numeric(frame["reward"], errors="coerce")
    completion = frame["completion"].fillna("").astype(str)
    reasons = pd.Series(None, index=frame.index, dtype=object)
    reasons[~frame["prompt_id"].isin(known)] = "prompt_id not in prompts"
    reasons[reasons.isna() & frame["prompt_id"].isin(holdout)] = "holdout prompt (never trained on)"
    reasons[reasons.isna() & ~np.isfinite(reward.to_numpy(dtype=float))] = "reward is missing/NaN"
    reasons[reasons.isna() & (completion.str.strip() == "")] = "empty completion"
    bad = reasons.notna()
    rejects = [_rejects(frame[bad], reasons[bad])]
    usable = frame[~bad].copy()
    usable["reward"] = reward[~bad].astype(float)
    usable["completion"] = completion[~bad]
    usable["truncated"] = (
        usable["finish_reason"].astype(str).eq("length")
        if "finish_reason" in usable.columns
        else False
    )
    return usable, rejects


def _rejects(rows: pd.DataFrame, reason: str | pd.Series) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "prompt_id": rows["prompt_id"].astype(str).to_numpy(),
            "candidate_id": rows["candidate_id"].astype(str).to_numpy(),
            "round": rows["round"].astype(int).to_numpy(),
        }
    )
    out["reason"] = reason.to_numpy() if isinstance(reason, pd.Series) else reason
    return out


def _is_zero_signal(group: pd.DataFrame) -> bool:
    """No within-group contrast: the scorer flagged it, or every reward is the same."""
    flagged = "zero_signal" in group.columns and bool(group["zero_signal"].fillna(False).any())
    return flagged or group["reward"].nunique() <= 1


def _ranked(group: pd.DataFrame) -> pd.DataFrame:
    """Best first; ties broken by candidate id so the choice never depends on row order."""
    return group.sort_values(["reward", "candidate_id"], ascending=[False, True], kind="mergesort")


# --------------------------------------------------------------------------------------------
# Example builders (pure): scored candidates → training rows + rejects with reasons.
# --------------------------------------------------------------------------------------------


def build_dpo_pairs(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    settings: DPOSettings,
    task: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Preference pairs within each prompt's group: i-th best vs i-th worst, gap ≥ ``min_margin``.

    Zero-signal groups give no pair (no preference to learn); equal rewards are never paired,
    whatever the margin; a truncated candidate is never the chosen one unless allowed.
    """
    usable, rejects = _usable_candidates(scored, prompts)
    messages = prompts.set_index("prompt_id")["messages"]
    rows = []
    for prompt_id, group in usable.groupby("prompt_id", sort=True):
        if _is_zero_signal(group):
            rejects.append(_rejects(group, "zero-signal group"))
            continue
        ranked = _ranked(group)
        chosen_pool = ranked if settings.allow_truncated_chosen else ranked[~ranked["truncated"]]
        worst = ranked.iloc[::-1]
        used: set[str] = set()
        for i in range(min(settings.pairs_per_prompt, len(chosen_pool), len(worst))):
            chosen, rejected = chosen_pool.iloc[i], worst.iloc[i]
            gap = float(chosen["reward"]) - float(rejected["reward"])
            if chosen["candidate_id"] in used or rejected["candidate_id"] in used:
                break
            if gap <= 0 or gap < settings.min_margin:
                break
            used.update((chosen["candidate_id"], rejected["candidate_id"]))
            rows.append(
                {
                    "prompt_id": str(prompt_id),
                    "round": int(chosen["round"]),
                    "prompt": prompt_messages(messages[prompt_id], task),
                    "chosen": chosen["completion"],
                    "rejected": rejected["completion"],
                    "chosen_id": str(chosen["candidate_id"]),
                    "rejected_id": str(rejected["candidate_id"]),
                    "chosen_reward": float(chosen["reward"]),
                    "rejected_reward": float(rejected["reward"]),
                }
            )
        unused = group[~group["candidate_id"].isin(used)]
        if len(unused):
            rejects.append(_rejects(unused, f"not paired (gap < min_margin={settings.min_margin})"))
    columns = ["prompt_id", "round", "prompt", "chosen", "rejected", "chosen_id", "rejected_id"]
    pairs = pd.DataFrame(rows, columns=[*columns, "chosen_reward", "rejected_reward"])
    rejects_df = _concat_rejects(rejects)
    if pairs.empty:
        groups = usable["prompt_id"].nunique()
        gaps = usable.groupby("prompt_id")["reward"].agg(lambda r: r.max() - r.min())
        raise ValueError(
            f"train.dpo: no preference pairs with reward gap >= min_margin={settings.min_margin} "
            f"among {groups} usable prompt groups (largest gap {gaps.max() if len(gaps) else 'n/a'}; "
            f"{len(scored)} scored rows, {len(rejects_df)} unusable/unpaired). Lower "
            "train.dpo.min_margin, score with more contrast, or pick train.algorithm=rft/kto."
        )
    return pairs, rejects_df


def build_rft_examples(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    settings: RFTSettings,
    task: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best-of-N distillation: per prompt, the top-k candidates with reward ≥ ``min_reward``."""
    usable, rejects = _usable_candidates(scored, prompts)
    messages = prompts.set_index("prompt_id")["messages"]
    rows = []
    for prompt_id, group in usable.groupby("prompt_id", sort=True):
        if settings.skip_zero_signal and _is_zero_signal(group):
            rejects.append(_rejects(group, "zero-signal group"))
            continue
        ranked = _ranked(group)
        keep = ranked["reward"] >= settings.min_reward
        if not settings.allow_truncated:
            keep &= ~ranked["truncated"]
        if settings.dedupe:
            keep &= ~ranked["completion"].str.strip().duplicated()
        selected = ranked[keep].head(settings.top_k)
        for _, cand in selected.iterrows():
            rows.append(
                {
                    "prompt_id": str(prompt_id),
                    "round": int(cand["round"]),
                    "prompt": prompt_messages(messages[prompt_id], task),
                    "completion": cand["completion"],
                    "candidate_id": str(cand["candidate_id"]),
                    "reward": float(cand["reward"]),
                }
            )
        rest = group[~group["candidate_id"].isin(selected["candidate_id"])]
        if len(rest):
            rejects.append(
                _rejects(
                    rest,
                    f"not selected (reward < {settings.min_reward}, truncated, duplicate or "
                    f"beyond top_k={settings.top_k})",
                )
            )
    columns = ["prompt_id", "round", "prompt", "completion", "candidate_id", "reward"]
    examples = pd.DataFrame(rows, columns=columns)
    if examples.empty:
        raise ValueError(
            f"train.rft: no candidate has reward >= min_reward={settings.min_reward} "
            f"({len(scored)} scored rows). Lower train.rft.min_reward or check the scorers."
        )
    return examples, _concat_rejects(rejects)


def build_kto_examples(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    settings: KTOSettings,
    task: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Unpaired examples: desirable when reward ≥ ``threshold``, undesirable otherwise.

    Unlike DPO, a group whose candidates all agree still teaches something, so zero-signal
    groups are kept unless ``skip_zero_signal``.
    """
    usable, rejects = _usable_candidates(scored, prompts)
    messages = prompts.set_index("prompt_id")["messages"]
    rows = []
    for prompt_id, group in usable.groupby("prompt_id", sort=True):
        if settings.skip_zero_signal and _is_zero_signal(group):
            rejects.append(_rejects(group, "zero-signal group"))
            continue
        ranked = _ranked(group)
        desirable = ranked["reward"] >= settings.threshold
        eligible = ranked[~(desirable & ranked["truncated"]) | settings.allow_truncated]
        # Alternate best and worst so a per-prompt cap keeps both labels.
        n = len(eligible)
        order = list(
            dict.fromkeys(
                i for pair in zip(range(n), reversed(range(n)), strict=True) for i in pair
            )
        )
        selected = eligible.iloc[order[: settings.max_per_prompt]]
        for _, cand in selected.iterrows():
            rows.append(
                {
                    "prompt_id": str(prompt_id),
                    "round": int(cand["round"]),
                    "prompt": prompt_messages(messages[prompt_id], task),
                    "completion": cand["completion"],
                    "label": bool(cand["reward"] >= settings.threshold),
                    "candidate_id": str(cand["candidate_id"]),
                    "reward": float(cand["reward"]),
                }
            )
        rest = group[~group["candidate_id"].isin(selected["candidate_id"])]
        if len(rest):
            rejects.append(
                _rejects(
                    rest,
                    f"not selected (truncated or beyond max_per_prompt={settings.max_per_prompt})",
                )
            )
    columns = ["prompt_id", "round", "prompt", "completion", "label", "candidate_id", "reward"]
    examples = pd.DataFrame(rows, columns=columns)
    if examples.empty:
        raise ValueError(f"train.kto: no usable candidates among {len(scored)} scored rows")
    return examples, _concat_rejects(rejects)


def build_grpo_prompts(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    settings: GRPOSettings,
    task: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The online path samples its own completions: one row per train prompt of this round."""
    usable, rejects = _usable_candidates(scored, prompts)
    messages = prompts.set_index("prompt_id")["messages"]
    ids = sorted(usable["prompt_id"].astype(str).unique())
    round_ = int(usable["round"].iloc[0]) if len(usable) else 0
    examples = pd.DataFrame(
        {
            "prompt_id": ids,
            "round": [round_] * len(ids),
            "prompt": [prompt_messages(messages[p], task) for p in ids],
        },
        columns=["prompt_id", "round", "prompt"],
    )
    if examples.empty:
        raise ValueError(f"train.grpo: no usable train prompts among {len(scored)} scored rows")
    return examples, _concat_rejects(rejects)


def _concat_rejects(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REJECT_COLUMNS}).astype(
            {"round": "int64"}
        )
    return pd.concat(parts, ignore_index=True)[REJECT_COLUMNS]


BUILDERS: dict[str, Callable[..., tuple[pd.DataFrame, pd.DataFrame]]] = {
    "dpo": build_dpo_pairs,
    "rft": build_rft_examples,
    "kto": build_kto_examples,
    "grpo": build_grpo_prompts,
}


def build_examples(
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    settings: TrainSettings,
    task: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dispatch to the active algorithm's builder."""
    return BUILDERS[settings.algorithm](scored, prompts, settings.algo, task)


# --------------------------------------------------------------------------------------------
# TRL / PEFT wiring.
# --------------------------------------------------------------------------------------------


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


def _lora_config(settings: LoraSettings):
    from peft import LoraConfig

    targets = (
        settings.target_modules
        if isinstance(settings.target_modules, str)
        else list(settings.target_modules)
    )
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def _common_args(settings: TrainSettings, output_dir: Path, seed: int) -> dict[str, Any]:
    t = settings.trainer
    algo = settings.algo
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": algo.learning_rate,
        "num_train_epochs": getattr(algo, "num_train_epochs", 1.0),
        "max_steps": getattr(algo, "max_steps", t.max_steps) if t.max_steps < 0 else t.max_steps,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "gradient_checkpointing": t.gradient_checkpointing,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "use_cpu": t.use_cpu,
        "bf16": t.bf16,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",  # MlflowStepCallback logs into the run Kedro opened instead
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


def _build_trainer(
    policy: Policy,
    examples: pd.DataFrame,
    *,
    settings: TrainSettings,
    output_dir: Path,
    seed: int,
    callbacks: list[Any],
    reward_fn: Callable[..., list[float]] | None,
):
    """The TRL trainer for the configured algorithm, with its config and dataset."""
    from datasets import Dataset

    args = _common_args(settings, output_dir, seed)
    max_length = settings.trainer.max_length
    peft_config = _lora_config(settings.lora) if settings.lora.enabled else None
    prompts = [as_messages(p) for p in examples["prompt"]]

    def assistant(texts: Iterable[str]) -> list[list[dict[str, str]]]:
        return [[{"role": "assistant", "content": str(t)}] for t in texts]

    common = {
        "model": policy.model,
        "processing_class": policy.tokenizer,
        "callbacks": callbacks,
        "peft_config": peft_config,
    }
    if settings.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        d = settings.dpo
        data = Dataset.from_dict(
            {
                "prompt": prompts,
                "chosen": assistant(examples["chosen"]),
                "rejected": assistant(examples["rejected"]),
            }
        )
        config = DPOConfig(
            **args,
            beta=d.beta,
            loss_type=list(d.loss_type),
            max_length=max_length,
            precompute_ref_log_probs=d.precompute_ref_log_probs and peft_config is None,
        )
        # ref_model=None: with LoRA the adapter-disabled model is the reference (no copy in
        # memory); in full fine-tuning the reference log-probs are precomputed once, up front.
        return DPOTrainer(args=config, train_dataset=data, **common)
    if settings.algorithm == "rft":
        from trl import SFTConfig, SFTTrainer

        data = Dataset.from_dict(
            {"prompt": prompts, "completion": assistant(examples["completion"])}
        )
        config = SFTConfig(**args, max_length=max_length, packing=False, completion_only_loss=True)
        return SFTTrainer(args=config, train_dataset=data, **common)
    if settings.algorithm == "kto":
        from trl import KTOConfig, KTOTrainer

        k = settings.kto
        data = Dataset.from_dict(
            {
                "prompt": prompts,
                "completion": assistant(examples["completion"]),
                "label": [bool(x) for x in examples["label"]],
            }
        )
        config = KTOConfig(
            **args,
            beta=k.beta,
            max_length=max_length,
            desirable_weight=k.desirable_weight,
            undesirable_weight=k.undesirable_weight,
            precompute_ref_log_probs=k.precompute_ref_log_probs and peft_config is None,
        )
        return KTOTrainer(args=config, train_dataset=data, **common)
    from trl import GRPOConfig, GRPOTrainer

    g = settings.grpo
    if reward_fn is None:
        raise ValueError("train.algorithm=grpo needs a reward function (the scoring stage's)")
    data = Dataset.from_dict(
        {"prompt": prompts, "prompt_id": [str(p) for p in examples["prompt_id"]]}
    )
    args.update(per_device_train_batch_size=g.per_device_train_batch_size)
    config = GRPOConfig(
        **args,
        beta=g.beta,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
    )
    return GRPOTrainer(reward_funcs=[reward_fn], args=config, train_dataset=data, **common)


ScoreFn = Callable[[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, Any]]


def make_grpo_reward(
    score_fn: ScoreFn, prompts: pd.DataFrame, round_: int, max_completion_length: int
) -> Callable[..., list[float]]:
    """Wrap the scoring stage as a GRPO reward: same scorers, same combination, same judgement.

    ``score_fn(candidates, prompts) -> (scored, stats)`` is the scoring stage's
    ``CandidateScorer(score_config, task).score`` (see :func:`scoring_reward_fn`). GRPO hands over
    each prompt's completions as one consecutive block; they become a candidates frame (DESIGN.md
    contract) scored together, so group-level scorers such as the majority vote work.
    """
    prompt_frame = prompts[["prompt_id", "messages"]].copy()
    calls = {"n": 0}

    def taoflow_score(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **kwargs: Any
    ) -> list[float]:
        calls["n"] += 1
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        candidates = pd.DataFrame(
            {
                "prompt_id": [str(p) for p in kwargs["prompt_id"]],
                "candidate_id": [f"grpo-{calls['n']}-{i}" for i in range(len(texts))],
                "round": round_,
                "strategy": "grpo",
                "temperature": float("nan"),
                "seed": -1,
                "completion": texts,
                "n_tokens": [len(ids) for ids in completion_ids],
                "finish_reason": [
                    "length" if len(ids) >= max_completion_length else "stop"
                    for ids in completion_ids
                ],
                "logprob": float("nan"),
            }
        )
        scored, _ = score_fn(candidates, prompt_frame)
        rewards = scored.set_index("candidate_id")["reward"].reindex(candidates["candidate_id"])
        return [float(r) if pd.notna(r) else 0.0 for r in rewards]

    return taoflow_score


def scoring_reward_fn(score_config: dict[str, Any], task: dict[str, Any]) -> Any:
    """The scoring stage's scorers, built once (models stay loaded across GRPO steps).

    Returns a ``CandidateScorer``: call ``.score`` as the ``score_fn``, ``.close()`` after.
    """
    try:
        from taoflow.scoring import CandidateScorer
    except ImportError as exc:
        raise ImportError(
            "train.algorithm=grpo scores its completions with the score stage's "
            "taoflow.scoring.CandidateScorer, which could not be imported."
        ) from exc
    return CandidateScorer(score_config or {}, task or {})


class MlflowStepCallback(TrainerCallback):
    """Per-step trainer logs → the MLflow run already active (the one kedro-mlflow opened).

    transformers' own ``MLflowCallback`` would start a run when none is active, end it at train
    end, and log ~200 ``TrainingArguments`` as params that clash across rounds. This one never
    starts or ends a run, prefixes metric names with the round (``train.round_1.loss``, step =
    optimizer step) so rounds form separate histories, and is silent when no run is active.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        values = {
            f"{self.prefix}.{_METRIC_CHARS.sub('_', key)}": float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
        }
        self.history.append({**values, "step": state.global_step})
        if values and mlflow.active_run() is not None:
            mlflow.log_metrics(values, step=int(state.global_step), synchronous=True)


def _checkpoint_dir(settings: TrainSettings, round_: int) -> Path:
    return Path(settings.output_dir) / f"round_{round_}"


def prepare_checkpoint_dir(directory: Path, run_key: dict[str, str], resume: bool) -> str | None:
    """Claim ``directory`` for this run; the last checkpoint to resume from, if it matches.

    Checkpoints of another configuration or dataset are stale: they are removed, never resumed.
    """
    from transformers.trainer_utils import get_last_checkpoint

    marker = directory / RUN_FILE
    last = None
    if directory.is_dir():
        stored = json.loads(marker.read_text()) if marker.is_file() else None
        if resume and stored == run_key:
            last = get_last_checkpoint(str(directory))
        else:
            if stored is not None or any(directory.iterdir()):
                logger.warning(
                    "Removing stale checkpoints in %s (config or data changed)", directory
                )
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(run_key, indent=2, sort_keys=True))
    return last


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_policy(
    policy: Policy,
    examples: pd.DataFrame,
    settings: TrainSettings,
    *,
    seed: int,
    round_: int,
    data_hashes: dict[str, str],
    reward_fn: Callable[..., list[float]] | None = None,
    callbacks: Sequence[Any] = (),
    metrics_prefix: str | None = None,
) -> tuple[Policy, dict[str, float]]:
    """Train ``policy`` (in place) on ``examples``; resume a matching interrupted run.

    Returns the trained policy — plain full weights in ``model`` (LoRA merged), the PEFT model in
    ``adapter`` when LoRA is on — and a flat dict of run numbers for the stage's metrics.
    ``metrics_prefix`` names the per-step MLflow histories (default ``train.round_<k>``); a
    baseline trained in the same run as the rounds (``sft_oracle``) passes its own so the
    histories do not interleave.
    """
    from transformers import set_seed

    if settings.lora.enabled:
        check_lora_targets(policy.model, settings.lora.target_modules)
    train_seed = derive_seed(seed, round_, "train")
    set_seed(train_seed)
    config_hash = settings.config_hash(seed)
    directory = _checkpoint_dir(settings, round_)
    run_key = {"config_hash": config_hash, **{f"data.{k}": v for k, v in data_hashes.items()}}
    last = prepare_checkpoint_dir(directory, run_key, settings.resume)
    mlflow_cb = MlflowStepCallback(prefix=metrics_prefix or f"train.round_{round_}")
    policy.model.train()
    trainer = _build_trainer(
        policy,
        examples,
        settings=settings,
        output_dir=directory,
        seed=train_seed,
        callbacks=[mlflow_cb, *callbacks],
        reward_fn=reward_fn,
    )
    if last:
        logger.info("Resuming %s training from %s", settings.algorithm, last)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start

    trained = trainer.model
    adapter = None
    if settings.lora.enabled:
        adapter = trained if settings.lora.save_adapter else None
        merged_source = copy.deepcopy(trained) if adapter is not None else trained
        model = merged_source.merge_and_unload()
    else:
        model = trained
    model.eval()
    n_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    lineage = {
        "name": f"{policy.lineage.get('base_model', policy.name)}-r{round_}-{settings.algorithm}",
        "base_model": policy.lineage.get("base_model", policy.name),
        "parent": policy.name,
        "round": round_,
        "algorithm": settings.algorithm,
        "lora": settings.lora.enabled,
        "config_hash": config_hash,
        "data_hashes": dict(data_hashes),
        "seed": int(seed),
        "global_step": int(trainer.state.global_step),
        "resumed_from": Path(last).name if last else None,
    }
    last_logs = {}
    for entry in trainer.state.log_history:
        last_logs.update({k: v for k, v in entry.items() if isinstance(v, int | float)})
    metrics = {
        "n_examples": len(examples),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "wall_time_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "trainable_parameters": n_trainable,
        "resumed": bool(last),
    }
    for key in (
        "rewards/margins",
        "rewards/accuracies",
        "kl",
        "reward",
        "entropy",
        "mean_token_accuracy",
    ):
        if key in last_logs:
            metrics[f"final_{key.replace('/', '_')}"] = last_logs[key]
    if not settings.keep_checkpoints:
        shutil.rmtree(directory, ignore_errors=True)
    return Policy(
        model=model, tokenizer=policy.tokenizer, lineage=lineage, adapter=adapter
    ), metrics
