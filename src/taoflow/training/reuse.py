"""Work done once: a training whose inputs did not change is loaded from a cache, not redone.

Used by the yardsticks (sft_oracle, judge_distill) and by each TAO round's training (the train
node; :func:`round_key_parts` adds what a round depends on beyond the parts below).

The key is a hash of everything that decides the trained weights:

- the input policy: a hash of every weight's bytes (not the cheap
  :func:`taoflow.generation.policy_fingerprint`, whose sums two different weight sets can share),
  its tokenizer (vocabulary, special tokens, chat template) and its lineage (less the folder it
  was read from: the same policy in another checkout or workspace trains the same);
- the training examples (:func:`taoflow.core.ids.frame_hash`);
- the resolved trainer settings (the ``TrainParams`` the trainer reads, after overrides), the
  seed, the round and the stage's own identity (algorithm, labels);
- the code version: a hash of the source of the modules that train (``taoflow.training``, the
  trainer config models, ``taoflow.models``) plus the versions of torch, transformers, TRL, PEFT
  and accelerate, and whether a GPU is visible. A hash of the source rather than a hand-bumped
  ``STAGE_VERSION``: nobody has to remember a bump, so an edit to the training code can never
  be served a stale result; the price is a miss after an edit that changes nothing (a comment).

A cache entry is ``<cache_dir>/<stage>/<key>/``: the policy folder (as ``save_policy`` writes
it) and ``reuse.json`` (the key's parts, the lineage and the training's metrics, so a hit logs
the same training numbers). Entries are written through a temporary folder and renamed, so a
killed run never leaves half an entry behind.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from taoflow.config.reuse import ReuseParams
from taoflow.config.train import TrainParams
from taoflow.core.files import atomic_path
from taoflow.core.ids import frame_hash, source_hash, stable_hash
from taoflow.core.lazy import lazy_module
from taoflow.models import Policy, load_policy, save_policy

logger = logging.getLogger(__name__)
torch = lazy_module("torch")  # imported on first use (taoflow.core.lazy)

ENTRY_FILE = "reuse.json"
# The code whose edits could change a training's result (hashed by source).
TRAINING_CODE = (
    "taoflow.training",
    "taoflow.config.train",
    "taoflow.config.sft_oracle",
    "taoflow.config.judge_distill",
    "taoflow.models",
    "taoflow.core.ids",
)
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")
# Lineage keys that say where the starting weights were read from, not what they are: the same
# policy loaded from another checkout or simulation workspace trains the same (its weights,
# tokenizer and the rest of its lineage are hashed).
LOCATION_KEYS = frozenset({"name_or_path"})

Trained = tuple[Policy, dict[str, Any]]


def code_version(modules: Iterable[str] = TRAINING_CODE) -> str:
    """Hash of the modules' source files and the training libraries' versions."""
    versions = []
    for library in LIBRARIES:
        try:
            versions.append(f"{library}={importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{library}=absent")
    versions.append(f"cuda={torch.cuda.is_available()}")
    return stable_hash([source_hash(*modules), versions])


def weights_hash(policy: Policy) -> str:
    """Hash of every weight's bytes (name, dtype, shape too) and of the tokenizer."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in policy.model.state_dict().items():
            value = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}\0".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    tok = policy.tokenizer
    digest.update(
        stable_hash(
            {
                "vocab": sorted(tok.get_vocab().items()),
                "special": tok.special_tokens_map,
                "chat_template": tok.chat_template,
                "padding_side": tok.padding_side,
                "adapter": policy.adapter is not None,
            },
            64,
        ).encode()
    )
    return digest.hexdigest()[:32]


def lineage_hash(lineage: dict[str, Any]) -> str:
    """Hash of a starting policy's lineage without where it was loaded from."""
    return stable_hash({k: v for k, v in lineage.items() if k not in LOCATION_KEYS}, 32)


def training_key(
    *,
    stage: str,
    base_model: Policy,
    examples: pd.DataFrame,
    settings: TrainParams,
    seed: int,
    extra: dict[str, Any] | None = None,
    code: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """(key, its parts): the content hash of everything that decides the stage's training."""
    parts = {
        "stage": stage,
        "base_weights": weights_hash(base_model),
        "base_lineage": lineage_hash(base_model.lineage),
        "examples": frame_hash(examples),
        "n_examples": len(examples),
        "settings": stable_hash(settings.model_dump(mode="json"), 32),
        "seed": int(seed),
        "code": code or code_version(),
        **(extra or {}),
    }
    return stable_hash(parts, 24), parts


def round_key_parts(  # noqa: PLR0913, PLR0917 - what decides a TAO round's training
    round_: int,
    scored: pd.DataFrame,
    prompts: pd.DataFrame,
    settings: TrainParams,
    task: Any,
    score: Any,
    reference: Policy | None,
) -> dict[str, Any]:
    """What a TAO round's training depends on beyond :func:`training_key`'s common parts.

    The scored rows (their hash is in the trained policy's lineage), the round, the task, the
    train stage's own code and, when set, DPO's fixed reference; GRPO also scores its own
    completions, so its prompts, the score block and the scoring code count too.
    """
    parts: dict[str, Any] = {
        "round": int(round_),
        "scored": frame_hash(scored),
        "task": stable_hash(_plain(task), 32),
        "stage_code": source_hash("taoflow.pipelines.train"),
        "reference": weights_hash(reference) if reference is not None else None,
    }
    if settings.algorithm == "grpo":
        parts.update(
            prompts=frame_hash(prompts),
            score=stable_hash(_plain(score), 32),
            scoring_code=source_hash("taoflow.scoring", "taoflow.config.score"),
        )
    return parts


def launch_key_part(launch: Any) -> dict[str, Any]:
    """The launcher counts only when it runs the trainer across processes: a DDP training splits
    each batch over ranks, so it need not equal the in-process one (whose keys stay unchanged)."""
    if launch is None or getattr(launch, "mode", "in_process") == "in_process":
        return {}
    return {"launch": stable_hash(_plain(launch), 32)}


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def _entry(params: ReuseParams, stage: str, key: str) -> Path:
    return Path(params.cache_dir) / stage / key


def load_cached(path: Path, base_model: Policy) -> Trained | None:
    """The cached (policy, metrics) at ``path``; None when the entry is absent or incomplete."""
    meta_file = path / ENTRY_FILE
    if not (meta_file.is_file() and (path / "config.json").is_file()):
        return None
    meta = json.loads(meta_file.read_text())
    policy = load_policy(str(path), dtype=str(meta.get("dtype", "float32")))
    policy.lineage = dict(meta["lineage"])
    if (path / "adapter").is_dir():
        from peft import PeftModel

        policy.adapter = PeftModel.from_pretrained(
            copy.deepcopy(base_model.model), str(path / "adapter")
        )
    return policy, dict(meta["metrics"])


def store(path: Path, policy: Policy, metrics: dict[str, Any], parts: dict[str, Any]) -> None:
    """Write one cache entry whole (temporary folder, then rename)."""
    dtype = str(next(policy.model.parameters()).dtype).removeprefix("torch.")
    with atomic_path(path) as tmp:
        save_policy(policy, tmp)
        (Path(tmp) / ENTRY_FILE).write_text(
            json.dumps(
                {
                    "parts": parts,
                    "lineage": policy.lineage,
                    "metrics": metrics,
                    "dtype": dtype,
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )


def prune(stage_dir: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently used entries of one stage; the removed ones."""
    entries = sorted(
        (p for p in stage_dir.iterdir() if p.is_dir() and (p / ENTRY_FILE).is_file()),
        key=lambda p: (p / ENTRY_FILE).stat().st_mtime_ns,
        reverse=True,
    )
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return entries[keep:]


def reuse_or_train(
    stage: str,
    params: ReuseParams,
    train: Callable[[], Trained],
    *,
    base_model: Policy,
    examples: pd.DataFrame,
    settings: TrainParams,
    seed: int,
    step: int,
    extra: dict[str, Any] | None = None,
    folder: str | None = None,
) -> Trained:
    """``train()``'s (policy, metrics), or the cached ones when the key matches.

    Metrics gain ``reuse.<stage>`` (1: loaded from the cache, 0: trained) at ``step``; the
    policy's lineage gains ``reuse_key`` (the run hook tags the MLflow run with it). ``folder``
    (default: ``stage``) names the cache folder whose ``keep`` latest entries survive: one per
    TAO round, so a run's later rounds never prune its earlier ones.
    """
    if not params.enabled:
        return train()
    key, parts = training_key(
        stage=stage,
        base_model=base_model,
        examples=examples,
        settings=settings,
        seed=seed,
        extra=extra,
    )
    path = _entry(params, folder or stage, key)
    cached = None if params.force else load_cached(path, base_model)
    if cached is not None:
        policy, metrics = cached
        logger.info(
            "%s: inputs unchanged, reusing the training cached at %s", folder or stage, path
        )
        (path / ENTRY_FILE).touch()  # most recently used: pruned last
        hit = 1.0
    else:
        why = "forced (reuse.force)" if params.force else "no cached training with this key"
        logger.info("%s: training (%s; key %s)", folder or stage, why, key)
        policy, metrics = train()
        policy.lineage["reuse_key"] = key
        store(path, policy, metrics, parts)
        prune(path.parent, params.keep)
        hit = 0.0
    metrics = {**metrics, f"reuse.{stage}": {"value": hit, "step": step}}
    return policy, metrics
