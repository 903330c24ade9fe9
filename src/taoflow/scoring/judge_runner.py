"""One judge, loaded at most once per run and shared by every shard that needs it.

``prepare_judge`` resolves the judge once (materialising packaged weights) and hands over a
small reference (:func:`judge_reference`); the shards of the ``judge`` stage ask a
:class:`JudgeRunner` built from it, which loads the model (or opens the endpoint) only when a
shard actually has to be computed — a fully resumed run never loads the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taoflow.config.generate import GenerateParams
from taoflow.config.judge import JudgeParams
from taoflow.core.ids import stable_hash
from taoflow.scoring.judge import chat_content
from taoflow.scoring.judge_http import (
    ChatEndpoint,
    parse_verdict,
    reference_bodies,
    verdict_body,
)
from taoflow.scoring.judge_model import (
    folder_fingerprint,
    majority_answer,
    reference_row,
    reference_rows,
    verdict_probabilities,
)


def judge_reference(judge: JudgeParams) -> dict[str, Any]:
    """``{backend, name, path, dtype, fingerprint}``: the judge resolved once (weights built).

    The fingerprint names the weights (a packaged judge's pinned sha256, else a content hash of
    the loaded weights) so shard ids change exactly when the judge does.
    """
    if judge.backend == "http":
        fingerprint = stable_hash({"url": judge.http.url, "model": judge.http.model})
        return {
            "backend": "http",
            "name": judge.name,
            "path": None,
            "dtype": None,
            "fingerprint": fingerprint,
        }
    from taoflow.generation import policy_fingerprint
    from taoflow.models import load_policy, resolve_model_path

    path = resolve_model_path(judge.model, judge.cache_dir)
    fingerprint = folder_fingerprint(path)
    if fingerprint is None:
        fingerprint = policy_fingerprint(load_policy(path, dtype=judge.dtype))
    return {
        "backend": "transformers",
        "name": judge.name,
        "path": str(path),
        "dtype": judge.dtype,
        "fingerprint": fingerprint,
    }


class JudgeRunner:
    """Reference answers and verdicts from the judge a :func:`judge_reference` names."""

    def __init__(
        self,
        reference: dict[str, Any],
        judge: JudgeParams,
        credentials: dict[str, Any] | None,
        generate: GenerateParams | None = None,
    ):
        """``generate``: ``params:generate``, whose ``backend`` a local judge generates through."""
        self.reference, self.judge = dict(reference), judge
        self.generator = generate.backend if generate is not None else "transformers"
        self.engine = generate.vllm if generate is not None else None
        self.name = str(reference["name"])
        entry = (credentials or {}).get(judge.http.credentials_key, credentials or {})
        self.api_key = entry.get("api_key") if isinstance(entry, dict) else None
        self._policy: Any = None
        self._endpoint: ChatEndpoint | None = None

    @property
    def policy(self) -> Any:
        if self._policy is None:
            from taoflow.models import load_policy

            self._policy = load_policy(str(self.reference["path"]), dtype=self.judge.dtype)
            self._policy.lineage["name"] = self.name
        return self._policy

    @property
    def endpoint(self) -> ChatEndpoint:
        if self._endpoint is None:
            http = self.judge.http
            self._endpoint = ChatEndpoint(
                url=str(http.url),
                model=http.model,
                api_key=self.api_key,
                timeout_s=http.timeout_s,
                retries=http.retries,
                concurrency=http.concurrency,
                name=f"judge {self.name}",
            )
        return self._endpoint

    def references(
        self,
        prompt_ids: Sequence[str],
        conversations: Sequence[Sequence[dict]],
        seeds: Sequence[int],
        extractor: Any,
        progress: str,
    ) -> list[dict[str, Any]]:
        """One reference row per conversation (greedy, or the majority of ``samples``)."""
        j = self.judge
        if self.reference["backend"] != "http":
            return reference_rows(
                self.policy,
                prompt_ids,
                conversations,
                judge=self.name,
                samples=j.samples,
                temperature=j.temperature,
                max_new_tokens=j.max_new_tokens,
                seeds=seeds,
                token_budget=j.token_budget,
                extractor=extractor,
                progress=progress,
                backend=self.generator,
                engine=self.engine,
            )
        from taoflow.core.ids import derive_seed

        per_prompt = [
            reference_bodies(
                chat,
                samples=j.samples,
                temperature=j.temperature,
                max_new_tokens=j.max_new_tokens,
                seeds=[derive_seed(s, k) for k in range(j.samples)],
            )
            for chat, s in zip(conversations, seeds, strict=True)
        ]
        flat = [body for bodies in per_prompt for body in bodies]
        replies = iter(self.endpoint.post_many(flat, progress))
        rows = []
        for pid in prompt_ids:
            texts = []
            for _ in range(j.samples):
                reply = next(replies)
                texts.append("" if reply is None else chat_content(reply))
            answer, confidence, completion = majority_answer(texts, extractor)
            rows.append(
                reference_row(
                    pid,
                    self.name,
                    answer=answer,
                    confidence=confidence,
                    n_samples=j.samples,
                    completion=completion,
                )
            )
        return rows

    def verdicts(self, chats: Sequence[Sequence[dict]], progress: str) -> np.ndarray:
        """P(correct) per grading chat; NaN where an endpoint's reply named neither label."""
        labels = self.judge.prompt
        if self.reference["backend"] != "http":
            return verdict_probabilities(
                self.policy,
                chats,
                correct=labels.correct,
                incorrect=labels.incorrect,
                token_budget=self.judge.token_budget,
            )
        bodies = [verdict_body(chat, self.judge.max_new_tokens) for chat in chats]
        replies = self.endpoint.post_many(bodies, progress)
        parsed = [parse_verdict(r, labels.correct, labels.incorrect) for r in replies]
        return np.array([np.nan if p is None else p for p in parsed], dtype=float)

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
