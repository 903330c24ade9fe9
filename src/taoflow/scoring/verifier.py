"""``verifier``: a user function ``module:function(prompt, completion) -> float``, isolated.

User code (format rules, JSON-schema checks, running unit tests of generated code) may hang,
crash or leak; it runs in a small pool of worker processes. Each call has a time limit: a call
that overruns has its worker killed and replaced, a call that raises (or kills its worker, or
returns something that is not a finite number) scores ``failure_value``. Failures are counted,
never fatal — except a function that cannot even be imported, which is a configuration error.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from taoflow.scoring.base import ScoreResult
from taoflow.scoring.factory import import_object


def _worker_main(conn: Connection, target: str) -> None:  # pragma: no cover - in a subprocess
    """Worker loop: import the function once, then answer (prompt, completion) requests."""
    try:
        function = import_object(target)
        if not callable(function):
            raise TypeError(f"{target} is not callable")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("load_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            value = float(function(*request))
            reply = ("ok", value) if math.isfinite(value) else ("error", f"non-finite {value}")
        except BaseException as exc:  # noqa: BLE001 - any failure is the candidate's failure
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


class _Worker:
    def __init__(self, context: Any, target: str, start_timeout_s: float):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, target), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise TimeoutError(f"verifier worker for {target} did not start in {start_timeout_s}s")
        try:
            status, detail = self.conn.recv()
        except EOFError as exc:
            self.kill()
            raise RuntimeError(f"verifier worker for {target} died while importing it") from exc
        if status != "ready":
            self.kill()
            raise ImportError(f"verifier {target!r} cannot be loaded: {detail}")
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=1)
        self.kill()


class VerifierScorer:
    """Scores ``function(prompt, completion)`` (prompt: the last user message) per candidate.

    ``timeout_s`` bounds each call; ``workers`` processes run calls in parallel (the pool starts
    on first use and is reused across calls until :meth:`close`). Workers start with ``spawn``,
    so the function must be importable by its path (``pkg.module:function``) in a fresh process.
    """

    def __init__(
        self,
        *,
        function: str,
        timeout_s: float = 5.0,
        workers: int = 2,
        failure_value: float = 0.0,
        start_timeout_s: float = 60.0,
        name: str = "verifier",
    ):
        if ":" not in str(function):
            raise ValueError(f"{name}: function must be 'pkg.module:function', got {function!r}")
        if timeout_s <= 0 or workers < 1:
            raise ValueError(f"{name}: timeout_s must be > 0 and workers >= 1")
        self.target = str(function)
        self.timeout_s = float(timeout_s)
        self.n_workers = int(workers)
        self.failure_value = float(failure_value)
        self.start_timeout_s = float(start_timeout_s)
        self.name = name
        self._context = mp.get_context("spawn")  # fork would copy torch's threads and state
        self._idle: list[_Worker] = []

    def _new_worker(self) -> _Worker:
        return _Worker(self._context, self.target, self.start_timeout_s)

    def close(self) -> None:
        """Stop the worker processes."""
        while self._idle:
            self._idle.pop().stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def call_all(self, requests: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, dict]:
        """Run every request; returns (values, failed, failure counts by kind)."""
        values = np.full(len(requests), self.failure_value)
        failed = np.zeros(len(requests), dtype=bool)
        counts = {"timeouts": 0, "errors": 0, "crashes": 0}
        pending = deque(range(len(requests)))
        busy: list[_Worker] = []
        bar = tqdm(total=len(requests), desc=self.name, unit="call", disable=len(requests) < 200)

        def finish(worker: _Worker, ok: bool, value: float, kind: str | None) -> None:
            index = worker.task
            values[index] = value if ok else self.failure_value
            failed[index] = not ok
            if kind:
                counts[kind] += 1
            worker.task = None
            busy.remove(worker)
            bar.update(1)

        try:
            while pending or busy:
                while pending and len(busy) < self.n_workers:
                    worker = self._idle.pop() if self._idle else self._new_worker()
                    worker.task = pending.popleft()
                    worker.conn.send(requests[worker.task])
                    worker.deadline = time.monotonic() + self.timeout_s
                    busy.append(worker)
                timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = set(wait([w.conn for w in busy], timeout=timeout))
                for worker in list(busy):
                    if worker.conn in ready:
                        try:
                            status, payload = worker.conn.recv()
                        except (EOFError, OSError):  # the function killed its worker
                            finish(worker, False, 0.0, "crashes")
                            worker.kill()
                            continue
                        if status == "ok":
                            finish(worker, True, payload, None)
                        else:
                            finish(worker, False, 0.0, "errors")
                        self._idle.append(worker)
                    elif time.monotonic() >= worker.deadline:
                        finish(worker, False, 0.0, "timeouts")
                        worker.kill()
        finally:
            for worker in busy:  # interrupted: leave no stray processes behind
                worker.kill()
            bar.close()
        return values, failed, counts

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        requests = list(
            zip(frame["prompt"].astype(str), frame["completion"].astype(str), strict=True)
        )
        values, failed, counts = self.call_all(requests)
        return ScoreResult(
            scores=values, failed=failed, metrics={k: float(v) for k, v in counts.items()}
        )
