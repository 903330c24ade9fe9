"""Label-free health of a policy: signals, a collapse detector, an online early stop, gates.

A label-free reward can be satisfied by a wrong but *consistent* answer. Measured on this machine
(``../shared/notes/feasibility.md``): GRPO with a majority-vote reward at lr 1e-5 taught SmolLM2
to answer "7 - 2" with "7" — the training reward (agreement) rose 0.41 → 0.84 while the token
entropy fell 1.1 → 0.37 and accuracy fell 0.45 → 0.10. Nothing in the reward notices; these
signals do, without labels:

* per prompt group: distinct answers, entropy of the answer distribution, agreement (share of
  candidates on the majority answer, i.e. the majority-vote reward), unanimity;
* per candidate: mean token negative log-prob (``-logprob / n_tokens``, an estimate of the
  policy's per-token entropy on its own samples), length, hitting the token cap, and whether the
  answer copies a number/span of the prompt (the "7 - 2" → "7" hack);
* against the base model's candidates on the same prompts: the reward the base's own answers get
  under the new policy's majority, and how often the new consensus is an answer the base never
  produced.

Everything here is a pure function of data frames and dicts (no I/O), so the ``health``
pipeline, the train stage (via :class:`CollapseEarlyStopping`), the registry gate
(:func:`promotion_blocked`) and the report (:func:`health_report`) all share one definition.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from transformers import TrainerCallback

from taoflow.core.answers import extract_answer, normalize_answer, numbers_in
from taoflow.core.ids import derive_seed
from taoflow.core.text import as_messages, row_messages

# Thresholds used when a key is missing from ``params:health.thresholds``. Justified against the
# measured collapse in conf/base/parameters_health.yml; ``None`` disables a rule.
DEFAULT_THRESHOLDS: dict[str, float | int | None] = {
    "min_prompts": 4,
    "agreement_rise": 0.25,
    "entropy_ratio": 0.5,
    "copy_share_rise": 0.25,
    "length_ratio_min": 0.4,
    "max_tokens_share_rise": 0.5,
    "off_support_share": 0.7,
}

# The signals drawn in the report, with the rule (and the way its threshold maps onto the
# signal's axis) that guards each: (signal, rule, kind) where kind is "rise" (reference +
# threshold) or "ratio" (reference × threshold) or "absolute".
PLOTTED = (
    ("agreement_mean", "agreement_rise", "rise"),
    ("token_nll_mean", "entropy_ratio", "ratio"),
    ("answer_entropy_mean", "entropy_ratio", "ratio"),
    ("prompt_copy_share", "copy_share_rise", "rise"),
    ("length_mean", "length_ratio_min", "ratio"),
    ("max_tokens_share", "max_tokens_share_rise", "rise"),
    ("majority_off_base_support", "off_support_share", "absolute"),
    ("base_reward_under_policy", None, "absolute"),
)

_REQUIRED = ("prompt_id",)


# ---------------------------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def candidate_answers(
    frame: pd.DataFrame, answer_config: Mapping[str, Any] | None = None
) -> pd.Series:
    """Normalised answer of every row: the ``answer`` column when scoring made one, else extracted.

    Holdout outputs from ``evaluate`` or the health probe have no ``answer`` column; extracting
    with the task's own extractor keeps "the answer" identical to what scoring votes on.
    """
    if "answer" in frame.columns:
        raw = frame["answer"]
    elif "completion" in frame.columns:
        config = dict(answer_config or {})
        raw = frame["completion"].map(lambda text: extract_answer(text, config))
    else:
        raise ValueError(
            "health: candidates need an 'answer' or a 'completion' column "
            f"(got columns {sorted(frame.columns)})"
        )
    return raw.map(lambda a: None if _is_missing(a) else normalize_answer(str(a)))


def prompt_texts(prompts: pd.DataFrame | None) -> dict[str, str]:
    """``prompt_id`` → the user turns' text (system prompts excluded: their spans are not operands)."""
    if prompts is None or prompts.empty:
        return {}
    missing = [c for c in ("prompt_id", "messages") if c not in prompts.columns]
    if missing:
        raise ValueError(f"health: prompts lack column(s) {missing}; see the `prompts` contract")
    texts = {}
    for row, (prompt_id, messages) in enumerate(
        zip(prompts["prompt_id"], prompts["messages"], strict=True)
    ):
        turns = row_messages(messages, row, prompt_id, where="health: prompts")
        texts[str(prompt_id)] = "\n".join(m["content"] for m in turns if m["role"] == "user")
    return texts


def copies_prompt(answer: str | None, prompt_text: str | None) -> bool | None:
    """Whether ``answer`` is a span of the prompt: one of its numbers, or a whole-word substring.

    None when the question has no answer or no known prompt (counted apart, not as "no copy").
    A correct answer can coincide with an operand ("0 + 7" → 7), which is why the detector uses
    the *rise* of this share against the base, never its level.
    """
    if answer is None or prompt_text is None:
        return None
    if answer in numbers_in(prompt_text):
        return True
    if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", answer):
        return False  # a number that is not one of the prompt's numbers
    text = " ".join(prompt_text.lower().split())
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text) is not None


def _majority(counts: Counter) -> str | None:
    """Most frequent answer; ties broken by the answer text so the result is reproducible."""
    if not counts:
        return None
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def group_signals(
    frame: pd.DataFrame,
    prompts: pd.DataFrame | None = None,
    answer_config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per prompt group: size, answers, diversity, agreement, majority, copy share, length."""
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"health: candidates lack column(s) {missing}; expected the "
            "{round}.candidates / {round}.scored contract"
        )
    work = pd.DataFrame({"prompt_id": frame["prompt_id"].astype(str)})
    work["answer"] = candidate_answers(frame, answer_config).to_numpy()
    texts = prompt_texts(prompts)
    work["copy"] = [
        copies_prompt(None if _is_missing(a) else a, texts.get(p))
        for a, p in zip(work["answer"], work["prompt_id"], strict=True)
    ]
    if "n_tokens" in frame.columns:
        work["n_tokens"] = pd.to_numeric(frame["n_tokens"], errors="coerce").to_numpy()
    if "logprob" in frame.columns and "n_tokens" in frame.columns:
        logprob = pd.to_numeric(frame["logprob"], errors="coerce").to_numpy()
        n = work["n_tokens"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            nll = np.where((n > 0) & np.isfinite(logprob), -logprob / n, np.nan)
        work["token_nll"] = nll
    if "finish_reason" in frame.columns:
        work["hit_max"] = (frame["finish_reason"].astype(str) == "length").to_numpy()

    rows = []
    for prompt_id, group in work.groupby("prompt_id", sort=True):
        answered = [a for a in group["answer"] if not _is_missing(a)]
        counts = Counter(answered)
        n, n_answered = len(group), len(answered)
        probs = np.array(list(counts.values()), dtype=float) / max(n_answered, 1)
        majority = _majority(counts)
        copies = [c for c in group["copy"] if not _is_missing(c)]
        rows.append(
            {
                "prompt_id": prompt_id,
                "n": n,
                "n_answered": n_answered,
                "distinct_answers": len(counts),
                "answer_entropy": float(-(probs * np.log(probs)).sum()) if counts else np.nan,
                "majority": majority,
                "agreement": counts[majority] / n if majority is not None else 0.0,
                "unanimous": n_answered == n and len(counts) == 1,
                "copy_share": float(np.mean(copies)) if copies else np.nan,
                "known_prompt": prompt_id in texts,
                "length_mean": float(group["n_tokens"].mean()) if "n_tokens" in group else np.nan,
                "token_nll": float(np.nanmean(group["token_nll"]))
                if "token_nll" in group and group["token_nll"].notna().any()
                else np.nan,
                "hit_max_share": float(group["hit_max"].mean()) if "hit_max" in group else np.nan,
                "answers": answered,
            }
        )
    return pd.DataFrame(rows)


def _mean(values: Iterable[float]) -> float | None:
    array = np.asarray(list(values), dtype=float)
    array = array[np.isfinite(array)]
    return float(array.mean()) if array.size else None


def health_signals(
    frame: pd.DataFrame,
    prompts: pd.DataFrame | None = None,
    answer_config: Mapping[str, Any] | None = None,
    reference: pd.DataFrame | None = None,
) -> dict[str, float | int | None]:
    """Round-level health signals of any candidates-like frame (scored, candidates, holdout outputs).

    ``reference`` is the base model's candidates on (some of) the same prompts; when given, the
    base's own answers are re-scored under this frame's majority answers
    (``base_reward_under_policy``) and the share of prompts whose new consensus the base never
    produced is measured (``majority_off_base_support``).
    """
    groups = group_signals(frame, prompts, answer_config)
    multi = groups[groups["n"] >= 2] if not groups.empty else groups
    n_tokens = (
        pd.to_numeric(frame["n_tokens"], errors="coerce") if "n_tokens" in frame.columns else None
    )
    signals: dict[str, float | int | None] = {
        "n_candidates": len(frame),
        "n_prompts": len(groups),
        "n_groups": len(multi),
        "answer_rate": float(groups["n_answered"].sum() / max(groups["n"].sum(), 1))
        if len(groups)
        else None,
        "distinct_answers_mean": _mean(multi["distinct_answers"]) if len(multi) else None,
        "distinct_answers_ratio": _mean(multi["distinct_answers"] / multi["n"])
        if len(multi)
        else None,
        "answer_entropy_mean": _mean(multi["answer_entropy"]) if len(multi) else None,
        "agreement_mean": _mean(multi["agreement"]) if len(multi) else None,
        "unanimous_share": _mean(multi["unanimous"].astype(float)) if len(multi) else None,
        "prompt_copy_share": None,
        "unknown_prompt_share": float(1 - groups["known_prompt"].mean()) if len(groups) else None,
        "token_nll_mean": None,
        "length_mean": _mean(n_tokens) if n_tokens is not None else None,
        "max_tokens_share": float((frame["finish_reason"].astype(str) == "length").mean())
        if "finish_reason" in frame.columns and len(frame)
        else None,
    }
    if len(groups):
        copy_weights = groups["n_answered"].where(groups["copy_share"].notna(), 0)
        if copy_weights.sum() > 0:
            signals["prompt_copy_share"] = float(
                (groups["copy_share"].fillna(0) * copy_weights).sum() / copy_weights.sum()
            )
    if "logprob" in frame.columns and n_tokens is not None:
        logprob = pd.to_numeric(frame["logprob"], errors="coerce")
        valid = (n_tokens > 0) & np.isfinite(logprob)
        signals["token_nll_mean"] = _mean(-logprob[valid] / n_tokens[valid])
    if reference is not None:
        signals.update(_against_reference(groups, group_signals(reference, None, answer_config)))
    return signals


def _against_reference(groups: pd.DataFrame, base: pd.DataFrame) -> dict[str, float | int | None]:
    """The base's own answers re-scored under the new majority, and the new majority's support."""
    shared = groups.merge(base, on="prompt_id", suffixes=("", "_base"))
    shared = shared[shared["majority"].notna() & (shared["n_base"] > 0)]
    if shared.empty:
        return {
            "n_shared_prompts": 0,
            "base_reward_under_policy": None,
            "majority_off_base_support": None,
        }
    reward = [
        sum(a == majority for a in answers) / n
        for majority, answers, n in zip(
            shared["majority"], shared["answers_base"], shared["n_base"], strict=True
        )
    ]
    off = [
        majority not in set(answers)
        for majority, answers in zip(shared["majority"], shared["answers_base"], strict=True)
    ]
    return {
        "n_shared_prompts": len(shared),
        "base_reward_under_policy": float(np.mean(reward)),
        "majority_off_base_support": float(np.mean(off)),
    }


# ---------------------------------------------------------------------------------------------
# the collapse detector
# ---------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Outcome of :func:`detect_collapse`; ``checks`` keeps every rule's value and threshold."""

    collapsed: bool
    reasons: list[str]
    signals: dict[str, Any]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "collapsed": bool(self.collapsed),
            "reasons": list(self.reasons),
            "signals": dict(self.signals),
            "checks": dict(self.checks),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            collapsed=bool(data.get("collapsed", False)),
            reasons=list(data.get("reasons", [])),
            signals=dict(data.get("signals", {})),
            checks=dict(data.get("checks", {})),
            notes=list(data.get("notes", [])),
        )


def _num(value: Any) -> float | None:
    if _is_missing(value):
        return None
    return float(value)


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def detect_collapse(
    signals: Mapping[str, Any],
    reference_signals: Mapping[str, Any] | None,
    thresholds: Mapping[str, Any] | None = None,
) -> Verdict:
    """Flag the collapse signature: consensus up while diversity/entropy falls, copying, length collapse.

    Rules (each disabled by a ``None`` threshold):

    * ``consensus_collapse``: agreement rose by ≥ ``agreement_rise`` over the reference *and* the
      entropy (token-level when both frames have log-probs, else answer entropy) fell to
      ≤ ``entropy_ratio`` × the reference's;
    * ``prompt_copy``: the share of answers copying a prompt span rose by ≥ ``copy_share_rise``;
    * ``length_collapse``: mean length ≤ ``length_ratio_min`` × the reference's;
    * ``length_blowup``: the share hitting the token cap rose by ≥ ``max_tokens_share_rise``;
    * ``off_support``: ≥ ``off_support_share`` of prompts have a consensus answer the base never
      sampled (needs the reference *frame* in the signals; sharpening methods cannot get there).

    Fewer than ``min_prompts`` voting groups is not judged (a note says so) rather than guessed.
    """
    limits = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
    signals = dict(signals)
    ref = dict(reference_signals or {})
    checks: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    notes: list[str] = []

    n_groups = int(signals.get("n_groups") or 0)
    min_prompts = limits.get("min_prompts") or 0
    if n_groups < min_prompts:
        notes.append(
            f"only {n_groups} prompt groups with ≥2 candidates (< min_prompts={min_prompts}): not judged"
        )
        return Verdict(False, [], signals, {}, notes)

    def check(name: str, value: float | None, threshold: Any, tripped: bool, why: str) -> None:
        checks[name] = {"value": value, "threshold": _num(threshold), "tripped": bool(tripped)}
        if tripped:
            reasons.append(why)

    agreement, ref_agreement = _num(signals.get("agreement_mean")), _num(ref.get("agreement_mean"))
    token, ref_token = _num(signals.get("token_nll_mean")), _num(ref.get("token_nll_mean"))
    if token is not None and ref_token is not None:
        entropy_name, entropy, ref_entropy = "token entropy (-logprob/token)", token, ref_token
    else:
        entropy_name = "answer entropy"
        entropy = _num(signals.get("answer_entropy_mean"))
        ref_entropy = _num(ref.get("answer_entropy_mean"))
    if limits.get("agreement_rise") is not None and limits.get("entropy_ratio") is not None:
        rise = None if agreement is None or ref_agreement is None else agreement - ref_agreement
        if ref_entropy is not None and entropy is not None and ref_entropy <= 0:
            ratio = 1.0 if entropy <= 0 else math.inf
        else:
            ratio = _ratio(entropy, ref_entropy)
        tripped = (
            rise is not None
            and ratio is not None
            and rise >= limits["agreement_rise"]
            and ratio <= limits["entropy_ratio"]
        )
        checks["agreement_rise"] = {
            "value": rise,
            "threshold": _num(limits["agreement_rise"]),
            "tripped": tripped,
        }
        check(
            "entropy_ratio",
            ratio,
            limits["entropy_ratio"],
            tripped,
            f"consensus collapse: agreement {ref_agreement:.2f} → {agreement:.2f} while "
            f"{entropy_name} fell {ref_entropy:.2f} → {entropy:.2f}"
            if tripped
            else "",
        )

    copy, ref_copy = _num(signals.get("prompt_copy_share")), _num(ref.get("prompt_copy_share"))
    if limits.get("copy_share_rise") is not None and copy is not None and ref_copy is not None:
        rise = copy - ref_copy
        check(
            "copy_share_rise",
            rise,
            limits["copy_share_rise"],
            rise >= limits["copy_share_rise"],
            f"prompt copying: {copy:.0%} of answers copy a prompt span (base {ref_copy:.0%})",
        )

    length, ref_length = _num(signals.get("length_mean")), _num(ref.get("length_mean"))
    ratio = _ratio(length, ref_length)
    if limits.get("length_ratio_min") is not None and ratio is not None:
        check(
            "length_ratio_min",
            ratio,
            limits["length_ratio_min"],
            ratio <= limits["length_ratio_min"],
            f"length collapse: mean length {ref_length:.1f} → {length:.1f} tokens",
        )

    capped, ref_capped = _num(signals.get("max_tokens_share")), _num(ref.get("max_tokens_share"))
    if limits.get("max_tokens_share_rise") is not None and capped is not None:
        rise = capped - (ref_capped or 0.0)
        check(
            "max_tokens_share_rise",
            rise,
            limits["max_tokens_share_rise"],
            rise >= limits["max_tokens_share_rise"],
            f"length blow-up: {capped:.0%} of completions hit the token cap (base "
            f"{ref_capped or 0:.0%})",
        )

    off = _num(signals.get("majority_off_base_support"))
    if limits.get("off_support_share") is not None and off is not None:
        check(
            "off_support_share",
            off,
            limits["off_support_share"],
            off >= limits["off_support_share"],
            f"off-support consensus: on {off:.0%} of prompts the majority answer is one the base "
            "never sampled",
        )

    return Verdict(bool(reasons), reasons, signals, checks, notes)


# ---------------------------------------------------------------------------------------------
# gates
# ---------------------------------------------------------------------------------------------


def _as_verdict_dict(item: Any) -> dict[str, Any] | None:
    if isinstance(item, Verdict):
        return item.to_dict()
    if isinstance(item, Mapping):
        if "collapsed" in item:
            return dict(item)
        if isinstance(item.get("health"), Mapping):  # a policy lineage carrying its verdict
            return _as_verdict_dict(item["health"])
    return None


def promotion_blocked(health_verdicts: Any) -> tuple[bool, str]:
    """Whether the registry gate must refuse ``champion``, and why (label-free metrics notwithstanding).

    Accepts one verdict or health dict, a list of them, or a mapping ``name → verdict``; a policy
    lineage with a ``health`` entry works too. Any collapsed verdict blocks. No verdict at all
    does not block (the gate's other checks still apply), but says so.
    """
    if health_verdicts is None:
        return False, "no health verdict recorded"
    if isinstance(health_verdicts, Verdict) or _as_verdict_dict(health_verdicts) is not None:
        items = [("policy", health_verdicts)]
    elif isinstance(health_verdicts, Mapping):
        items = list(health_verdicts.items())
    else:
        items = [(f"#{i}", v) for i, v in enumerate(health_verdicts)]
    blocked = []
    seen = 0
    for name, item in items:
        verdict = _as_verdict_dict(item)
        if verdict is None:
            continue
        seen += 1
        if verdict.get("collapsed"):
            label = f"round {verdict['round']}" if verdict.get("round") is not None else name
            reasons = "; ".join(verdict.get("reasons") or ["collapsed"])
            blocked.append(f"{label}: {reasons}")
    if blocked:
        return True, "collapse detected — " + " | ".join(blocked)
    return (
        False,
        f"{seen} health verdict(s), none collapsed" if seen else "no health verdict recorded",
    )


# ---------------------------------------------------------------------------------------------
# online early stopping
# ---------------------------------------------------------------------------------------------


class CollapseEarlyStopping(TrainerCallback):
    """Stop online RL (TRL ``GRPOTrainer``) when reward rises while entropy collapses.

    GRPO in TRL 1.16 logs ``reward`` (mean reward of the step's completions) and ``entropy`` (mean
    per-token entropy of the policy on them) at every logging step. The baseline is the mean of the
    first ``baseline_logs`` training logs; training stops once, for ``patience`` consecutive logs,
    ``reward - baseline ≥ reward_rise`` and ``entropy ≤ entropy_ratio × baseline``. With the
    measured collapse (reward 0.41 → 0.84, entropy 1.1 → 0.37) the defaults stop it part-way.

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
    def from_config(cls, config: Mapping[str, Any] | None) -> CollapseEarlyStopping:
        """Build from ``params:health.early_stopping`` (unknown keys are an error, not ignored)."""
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


# ---------------------------------------------------------------------------------------------
# probe: samples of a just-trained policy
# ---------------------------------------------------------------------------------------------

DEFAULT_PROBE: dict[str, Any] = {
    "n_prompts": 32,
    "n_samples": 8,
    "temperature": 0.8,
    "max_new_tokens": 32,
    "split": "holdout",
    "token_budget": 8192,
}


def probe_policy(
    policy: Any,
    prompts: pd.DataFrame,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    task: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Sample ``policy`` on a small fixed prompt set: a candidates-like frame to judge it by.

    A round's own candidates come from its *input* policy, so judging the policy a round just
    trained (before the next round starts from it) needs a few samples of it. The prompts are the
    first ``n_prompts`` by id of ``split`` (all prompts when that split is empty), framed with the
    task's system prompt like ``generate`` does, and sampled with the shared generation engine
    with per-prompt seeds: the base and every round are probed on the same prompts and seeds.
    """
    from taoflow.generation import frame_conversation, generate_completions

    cfg = {**DEFAULT_PROBE, **dict(config or {})}
    frame = prompts
    if cfg.get("split") and "split" in frame.columns and (frame["split"] == cfg["split"]).any():
        frame = frame[frame["split"] == cfg["split"]]
    frame = frame.sort_values("prompt_id").head(int(cfg["n_prompts"]))
    system = (task or {}).get("system_prompt")
    conversations = [
        frame_conversation(as_messages(m), default_system=system) for m in frame["messages"]
    ]
    prompt_ids = [str(p) for p in frame["prompt_id"]]
    results = generate_completions(
        policy,
        conversations,
        num_return_sequences=int(cfg["n_samples"]),
        temperature=float(cfg["temperature"]),
        max_new_tokens=int(cfg["max_new_tokens"]),
        seeds=[derive_seed(seed, "health_probe", p) for p in prompt_ids],
        token_budget=int(cfg["token_budget"]),
        progress="health probe",
    )
    round_ = int(policy.lineage.get("round", 0) or 0)
    rows = [
        {
            "prompt_id": prompt_id,
            "candidate_id": f"{prompt_id}-probe-{j}",
            "round": round_,
            "strategy": "probe",
            "temperature": float(cfg["temperature"]),
            "seed": int(sample["seed"]),
            "completion": sample["completion"],
            "n_tokens": int(sample["n_tokens"]),
            "finish_reason": sample["finish_reason"],
            "logprob": float(sample["logprob"]),
        }
        for prompt_id, samples in zip(prompt_ids, results, strict=True)
        for j, sample in enumerate(samples)
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _label(health: Mapping[str, Any], index: int) -> str:
    return str(health.get("namespace") or f"round_{health.get('round', index + 1)}")


def _threshold_line(kind: str, threshold: float | None, reference: float | None) -> float | None:
    if threshold is None:
        return None
    if kind == "absolute":
        return threshold
    if reference is None:
        return None
    return reference * threshold if kind == "ratio" else reference + threshold


def health_report(
    healths: Iterable[Mapping[str, Any]], thresholds: Mapping[str, Any] | None = None
) -> tuple[str, Any]:
    """The report's "Health" section (Markdown) and a figure of the signals per round, thresholds drawn.

    ``healths`` are the ``{round}.health`` dicts in round order. The figure is a bare
    ``matplotlib.figure.Figure`` (no pyplot state), saved by ``matplotlib.MatplotlibDataset``.
    """
    from matplotlib.figure import Figure

    healths = list(healths)
    limits = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
    labels = [_label(h, i) for i, h in enumerate(healths)]
    lines = [
        "## Health (label-free)",
        "",
        "Signals computed without labels on each round's candidates, compared with the base "
        "model's. A collapsed round is not used for the next round and its policy cannot be "
        "promoted.",
        "",
        "| round | verdict | agreement | token entropy | answer entropy | prompt copy | "
        "mean length | hit cap | base reward under policy | reasons |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value: Any, pct: bool = False) -> str:
        value = _num(value)
        if value is None:
            return "—"
        return f"{value:.0%}" if pct else f"{value:.2f}"

    for label, health in zip(labels, healths, strict=True):
        s = health.get("signals", {})
        verdict = "**COLLAPSED**" if health.get("collapsed") else "ok"
        if not health.get("collapsed") and health.get("notes"):
            verdict = "not judged"
        lines.append(
            f"| {label} | {verdict} | {fmt(s.get('agreement_mean'))} | "
            f"{fmt(s.get('token_nll_mean'))} | {fmt(s.get('answer_entropy_mean'))} | "
            f"{fmt(s.get('prompt_copy_share'), True)} | {fmt(s.get('length_mean'))} | "
            f"{fmt(s.get('max_tokens_share'), True)} | "
            f"{fmt(s.get('base_reward_under_policy'))} | "
            f"{'; '.join(health.get('reasons') or health.get('notes') or []) or '—'} |"
        )
    lines += [
        "",
        "Thresholds: "
        + ", ".join(f"`{k}`={v}" for k, v in limits.items() if v is not None)
        + " (see `conf/base/parameters_health.yml`).",
        "",
    ]

    figure = Figure(figsize=(12, 6), layout="constrained")
    axes = figure.subplots(2, 4).ravel()
    x = np.arange(len(healths))
    for ax, (name, rule, kind) in zip(axes, PLOTTED, strict=True):
        values = [_num(h.get("signals", {}).get(name)) for h in healths]
        y = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.plot(x, y, marker="o", color="tab:blue")
        bad = np.array([bool(h.get("collapsed")) for h in healths])
        if bad.any():
            ax.scatter(x[bad], y[bad], color="tab:red", zorder=3, label="collapsed")
        limit_y = [
            _threshold_line(
                kind,
                _num(limits.get(rule)) if rule else None,
                _num((h.get("reference_signals") or {}).get(name)),
            )
            for h in healths
        ]
        if any(v is not None for v in limit_y):
            ly = np.array([np.nan if v is None else v for v in limit_y], dtype=float)
            ax.plot(x, ly, linestyle="--", color="tab:red", label=f"threshold ({rule})")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(x, labels, fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    figure.suptitle("Label-free health per round")
    return "\n".join(lines), figure
