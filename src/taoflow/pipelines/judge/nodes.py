"""Nodes of the ``judge`` stage: ``prepare_judge`` once, then reference answers per prompt (once
per run) or verdicts per (prompt, answer) of each round, as resumable shards.

Shards are cut by content, not position: after sorting, a shard ends after any item whose own
hash falls on a boundary (``shard_size`` items per shard on average), and its id hashes the
judge's fingerprint, the settings that decide its rows and its items. An unchanged (judge,
settings, prompt) therefore keeps its shard id across runs — adding or removing a prompt changes
only the shard it falls in — and ``ResumablePartitionedDataset`` never judges it twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.generate import GenerateParams
from taoflow.config.judge import JudgeParams
from taoflow.config.shared import TaskParams
from taoflow.core.answers import extract_answer, normalize_answer
from taoflow.core.ids import derive_seed, stable_hash
from taoflow.core.text import as_messages, last_user_message
from taoflow.core.tracking import mlflow_metrics
from taoflow.generation import frame_conversation
from taoflow.scoring.judge_model import REFERENCE_COLUMNS, VERDICT_COLUMNS, verdict_chat
from taoflow.scoring.judge_runner import JudgeRunner, judge_reference

MAX_SHARD_FACTOR = 4  # a run of items without a boundary is cut at this many × shard_size


def prepare_judge(
    judge: JudgeParams,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Resolve the judge once (building packaged weights the first time): ``judge_model``."""
    reference = judge_reference(judge)
    return reference, mlflow_metrics({"http": reference["backend"] == "http"}, prefix="judge")


def content_chunks(keys: list[str], shard_size: int) -> list[list[int]]:
    """Positions of sorted ``keys`` cut where a key's own hash says so (see the module doc)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for i, key in enumerate(keys):
        current.append(i)
        boundary = int(stable_hash(["judge-shard", key], 8), 16) % shard_size == 0
        if boundary or len(current) >= MAX_SHARD_FACTOR * shard_size:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks


def _unique_prompts(prompts: pd.DataFrame) -> pd.DataFrame:
    frame = prompts.drop_duplicates("prompt_id").sort_values("prompt_id", kind="stable")
    return frame.reset_index(drop=True)


def judge_reference_shards(
    *,
    prompts: pd.DataFrame,
    judge_model: dict[str, Any],
    judge: JudgeParams,
    task: TaskParams,
    seed: int,
    credentials: dict[str, Any] | None,
    generate: GenerateParams | None = None,
) -> dict[str, Callable[[], pd.DataFrame]]:
    """Plan the judge's answer to every unique prompt (train and holdout), lazily per shard.

    A local judge generates through ``generate.backend`` (and ``generate.vllm``), the switch
    candidates and evaluation use; None: transformers.
    """
    unique = _unique_prompts(prompts)
    system = judge.prompt.system_prompt
    chats = [
        frame_conversation(as_messages(m), system_prompt=system, default_system=task.system_prompt)
        for m in unique["messages"]
    ]
    ids = [str(p) for p in unique["prompt_id"]]
    sampled = judge.samples > 1
    key = {
        "judge": judge_model["fingerprint"],
        "backend": judge_model["backend"],
        "dtype": judge_model["dtype"],
        "mode": "reference",
        "samples": judge.samples,
        "temperature": judge.temperature if sampled else None,
        "seed": seed if sampled else None,
        "max_new_tokens": judge.max_new_tokens,
        "token_budget": judge.token_budget,
        "answer": task.answer.model_dump(),
    }
    runner = JudgeRunner(judge_model, judge, credentials, generate=generate)
    if judge_model["backend"] != "http" and runner.generator != "transformers":
        key["generator"] = runner.generator  # only then: transformers shards keep their ids
    shards: dict[str, Callable[[], pd.DataFrame]] = {}
    for chunk in content_chunks(ids, judge.shard_size):
        items = [[ids[i], chats[i]] for i in chunk]
        shard_id = f"ref-{stable_hash([key, items], 16)}"

        def run(chunk: list[int] = chunk, shard_id: str = shard_id) -> pd.DataFrame:
            rows = runner.references(
                [ids[i] for i in chunk],
                [chats[i] for i in chunk],
                [derive_seed(seed, "judge", ids[i]) for i in chunk],
                task.answer,
                progress=f"judge {shard_id[4:9]}",
            )
            return pd.DataFrame.from_records(rows, columns=REFERENCE_COLUMNS)

        shards[shard_id] = run
    return shards


def judge_verdict_shards(
    *,
    candidates: pd.DataFrame,
    prompts: pd.DataFrame,
    judge_model: dict[str, Any],
    judge: JudgeParams,
    task: TaskParams,
    credentials: dict[str, Any] | None,
) -> dict[str, Callable[[], pd.DataFrame]]:
    """Plan one verdict per unique (prompt, extracted answer) of a round's candidates."""
    text = {
        str(pid): last_user_message(as_messages(m)) or ""
        for pid, m in zip(prompts["prompt_id"], prompts["messages"], strict=True)
    }
    pairs = sorted(
        {
            (str(pid), answer)
            for pid, completion in zip(
                candidates["prompt_id"], candidates["completion"], strict=True
            )
            if str(pid) in text
            and completion is not None
            and (answer := normalize_answer(extract_answer(str(completion), task.answer)))
        }
    )
    p = judge.prompt
    key = {
        "judge": judge_model["fingerprint"],
        "backend": judge_model["backend"],
        "dtype": judge_model["dtype"],
        "mode": "verdict",
        "system": p.verdict_system,
        "template": p.verdict_template,
        "labels": [p.correct, p.incorrect],
        "max_new_tokens": judge.max_new_tokens if judge_model["backend"] == "http" else None,
    }
    runner = JudgeRunner(judge_model, judge, credentials)
    shards: dict[str, Callable[[], pd.DataFrame]] = {}
    for chunk in content_chunks([stable_hash(list(pair)) for pair in pairs], judge.shard_size):
        items = [[pairs[i][0], text[pairs[i][0]], pairs[i][1]] for i in chunk]
        shard_id = f"verdict-{stable_hash([key, items], 16)}"

        def run(items: list[list[str]] = items, shard_id: str = shard_id) -> pd.DataFrame:
            chats = [
                verdict_chat(
                    prompt,
                    answer,
                    template=p.verdict_template,
                    system=p.verdict_system,
                    correct=p.correct,
                    incorrect=p.incorrect,
                )
                for _, prompt, answer in items
            ]
            scores = runner.verdicts(chats, progress=f"verdict {shard_id[8:13]}")
            return pd.DataFrame(
                {
                    "prompt_id": [i[0] for i in items],
                    "answer": [i[2] for i in items],
                    "judge": runner.name,
                    "mode": "verdict",
                    "score": scores,
                    "judge_answer": [
                        None if np.isnan(s) else p.correct if s >= 0.5 else p.incorrect
                        for s in scores
                    ],
                },
                columns=VERDICT_COLUMNS,
            )

        shards[shard_id] = run
    return shards


def _concat(shards: dict[str, Callable[[], pd.DataFrame]], columns: list[str]) -> pd.DataFrame:
    frames = [load() for _, load in sorted(shards.items())]
    frames = [f for f in frames if len(f)]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def collect_judge_references(
    reference_shards: dict[str, Callable[[], pd.DataFrame]],
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """``judge_references``: one row per unique prompt, sorted by ``prompt_id``."""
    frame = _concat(reference_shards, REFERENCE_COLUMNS).sort_values("prompt_id", kind="stable")
    frame = frame.reset_index(drop=True)
    values = {
        "prompts": len(frame),
        "shards": len(reference_shards),
        "answer_rate": float(frame["judge_answer"].notna().mean()) if len(frame) else 0.0,
        "confidence_mean": float(frame["judge_confidence"].mean()) if len(frame) else 0.0,
    }
    return frame, mlflow_metrics(values, prefix="judge.reference")


def collect_judgements(
    verdict_shards: dict[str, Callable[[], pd.DataFrame]], candidates: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """``judgements``: one verdict per unique (prompt, answer), sorted; metrics at the round."""
    frame = _concat(verdict_shards, VERDICT_COLUMNS)
    frame = frame.sort_values(["prompt_id", "answer"], kind="stable").reset_index(drop=True)
    step = int(candidates["round"].iloc[0]) if "round" in candidates and len(candidates) else 0
    scores = pd.to_numeric(frame["score"], errors="coerce")
    values = {
        "pairs": len(frame),
        "shards": len(verdict_shards),
        "unparsed": int(scores.isna().sum()),
        "score_mean": float(scores.mean()) if scores.notna().any() else None,
    }
    return frame, mlflow_metrics(values, prefix="judge.verdict", step=step)
