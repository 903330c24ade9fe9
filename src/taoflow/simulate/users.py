"""Simulated users: a seeded traffic plan, the official ``openai`` client, a noisy checker.

Everything random is drawn up front from ``(seed, cycle)`` into a :class:`Request` plan, so the
same config sends the same prompts with the same request seeds and gives (for the same answers)
the same feedback: coverage and flips are decided before the answer is seen, and the checker
only turns a correct/wrong answer into up/down through them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from taoflow.config.shared import TaskParams
from taoflow.config.simulate import SimulateParams
from taoflow.core.answers import answers_match, extract_answer
from taoflow.core.ids import stable_hash
from taoflow.simulate.pool import Problem

COMMENTS_UP = ("thanks, correct", "right answer", "good")
COMMENTS_DOWN = ("wrong result", "that is not the sum", "incorrect, please check the arithmetic")


@dataclass(frozen=True)
class Request:
    """One planned request and the feedback its user will give (decided before the answer)."""

    cycle: int
    problem: Problem
    sample: int
    seed: int
    user: str
    rates: bool  # this user leaves feedback (coverage)
    flips: bool  # ... and gets it wrong (noise)
    comment: bool
    late: bool  # sent the next day


@dataclass
class Outcome:
    """What happened to a request: the answer, whether it was right, the feedback given."""

    request: Request
    trace_id: str | None
    answer: str
    correct: bool
    thumbs: str | None  # up / down / None (no feedback)
    comment: str | None


def day_problems(pool: Sequence[Problem], params: SimulateParams, cycle: int) -> list[Problem]:
    """Cycle ``cycle``'s (1-based) slice of the pool: new problems every day."""
    start = (cycle - 1) * params.prompts_per_cycle
    return list(pool[start : start + params.prompts_per_cycle])


def plan_day(pool: Sequence[Problem], params: SimulateParams, cycle: int) -> list[Request]:
    """The day's requests, in a seeded order: ``samples_per_prompt`` per problem."""
    rng = random.Random(stable_hash(["simulate", params.seed, cycle]))
    fb = params.feedback
    plan = []
    for problem in day_problems(pool, params, cycle):
        for sample in range(params.samples_per_prompt):
            rates = rng.random() < fb.coverage
            flips = rng.random() < fb.noise
            comment = rng.random() < fb.comment_share
            late = rng.random() < fb.late_share
            plan.append(
                Request(
                    cycle=cycle,
                    problem=problem,
                    sample=sample,
                    seed=rng.randrange(2**31),
                    user=f"user-{rng.randrange(10**6):06d}",
                    rates=rates,
                    flips=flips,
                    comment=comment,
                    late=late,
                )
            )
    rng.shuffle(plan)
    return plan


def plan_digest(plan: Sequence[Request]) -> str:
    """Content hash of a plan (what the cycle's MLflow run records as the traffic it sent)."""
    return stable_hash([asdict(r) for r in plan])


def judge(
    request: Request, completion: str, task: TaskParams
) -> tuple[bool, str | None, str | None]:
    """(correct, thumbs, comment): the checker's verdict through the user's coverage and noise."""
    correct = answers_match(extract_answer(completion, task.answer), request.problem.answer)
    if not request.rates:
        return correct, None, None
    up = correct != request.flips
    thumbs = "up" if up else "down"
    comment = None
    if request.comment:
        choices = COMMENTS_UP if up else COMMENTS_DOWN
        comment = choices[int(stable_hash([request.seed, "comment"]), 16) % len(choices)]
    return correct, thumbs, comment


def _messages(problem: Problem, task: TaskParams) -> list[dict[str, str]]:
    system = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    return [*system, {"role": "user", "content": problem.question}]


def send_day(
    client: Any, plan: Sequence[Request], params: SimulateParams, task: TaskParams, model: str
) -> list[Outcome]:
    """Send the plan in bounded batches (``batch_size`` in flight); feedback not late is posted."""

    def one(request: Request) -> Outcome:
        completion = client.chat.completions.create(
            model=model,
            messages=_messages(request.problem, task),
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            seed=request.seed,
            user=request.user,
        )
        answer = completion.choices[0].message.content or ""
        trace_id = (completion.model_extra or {}).get("trace_id")
        correct, thumbs, comment = judge(request, answer, task)
        outcome = Outcome(request, trace_id, answer, correct, thumbs, comment)
        if thumbs is not None and trace_id and not request.late:
            post_feedback(client, outcome)
        return outcome

    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=params.batch_size) as pool:
        for start in range(0, len(plan), params.batch_size):
            outcomes.extend(pool.map(one, plan[start : start + params.batch_size]))
    return outcomes


def post_feedback(client: Any, outcome: Outcome) -> None:
    """POST /v1/feedback through the openai client's own transport (auth, retries, base URL)."""
    body = {"trace_id": outcome.trace_id, "thumbs": outcome.thumbs, "user": outcome.request.user}
    if outcome.comment:
        body["comment"] = outcome.comment
    client.post("/feedback", body=body, cast_to=object)


def late_outcomes(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Feedback held back for the next day (posted before that day's ingest)."""
    return [o for o in outcomes if o.thumbs is not None and o.trace_id and o.request.late]
