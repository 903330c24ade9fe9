"""Simulated users' prompts: fresh problems that share none with the shipped usage or benchmark.

A prompt the model was tuned on (usage) or is judged on (benchmark) would make the simulated
traffic leak labels into training or the yardstick into the traffic; the pool is drawn from
reasoning-gym under a seed of its own and every question whose normalised text is in either set
is skipped. :func:`assert_disjoint` re-checks it on what was drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from taoflow.config.simulate import PoolParams
from taoflow.core.ids import stable_hash
from taoflow.core.text import dedup_key


@dataclass(frozen=True)
class Problem:
    """One pool problem: its question, its gold answer (only the checker reads it), its key."""

    key: str
    question: str
    answer: str


def question_key(question: str) -> str:
    """Identity of a question as ingest sees it (NFKC, case and whitespace folded)."""
    return dedup_key([{"role": "user", "content": str(question)}])


def build_pool(pool: PoolParams, n: int, exclude: Iterable[str]) -> list[Problem]:
    """The first ``n`` distinct problems of the seeded stream whose question is not in ``exclude``.

    ``exclude`` holds questions (raw text); they are compared by :func:`question_key`. Raises
    when the task cannot supply ``n`` such problems (e.g. a tiny problem space).
    """
    import reasoning_gym

    banned = {question_key(q) for q in exclude}
    size = max(2 * n, 16)
    while True:
        seen, out = set(banned), []
        items = reasoning_gym.create_dataset(pool.dataset, seed=pool.seed, size=size, **pool.config)
        for item in items:
            key = question_key(item["question"])
            if key in seen:
                continue
            seen.add(key)
            out.append(Problem(stable_hash(key), str(item["question"]), str(item["answer"])))
            if len(out) == n:
                return out
        if size > 64 * n + 4096:
            raise ValueError(
                f"simulate.pool: {pool.dataset} with {pool.config} gave only {len(out)} problems "
                f"outside usage and benchmark, {n} needed; widen simulate.pool.config"
            )
        size *= 4


def assert_disjoint(pool: Iterable[Problem], *others: Iterable[str]) -> None:
    """Raise if any pool question is (after normalisation) one of ``others``' questions."""
    keys = {question_key(p.question) for p in pool}
    for other in others:
        shared = keys & {question_key(q) for q in other}
        if shared:
            raise AssertionError(f"simulate pool shares {len(shared)} problem(s) with held data")
