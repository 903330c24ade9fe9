"""Micro-batching: concurrent requests share one ``generate`` call instead of queueing one by one.

Requests land in a bounded asyncio queue. A single worker takes the first waiting request, keeps
collecting for ``window_s`` (or until ``max_batch_size``), groups what it got by the sampling
settings a batch must share (max tokens, temperature, top-p), and runs one
:func:`taoflow.generation.generate_completions` call per group in a dedicated worker thread, so the
event loop keeps accepting (and rejecting) requests meanwhile. Each request keeps its own seed
(the engine seeds per conversation), so an answer does not depend on what it was batched with.
A full queue is reported to the caller (HTTP 429), never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from taoflow.generation import generate_completions
from taoflow.models import Policy

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The server already holds as many waiting requests as configured."""


@dataclass
class GenerationRequest:
    """One chat request's generation work."""

    messages: list[dict[str, str]]
    max_new_tokens: int
    temperature: float
    top_p: float
    n: int
    seed: int
    on_token: Callable[[int, int], None] | None = None  # (sample, token id), generating thread
    future: asyncio.Future | None = None
    enqueued_ns: int = field(default_factory=time.time_ns)

    @property
    def batch_key(self) -> tuple[int, float, float]:
        """Settings every member of one ``generate`` call must share."""
        return (self.max_new_tokens, self.temperature, self.top_p)


@dataclass
class GenerationResult:
    """The engine's samples for one request plus what the trace wants to know about the batch."""

    samples: list[dict[str, Any]]
    start_ns: int
    end_ns: int
    batch_size: int


def engine_runner(policy: Policy, token_budget: int = 8192) -> Callable:
    """A ``run_batch`` function for :class:`BatchQueue` over the shared generation engine."""

    def run_batch(requests: list[GenerationRequest]) -> list[list[dict[str, Any]]]:
        first = requests[0]
        streaming = [r.on_token for r in requests]

        def on_token(conversation: int, sample: int, token: int) -> None:
            if streaming[conversation] is not None:
                streaming[conversation](sample, token)

        return generate_completions(
            policy,
            [r.messages for r in requests],
            num_return_sequences=[r.n for r in requests],
            do_sample=first.temperature > 0,
            temperature=first.temperature,
            top_p=first.top_p,
            top_k=0,
            max_new_tokens=first.max_new_tokens,
            seeds=[r.seed for r in requests],
            token_budget=token_budget,
            progress=False,
            on_token=on_token if any(streaming) else None,
        )

    return run_batch


class BatchQueue:
    """Bounded queue + one batching worker; ``submit`` awaits the request's samples."""

    def __init__(
        self,
        run_batch: Callable[[list[GenerationRequest]], list[list[dict[str, Any]]]],
        *,
        max_queue: int = 64,
        max_batch_size: int = 8,
        window_s: float = 0.01,
    ):
        self._run_batch = run_batch
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self._queue: asyncio.Queue[GenerationRequest] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taoflow-generate")
        self.batches_run = 0

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = asyncio.create_task(self._work(), name="taoflow-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:
            while not self._queue.empty():
                request = self._queue.get_nowait()
                if request.future is not None and not request.future.done():
                    request.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        """Queue ``request`` and wait for its samples; :class:`QueueFullError` when full."""
        return await self.enqueue(request)

    def enqueue(self, request: GenerationRequest) -> asyncio.Future:
        """Queue ``request`` now (:class:`QueueFullError` when full); the future of its result.

        A stream enqueues before it starts answering, so a full queue is still a plain 429.
        """
        if self._queue is None:
            raise RuntimeError("BatchQueue.start() was not called")
        request.future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            raise QueueFullError(
                f"server busy: {self.max_queue} requests already waiting; retry shortly"
            ) from None
        return request.future

    async def _collect(self) -> list[GenerationRequest]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[tuple, list[GenerationRequest]] = {}
            for request in batch:
                groups.setdefault(request.batch_key, []).append(request)
            for group in groups.values():
                live = [r for r in group if r.future is not None and not r.future.done()]
                if not live:
                    continue
                start = time.time_ns()
                try:
                    outputs = await loop.run_in_executor(self._executor, self._run_batch, live)
                except Exception as err:  # noqa: BLE001 - fail these requests, keep serving
                    logger.exception("generation failed for a batch of %d", len(live))
                    for request in live:
                        if not request.future.done():
                            request.future.set_exception(err)
                    continue
                end = time.time_ns()
                self.batches_run += 1
                for request, samples in zip(live, outputs, strict=True):
                    if not request.future.done():  # the client may have gone away
                        request.future.set_result(
                            GenerationResult(samples, start, end, batch_size=len(live))
                        )
