"""``verifier``: a user function ``module:function(prompt, completion) -> float``, isolated.

User code (format rules, JSON-schema checks, running unit tests of generated code) may hang,
crash or leak; it runs in a small pool of worker processes. Each call has a time limit: a call
that overruns has its worker killed and replaced, a call that raises (or kills its worker, or
returns something that is not a finite number) scores ``failure_value``. Failures are counted,
never fatal — except a function that cannot even be imported, which is a configuration error.

Workers run in a sandbox (``taoflow.scoring.sandbox``): by default bubblewrap with no network,
a read-only view of only what Python needs, a private scratch ``/tmp``, a clean environment and
resource limits; the timeout kills the worker's whole process group.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from taoflow.scoring.base import ScoreResult
from taoflow.scoring.sandbox import SandboxLimits, check_sandbox, kill_group, start_worker


class _Channel:
    """JSON messages to a worker's stdin and from its stdout (``wait`` polls :meth:`fileno`)."""

    def __init__(self, process: Any):
        self._out = Connection(os.dup(process.stdin.fileno()), readable=False)
        self._in = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()

    def send(self, message: Any) -> None:
        self._out.send_bytes(json.dumps(message).encode())

    def recv(self) -> Any:
        return json.loads(self._in.recv_bytes(1 << 20))

    def poll(self, timeout: float) -> bool:
        return self._in.poll(timeout)

    def fileno(self) -> int:
        return self._in.fileno()

    def close(self) -> None:
        for conn in (self._out, self._in):
            with contextlib.suppress(OSError):
                conn.close()


class _Worker:
    def __init__(self, target: str, start_timeout_s: float, limits: SandboxLimits, sandbox: str):
        self.process, self.scratch = start_worker(target, limits, sandbox)
        self.conn = _Channel(self.process)
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise TimeoutError(f"verifier worker for {target} did not start in {start_timeout_s}s")
        try:
            status, detail = self.conn.recv()
        except (EOFError, OSError, ValueError) as exc:
            self.kill()
            raise RuntimeError(f"verifier worker for {target} died while importing it") from exc
        if status != "ready":
            self.kill()
            raise ImportError(f"verifier {target!r} cannot be loaded: {detail}")
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        kill_group(self.process)
        self.conn.close()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        self.kill()


class VerifierScorer:
    """Scores ``function(prompt, completion)`` (prompt: the last user message) per candidate.

    ``timeout_s`` bounds each call; ``workers`` processes run calls in parallel (the pool starts
    on first use and is reused across calls until :meth:`close`). Workers are fresh Python
    processes, so the function must be importable by its path (``pkg.module:function``); inside
    the ``bwrap`` sandbox only its top-level module or package is visible, so helpers belong in
    that package. ``sandbox: none`` opts out of isolation (limits and the group kill stay).
    """

    def __init__(
        self,
        *,
        function: str,
        timeout_s: float = 5.0,
        workers: int = 2,
        failure_value: float = 0.0,
        start_timeout_s: float = 60.0,
        sandbox: str = "bwrap",
        memory_mb: int = 4096,
        file_size_mb: int = 64,
        max_processes: int = 64,
        scratch_mb: int = 256,
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
        check_sandbox(sandbox)
        self.sandbox = sandbox
        self.limits = SandboxLimits(
            memory_mb=int(memory_mb),
            file_size_mb=int(file_size_mb),
            max_processes=int(max_processes),
            scratch_mb=int(scratch_mb),
            cpu_seconds_per_call=math.ceil(self.timeout_s) + 1,
        )
        self._idle: list[_Worker] = []

    def _new_worker(self) -> _Worker:
        return _Worker(self.target, self.start_timeout_s, self.limits, self.sandbox)

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
                        except (EOFError, OSError, ValueError):  # the worker died or lied
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
