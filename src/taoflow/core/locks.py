"""Inter-process file locks (``fcntl.flock``) that say who holds them.

Two ``kedro run`` in one project would race on the same outputs and the same MLflow store (its
schema migration, the registry). A lock file under the project serialises them; its text names
the holder (pid, host, command, start time), so the one refused can say whom it waited for. The
kernel drops a flock when its holder dies, so a killed run never leaves a stale lock behind.
Re-entrant within a process (nested or repeated sessions in one interpreter share the hold).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

_HELD: dict[str, list[int]] = {}  # resolved path -> [fd, depth]
_GUARD = threading.Lock()


class LockHeldError(RuntimeError):
    """Another process holds the lock."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError, TypeError):
        return {}


def describe_holder(path: str | Path) -> str:
    """One line naming the process recorded in a lock file."""
    info = _holder(Path(path))
    if not info:
        return "an unknown process"
    return (
        f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
        f"({info.get('command')!r})"
    )


def acquire(path: str | Path, *, blocking: bool = False, purpose: str = "run") -> None:
    """Take the lock at ``path`` (created if missing); LockHeldError names the holder."""
    path = Path(path).resolve()
    key = str(path)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeldError(
                f"another {purpose} holds {path}: {describe_holder(path)}. "
                "Wait for it to finish (or stop it), then run again."
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = [fd, 1]


def release(path: str | Path) -> None:
    """Give back one hold of ``path`` taken by this process (no-op when none)."""
    key = str(Path(path).resolve())
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        os.ftruncate(held[0], 0)
        fcntl.flock(held[0], fcntl.LOCK_UN)
        os.close(held[0])


def held(path: str | Path) -> bool:
    """Whether this process holds ``path``."""
    return str(Path(path).resolve()) in _HELD
