"""The frozen judge model behind the ``judge`` scorer: reference answers and verdicts.

Two ways to ask a judge stronger than the policy, both usable with a local transformers model
(this module) or an OpenAI-compatible endpoint (:mod:`taoflow.scoring.judge_http`):

* **reference** — the judge answers the prompt itself (greedy, or ``k`` samples whose majority
  answer is kept with its vote share as confidence); candidates are rewarded for agreeing;
* **verdict** — the judge grades a (prompt, answer) pair; the score is the probability it puts on
  the "correct" label against the "incorrect" one, read from the logits of one forward pass over
  the grading prompt (no generation), so it is continuous and deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taoflow.core.answers import extract_answer, normalize_answer
from taoflow.core.ids import stable_hash
from taoflow.generation import generate_completions, plan_batches, render_prompts
from taoflow.models import Policy
from taoflow.scoring.majority import vote

REFERENCE_COLUMNS = [
    "prompt_id",
    "judge",
    "mode",
    "judge_answer",
    "judge_confidence",
    "n_samples",
    "completion",
]
VERDICT_COLUMNS = ["prompt_id", "answer", "judge", "mode", "score", "judge_answer"]
PACKAGED_MARKER = "taoflow-packaged.json"


def folder_fingerprint(path: str | Path) -> str | None:
    """The pinned sha256 of a packaged judge folder (no weights read); None for other folders."""
    marker = Path(path) / PACKAGED_MARKER
    try:
        return "sha256:" + str(json.loads(marker.read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def majority_answer(completions: Sequence[str], extractor: Any) -> tuple[str | None, float, str]:
    """(majority answer, its vote share, a completion that gives it) over one prompt's samples.

    Ties go to the answer seen first; samples without an answer count in the share's denominator.
    """
    answers = [normalize_answer(extract_answer(c, extractor)) for c in completions]
    result = vote(answers, ties="first")
    answer = result.majority
    if answer is None:
        return None, 0.0, completions[0] if completions else ""
    return answer, result.agreement, completions[answers.index(answer)]


def reference_rows(
    policy: Policy,
    prompt_ids: Sequence[str],
    conversations: Sequence[Sequence[dict]],
    *,
    judge: str,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seeds: Sequence[int],
    token_budget: int,
    extractor: Any,
    progress: str | bool = False,
    backend: str = "transformers",
    engine: Any = None,
) -> list[dict[str, Any]]:
    """The judge's answer to each conversation (rows of :data:`REFERENCE_COLUMNS`).

    ``backend`` / ``engine``: as :func:`~taoflow.generation.generate_completions`'s.
    """
    outputs = generate_completions(
        policy,
        conversations,
        num_return_sequences=samples,
        do_sample=samples > 1,
        temperature=temperature if samples > 1 else 1.0,
        max_new_tokens=max_new_tokens,
        seeds=list(seeds),
        token_budget=token_budget,
        progress=progress,
        backend=backend,
        engine=engine,
    )
    rows = []
    for prompt_id, drawn in zip(prompt_ids, outputs, strict=True):
        answer, confidence, completion = majority_answer(
            [d["completion"] for d in drawn], extractor
        )
        rows.append(
            reference_row(
                prompt_id,
                judge,
                answer=answer,
                confidence=confidence,
                n_samples=samples,
                completion=completion,
            )
        )
    return rows


def reference_row(
    prompt_id: str,
    judge: str,
    *,
    answer: str | None,
    confidence: float,
    n_samples: int,
    completion: str,
) -> dict[str, Any]:
    return {
        "prompt_id": str(prompt_id),
        "judge": judge,
        "mode": "reference",
        "judge_answer": answer,
        "judge_confidence": float(confidence),
        "n_samples": int(n_samples),
        "completion": completion,
    }


def verdict_chat(
    prompt: str,
    answer: str,
    *,
    template: str,
    system: str | None,
    correct: str,
    incorrect: str,
) -> list[dict[str, str]]:
    """The grading conversation for one (prompt, answer) pair."""
    user = template.format(prompt=prompt, answer=answer, correct=correct, incorrect=incorrect)
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


def label_token_ids(tokenizer: Any, label: str) -> list[int]:
    """First token of each spelling the reply may start with (as is, capitalised, after a space)."""
    spellings = {label, label.capitalize(), label.lower(), " " + label, " " + label.capitalize()}
    ids = set()
    for spelling in spellings:
        tokens = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        if tokens:
            ids.add(int(tokens[0]))
    return sorted(ids)


def _label_ids(policy: Policy, correct: str, incorrect: str) -> tuple[list[int], list[int]]:
    yes = label_token_ids(policy.tokenizer, correct)
    no = label_token_ids(policy.tokenizer, incorrect)
    shared = set(yes) & set(no)
    yes, no = [t for t in yes if t not in shared], [t for t in no if t not in shared]
    if not yes or not no:
        raise ValueError(
            f"judge: labels {correct!r} and {incorrect!r} start with the same token for this "
            "tokenizer; choose label words that differ in their first token"
        )
    return yes, no


def verdict_probabilities(
    policy: Policy,
    chats: Sequence[Sequence[dict]],
    *,
    correct: str,
    incorrect: str,
    token_budget: int,
) -> np.ndarray:
    """P(correct) / (P(correct) + P(incorrect)) for the judge's first reply token, per chat.

    One forward pass per batch of left-padded grading prompts (position ids follow the padding,
    so a row's probability does not depend on what it is batched with); no generation.
    """
    import torch

    if not chats:
        return np.zeros(0)
    yes, no = _label_ids(policy, correct, incorrect)
    encoded = render_prompts(policy, chats)
    pad = policy.tokenizer.pad_token_id or 0
    device = next(policy.model.parameters()).device
    out = np.zeros(len(encoded))
    for batch in plan_batches([len(e) for e in encoded], 1, token_budget):
        width = max(len(encoded[r]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(encoded[r]) :] = torch.tensor(encoded[r])
            mask[i, width - len(encoded[r]) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = policy.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
            ).logits[:, -1, :]
        logp = torch.log_softmax(logits.double(), dim=-1)
        margin = torch.logsumexp(logp[:, yes], -1) - torch.logsumexp(logp[:, no], -1)
        out[batch] = torch.sigmoid(margin).cpu().numpy()
    return out


def settings_key(**settings: Any) -> str:
    """A short hash of what decides a judge output (fingerprint, mode, prompts, sampling)."""
    return stable_hash(settings, 12)
