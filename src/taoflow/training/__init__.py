"""Trainer glue for the ``train`` stage (and the ``sft_oracle`` baseline), usable without Kedro.

* :mod:`~taoflow.training.examples` — scored candidates → each algorithm's rows + rejects (pure);
* :mod:`~taoflow.training.gates` — which scored rows are trusted enough to train on (pure);
* :mod:`~taoflow.training.trainers` — TRL configs and trainers, LoRA, :func:`train_policy`;
* :mod:`~taoflow.training.rewards` — GRPO's reward from the score stage's scorers;
* :mod:`~taoflow.training.callbacks` — per-step curves and the collapse early stop;
* :mod:`~taoflow.training.checkpoints` — checkpoint folder, run key, resume, cleanup.
* :mod:`~taoflow.training.launch` — the trainer under ``accelerate launch`` (``launch`` block).

The ``train`` block's model is :class:`taoflow.config.train.TrainParams`.

``callbacks`` and ``trainers`` (transformers and TRL classes) are imported on first use of
one of their names, so stages that only build examples start without TRL.
"""

from importlib import import_module
from typing import Any

from taoflow.training.checkpoints import (
    RUN_FILE,
    checkpoint_dir,
    cleanup_checkpoints,
    prepare_checkpoint_dir,
    run_key,
)
from taoflow.training.examples import (
    BUILDERS,
    REJECT_COLUMNS,
    build_dpo_pairs,
    build_examples,
    build_gated_examples,
    build_grpo_prompts,
    build_kto_examples,
    build_rft_examples,
    check_lineage,
    prompt_messages,
    scored_round,
)
from taoflow.training.gates import GateOutcome, apply_gates, judge_agrees
from taoflow.training.rewards import ScoreFn, make_grpo_reward, scoring_reward_fn

_LAZY = {
    "CollapseEarlyStopping": "callbacks",
    "StepMetricsCallback": "callbacks",
    "build_trainer": "trainers",
    "check_lora_targets": "trainers",
    "lora_config": "trainers",
    "peak_rss_mb": "trainers",
    "train_policy": "trainers",
    "trl_config": "trainers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"taoflow.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILDERS",
    "REJECT_COLUMNS",
    "RUN_FILE",
    "CollapseEarlyStopping",
    "GateOutcome",
    "ScoreFn",
    "StepMetricsCallback",
    "apply_gates",
    "build_dpo_pairs",
    "build_examples",
    "build_gated_examples",
    "build_grpo_prompts",
    "build_kto_examples",
    "build_rft_examples",
    "build_trainer",
    "check_lineage",
    "check_lora_targets",
    "checkpoint_dir",
    "cleanup_checkpoints",
    "lora_config",
    "judge_agrees",
    "make_grpo_reward",
    "peak_rss_mb",
    "prepare_checkpoint_dir",
    "prompt_messages",
    "run_key",
    "scored_round",
    "scoring_reward_fn",
    "train_policy",
    "trl_config",
]
