"""Trainer callbacks: per-step curves for the stage's metrics output, and the collapse guard.

Training nodes never call MLflow: :class:`StepMetricsCallback` keeps each logged value as a
``{"value", "step"}`` history that the node returns in its ``*_metrics`` output (kedro-mlflow's
``MlflowMetricsHistoryDataset`` logs it into the run).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from transformers import TrainerCallback

from taoflow.config.train import EarlyStoppingParams

_METRIC_CHARS = re.compile(r"[^0-9A-Za-z_\-. :/]")  # what MLflow accepts in a metric name


class StepMetricsCallback(TrainerCallback):
    """Per-step trainer logs → metric histories named ``<prefix>.<key>`` (step = optimizer step).

    transformers' own ``MLflowCallback`` would start and end runs and log ~200 arguments as
    params that clash across rounds; this one only records, so a round's curves
    (``train.round_1.loss``) leave through the node's metrics like every other number.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.curves: dict[str, list[dict[str, float]]] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = int(state.global_step)
        for key, value in (logs or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if np.isfinite(value):
                name = f"{self.prefix}.{_METRIC_CHARS.sub('_', key)}"
                self.curves.setdefault(name, []).append({"value": float(value), "step": step})


class CollapseEarlyStopping(TrainerCallback):
    """Stop online RL (TRL ``GRPOTrainer``) when reward rises while entropy collapses.

    GRPO in TRL 1.16 logs ``reward`` (mean reward of the step's completions) and ``entropy`` (mean
    per-token entropy of the policy on them) at every logging step. The baseline is the mean of the
    first ``baseline_logs`` training logs; training stops once, for ``patience`` consecutive logs,
    ``reward - baseline ≥ reward_rise`` and ``entropy ≤ entropy_ratio × baseline`` (why those
    thresholds: docs/calibration.md).

    After training, read ``stopped`` / ``reason`` / ``stopped_step`` or :meth:`summary` (for the
    policy lineage and metrics); ``history`` keeps the watched values of every log.
    """

    def __init__(
        self,
        *,
        reward_rise: float = 0.2,
        entropy_ratio: float = 0.5,
        patience: int = 2,
        baseline_logs: int = 2,
        reward_key: str = "reward",
        entropy_key: str = "entropy",
        enabled: bool = True,
    ) -> None:
        if patience < 1 or baseline_logs < 1:
            raise ValueError("CollapseEarlyStopping: patience and baseline_logs must be ≥ 1")
        self.reward_rise = reward_rise
        self.entropy_ratio = entropy_ratio
        self.patience = patience
        self.baseline_logs = baseline_logs
        self.reward_key = reward_key
        self.entropy_key = entropy_key
        self.enabled = enabled
        self.history: list[dict[str, float]] = []
        self.baseline: dict[str, float] | None = None
        self.stopped = False
        self.reason: str | None = None
        self.stopped_step: int | None = None
        self._strikes = 0

    @classmethod
    def from_config(
        cls, config: EarlyStoppingParams | Mapping[str, Any] | None
    ) -> CollapseEarlyStopping:
        """Build from ``params:train.early_stopping`` (unknown keys are an error, not ignored)."""
        if isinstance(config, EarlyStoppingParams):
            return cls(**config.model_dump())
        return cls(**dict(config or {}))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        reward, entropy = _num(logs.get(self.reward_key)), _num(logs.get(self.entropy_key))
        if reward is None or entropy is None:
            return control  # eval logs ("eval_" keys) or the final train summary
        if not self.history:
            # Resumed from a checkpoint: replay the logs before this one (the trainer appends the
            # current log to ``log_history`` before calling back), so the baseline is the run's.
            for entry in (getattr(state, "log_history", None) or [])[:-1]:
                before = _num(entry.get(self.reward_key)), _num(entry.get(self.entropy_key))
                if None not in before:
                    self._observe(int(entry.get("step", len(self.history))), *before)
        step = int(getattr(state, "global_step", len(self.history)))
        if self._observe(step, reward, entropy) and self.enabled:
            self.stopped = True
            control.should_training_stop = True
        return control

    def _observe(self, step: int, reward: float, entropy: float) -> bool:
        """Record one log; True when it completes ``patience`` collapsing logs in a row."""
        self.history.append({"step": step, "reward": reward, "entropy": entropy})
        if len(self.history) <= self.baseline_logs:
            first = self.history
            self.baseline = {
                "reward": float(np.mean([h["reward"] for h in first])),
                "entropy": float(np.mean([h["entropy"] for h in first])),
            }
            return False
        if self.reason is not None or self.baseline is None:
            return False
        rise = reward - self.baseline["reward"]
        ratio = _ratio(entropy, self.baseline["entropy"])
        if rise >= self.reward_rise and ratio is not None and ratio <= self.entropy_ratio:
            self._strikes += 1
        else:
            self._strikes = 0
        if self._strikes < self.patience:
            return False
        self.reason = (
            f"collapse at step {step}: {self.reward_key} {self.baseline['reward']:.3f} → "
            f"{reward:.3f} (+{rise:.3f} ≥ {self.reward_rise}) while {self.entropy_key} "
            f"{self.baseline['entropy']:.3f} → {entropy:.3f} (×{ratio:.2f} ≤ "
            f"{self.entropy_ratio}) for {self.patience} log(s)"
        )
        self.stopped_step = step
        return True

    def summary(self) -> dict[str, Any]:
        """What the train node records in the policy lineage (and, numerically, in metrics)."""
        last = self.history[-1] if self.history else {}
        return {
            "stopped": self.stopped,
            "reason": self.reason,
            "stopped_step": self.stopped_step,
            "baseline_reward": (self.baseline or {}).get("reward"),
            "baseline_entropy": (self.baseline or {}).get("entropy"),
            "last_reward": last.get("reward"),
            "last_entropy": last.get("entropy"),
            "n_logs": len(self.history),
        }


def _num(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference
