"""The judge over an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp, a hosted
API): reference answers from chat completions, verdicts from the reply's label — or from the
first token's ``top_logprobs`` when the server returns them. Requests share the ``llm_judge``
scorer's retry path; the API key comes from Kedro credentials, never from parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm.auto import tqdm

from taoflow.scoring.judge import chat_content, chat_url, post_chat


class ChatEndpoint:
    """A thread-pooled chat-completion client for one judge endpoint."""

    def __init__(
        self,
        *,
        url: str,
        model: str | None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        concurrency: int = 4,
        name: str = "judge",
    ):
        self.url, self.model, self.name = chat_url(url), model or "judge", name
        self.api_key, self.timeout_s = api_key, float(timeout_s)
        self.retries, self.concurrency = int(retries), max(1, int(concurrency))
        self._client: Any = None

    def _post(self, body: dict[str, Any]) -> dict[str, Any] | None:
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(timeout=self.timeout_s, headers=headers)
        return post_chat(
            self._client, self.url, {"model": self.model, **body}, self.retries, self.name
        )

    def post_many(self, bodies: Sequence[dict[str, Any]], desc: str) -> list[dict[str, Any] | None]:
        """Responses in request order (None where a request failed after its retries)."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            iterator = pool.map(self._post, bodies)
            return list(tqdm(iterator, total=len(bodies), desc=desc, disable=len(bodies) < 50))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def reference_bodies(
    chat: Sequence[dict], *, samples: int, temperature: float, max_new_tokens: int, seeds: list[int]
) -> list[dict[str, Any]]:
    """One request per sample (greedy: one at temperature 0), each with its own seed."""
    return [
        {
            "messages": list(chat),
            "temperature": temperature if samples > 1 else 0,
            "max_tokens": max_new_tokens,
            "seed": int(seed),
        }
        for seed in seeds[:samples]
    ]


def verdict_body(chat: Sequence[dict], max_new_tokens: int) -> dict[str, Any]:
    """A greedy grading request that asks for the first token's top log-probabilities."""
    return {
        "messages": list(chat),
        "temperature": 0,
        "max_tokens": max_new_tokens,
        "logprobs": True,
        "top_logprobs": 10,
    }


def _first_token_logprobs(reply: dict[str, Any]) -> list[tuple[str, float]]:
    try:
        content = reply["choices"][0]["logprobs"]["content"]
        return [(str(t["token"]), float(t["logprob"])) for t in content[0]["top_logprobs"]]
    except (KeyError, IndexError, TypeError, ValueError):
        return []


def parse_verdict(reply: dict[str, Any] | None, correct: str, incorrect: str) -> float | None:
    """P(correct) from ``top_logprobs`` when present, else 1/0 from the reply's first label word.

    None: the request failed, or the reply names neither label.
    """
    if reply is None:
        return None
    mass = {correct.lower(): 0.0, incorrect.lower(): 0.0}
    for token, logprob in _first_token_logprobs(reply):
        word = token.strip().lower()
        if word in mass:
            mass[word] += math.exp(logprob)
    total = sum(mass.values())
    if total > 0:
        return mass[correct.lower()] / total
    text = chat_content(reply).lower()
    spots = {label: text.find(label) for label in mass if label in text}
    if not spots:
        return None
    # "incorrect" contains "correct": the earliest, then the longest label found there wins
    first = min(spots.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]
    return 1.0 if first == correct.lower() else 0.0
