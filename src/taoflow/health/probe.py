"""Samples of a just-trained policy on a small fixed prompt set, to judge it by.

The one module of :mod:`taoflow.health` that runs a model (through :mod:`taoflow.generation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from taoflow.config.health import ProbeParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import derive_seed
from taoflow.core.text import as_messages
from taoflow.generation import (
    CANDIDATE_COLUMNS,
    candidate_record,
    frame_conversation,
    generate_completions,
)

# The probe's settings when none are given: the model's defaults, written once there.
DEFAULT_PROBE: dict[str, Any] = ProbeParams().model_dump()


def _probe_params(config: ProbeParams | Mapping[str, Any] | None) -> ProbeParams:
    if isinstance(config, ProbeParams):
        return config
    return ProbeParams.model_validate(dict(config or {}))


def _system_prompt(task: TaskParams | Mapping[str, Any] | None) -> str | None:
    if isinstance(task, TaskParams):
        return task.system_prompt
    return (task or {}).get("system_prompt")


def probe_policy(
    policy: Any,
    prompts: pd.DataFrame,
    config: ProbeParams | Mapping[str, Any] | None = None,
    seed: int = 0,
    task: TaskParams | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Sample ``policy`` on a small fixed prompt set: a candidates-like frame to judge it by.

    A round's own candidates come from its *input* policy, so judging the policy a round just
    trained (before the next round starts from it) needs a few samples of it. The prompts are the
    first ``n_prompts`` by id of ``split`` (all prompts when that split is empty), framed with the
    task's system prompt like ``generate`` does, and sampled with the shared generation engine
    with per-prompt seeds: the base and every round are probed on the same prompts and seeds.
    """
    probe = _probe_params(config)
    frame = prompts
    if probe.split and "split" in frame.columns and (frame["split"] == probe.split).any():
        frame = frame[frame["split"] == probe.split]
    frame = frame.sort_values("prompt_id").head(probe.n_prompts)
    system = _system_prompt(task)
    conversations = [
        frame_conversation(as_messages(m), default_system=system) for m in frame["messages"]
    ]
    prompt_ids = [str(p) for p in frame["prompt_id"]]
    results = generate_completions(
        policy,
        conversations,
        num_return_sequences=probe.n_samples,
        temperature=float(probe.temperature),
        max_new_tokens=probe.max_new_tokens,
        seeds=[derive_seed(seed, "health_probe", p) for p in prompt_ids],
        token_budget=probe.token_budget,
        progress="health probe",
    )
    round_ = int(policy.lineage.get("round", 0) or 0)
    rows = [
        candidate_record(
            prompt_id,
            f"{prompt_id}-probe-{j}",
            sample,
            round_=round_,
            strategy="probe",
            temperature=probe.temperature,
        )
        for prompt_id, samples in zip(prompt_ids, results, strict=True)
        for j, sample in enumerate(samples)
    ]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
