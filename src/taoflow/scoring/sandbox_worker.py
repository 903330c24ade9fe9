"""The verifier's worker process: runs as a script (``python -E -s sandbox_worker.py CONFIG``).

Standard library only and no package imports, so it starts inside the sandbox without the rest
of taoflow. Protocol: JSON messages over ``multiprocessing.connection`` framing, requests on
stdin and replies on a private copy of stdout (the user's prints go to stderr instead).
JSON rather than pickle, so nothing the sandboxed code writes can run code in the parent.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import resource
import sys
from multiprocessing.connection import Connection
from typing import Any


def apply_limits(limits: dict[str, int]) -> None:
    """Memory, file size and process-count limits (soft = hard: the user code cannot raise them)."""
    table = {
        "memory_bytes": resource.RLIMIT_AS,
        "file_size_bytes": resource.RLIMIT_FSIZE,
        "max_processes": resource.RLIMIT_NPROC,
    }
    for key, which in table.items():
        value = limits.get(key)
        if value:
            resource.setrlimit(which, (int(value), int(value)))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def limit_cpu(seconds: int) -> None:
    """CPU seconds this call may use on top of what the worker has used so far (SIGXCPU)."""
    if seconds <= 0:
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = math.ceil(used.ru_utime + used.ru_stime)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = spent + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj


def main(config: dict[str, Any]) -> None:
    reader = Connection(0, writable=False)
    writer = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)

    def send(*reply: Any) -> None:
        writer.send_bytes(json.dumps(reply).encode())

    sys.path[:0] = [p for p in config["sys_path"] if p not in sys.path]
    apply_limits(config["limits"])
    try:
        function = load(config["target"])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        send("load_error", f"{type(exc).__name__}: {exc}")
        return
    send("ready", None)
    while True:
        try:
            request = json.loads(reader.recv_bytes())
        except EOFError:
            return
        if request is None:
            return
        limit_cpu(int(config["limits"].get("cpu_seconds_per_call") or 0))
        try:
            value = float(function(*request))
            reply = ("ok", value) if math.isfinite(value) else ("error", f"non-finite {value}")
        except BaseException as exc:  # noqa: BLE001 - any failure is the candidate's failure
            reply = ("error", f"{type(exc).__name__}: {exc}")
        send(*reply)


if __name__ == "__main__":
    sys.path.pop(0)  # this script's folder: user code must not shadow modules by landing there
    main(json.loads(sys.argv[1]))
