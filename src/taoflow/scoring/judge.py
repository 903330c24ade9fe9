"""``llm_judge``: a rubric prompt to a judge model, the score parsed from its reply.

Backends: ``http`` — any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp
server, a hosted API), the API key coming from Kedro credentials, never from parameters (which
MLflow logs); ``transformers`` — a local model reference loaded with ``taoflow.models``, greedy.
A reply with no score in range, or a request that still fails after its retries, scores
``failure_value`` and is counted (``unparseable`` / ``request_errors``).
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from taoflow.scoring.base import ScoreResult

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM = (
    "You are a strict, impartial grader. Judge only whether the response correctly and "
    "completely answers the user's request."
)
DEFAULT_RUBRIC = (
    "User request:\n{prompt}\n\nResponse:\n{completion}\n\n"
    "Rate the response from {min_score} (wrong or useless) to {max_score} (correct and complete). "
    "Reply with one line: 'Score: <number>'."
)
DEFAULT_PATTERN = r"(?i)score\W{0,3}(-?\d+(?:\.\d+)?)"


def chat_url(url: str) -> str:
    """A base URL (``http://host:8000/v1``) → its ``/chat/completions`` endpoint."""
    url = str(url).rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def chat_content(reply: dict[str, Any]) -> str:
    """The first choice's message text of a chat-completion response."""
    return str(reply["choices"][0]["message"]["content"])


def post_chat(
    client: Any, url: str, body: dict[str, Any], retries: int, name: str
) -> dict[str, Any] | None:
    """POST one chat completion; retry 429/5xx and transport errors with backoff.

    Returns the decoded response (with at least one choice), or None once the retries are spent.
    """
    import httpx

    for attempt in range(retries + 1):
        try:
            response = client.post(url, json=body)
            if response.status_code in (429, 500, 502, 503, 504) and attempt < retries:
                time.sleep(0.5 * 2**attempt)
                continue
            response.raise_for_status()
            reply = response.json()
            chat_content(reply)  # a reply without a message is a failed request
            return reply
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            if attempt >= retries:
                logger.warning("%s: request failed: %s", name, exc)
                return None
            time.sleep(0.5 * 2**attempt)
    return None


class LLMJudgeScorer:
    """Judge score in [0, 1] (``(s - min_score) / (max_score - min_score)``; raw with
    ``normalize: false``). ``rubric`` may use ``{prompt}``, ``{completion}``, ``{min_score}``,
    ``{max_score}``; ``score_pattern``'s group 1 is the score (its first match counts)."""

    def __init__(
        self,
        *,
        backend: str = "http",
        url: str | None = None,
        model: str | None = None,
        credentials: dict[str, Any] | None = None,
        credentials_key: str | None = None,
        rubric: str = DEFAULT_RUBRIC,
        system_prompt: str = DEFAULT_SYSTEM,
        score_pattern: str = DEFAULT_PATTERN,
        min_score: float = 1.0,
        max_score: float = 10.0,
        normalize: bool = True,
        failure_value: float = 0.0,
        max_new_tokens: int = 32,
        timeout_s: float = 60.0,
        retries: int = 2,
        concurrency: int = 4,
        batch_size: int = 8,
        cache_dir: str = "data/06_models",
        name: str = "llm_judge",
    ):
        if backend not in ("http", "transformers"):
            raise ValueError(f"{name}: backend must be 'http' or 'transformers', got {backend!r}")
        if backend == "http" and not url:
            raise ValueError(f"{name}: the http backend needs 'url' (e.g. http://host:8000/v1)")
        if backend == "transformers" and not model:
            raise ValueError(f"{name}: the transformers backend needs 'model' (a model reference)")
        if max_score <= min_score:
            raise ValueError(f"{name}: max_score must exceed min_score")
        self.name = name
        self.backend = backend
        self.url = chat_url(url) if url else None
        self.model = model
        self.api_key = self._api_key(credentials or {}, credentials_key or name)
        self.rubric, self.system_prompt = rubric, system_prompt
        self.pattern = re.compile(score_pattern)
        self.min_score, self.max_score = float(min_score), float(max_score)
        self.normalize, self.failure_value = bool(normalize), float(failure_value)
        self.max_new_tokens, self.timeout_s = int(max_new_tokens), float(timeout_s)
        self.retries, self.concurrency = int(retries), max(1, int(concurrency))
        self.batch_size, self.cache_dir = int(batch_size), cache_dir
        self._client: Any = None
        self._policy: Any = None

    @staticmethod
    def _api_key(credentials: dict[str, Any], key: str) -> str | None:
        entry = credentials.get(key, credentials)
        return entry.get("api_key") if isinstance(entry, dict) else None

    def messages(self, prompt: str, completion: str) -> list[dict[str, str]]:
        """The judge's chat for one candidate."""
        user = self.rubric.format(
            prompt=prompt,
            completion=completion,
            min_score=f"{self.min_score:g}",
            max_score=f"{self.max_score:g}",
        )
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    def parse(self, reply: str | None) -> float | None:
        """The (normalised) score in ``reply``, or None when it has none in range."""
        match = self.pattern.search(reply or "")
        if not match:
            return None
        value = float(match.group(1) if match.groups() else match.group(0))
        if not self.min_score <= value <= self.max_score:
            return None
        if self.normalize:
            return (value - self.min_score) / (self.max_score - self.min_score)
        return value

    # --- http backend -------------------------------------------------------------------------
    def _post(self, messages: list[dict[str, str]]) -> str | None:
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(timeout=self.timeout_s, headers=headers)
        body = {
            "model": self.model or "judge",
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.max_new_tokens,
        }
        reply = post_chat(self._client, str(self.url), body, self.retries, self.name)
        return None if reply is None else chat_content(reply)

    def _http_replies(self, chats: list[list[dict[str, str]]]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            iterator = pool.map(self._post, chats)  # keeps order
            return list(tqdm(iterator, total=len(chats), desc=self.name, disable=len(chats) < 50))

    # --- transformers backend -----------------------------------------------------------------
    def _local_replies(self, chats: list[list[dict[str, str]]]) -> list[str | None]:
        import torch

        from taoflow.generation.chat import render_chat_ids
        from taoflow.models import load_policy

        if self._policy is None:
            self._policy = load_policy(str(self.model), cache_dir=self.cache_dir)
        tokenizer, model = self._policy.tokenizer, self._policy.model
        replies: list[str | None] = []
        starts = range(0, len(chats), self.batch_size)
        for start in tqdm(starts, desc=self.name, unit="batch", disable=len(starts) < 4):
            # Judged text (prompts, completions) may hold chat markers: they stay text.
            rows = [render_chat_ids(tokenizer, c) for c in chats[start : start + self.batch_size]]
            batch = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            replies.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        return replies

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        chats = [
            self.messages(p, c)
            for p, c in zip(
                frame["prompt"].astype(str), frame["completion"].astype(str), strict=True
            )
        ]
        replies = (
            self._http_replies(chats) if self.backend == "http" else self._local_replies(chats)
        )
        parsed = [self.parse(r) for r in replies]
        failed = np.array([p is None for p in parsed], dtype=bool)
        scores = np.array([self.failure_value if p is None else p for p in parsed], dtype=float)
        request_errors = sum(r is None for r in replies)
        return ScoreResult(
            scores=scores,
            failed=failed,
            columns={"reply": [r or "" for r in replies]},
            metrics={
                "request_errors": float(request_errors),
                "unparseable": float(failed.sum() - request_errors),
            },
        )
