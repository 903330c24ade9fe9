"""Where verifier code runs: a bubblewrap sandbox (``sandbox: bwrap``) or a bare process (``none``).

``bwrap`` (Debian package ``bubblewrap``) starts each worker in new network, PID and IPC
namespaces (and a user namespace, or as the real user ``nobody`` when taoflow runs as root):
no network at all, a read-only view of only what Python needs (the interpreter, its
site-packages, taoflow's worker, the verifier's own module, a few system files from ``/etc``),
a private writable ``/tmp`` as scratch and working directory, no capabilities, and a clean
environment (no inherited variables, so no secrets). Home folders, the project (configuration,
credentials, data) and every other path do not exist inside. Resource limits (memory, file size,
process count, CPU per call) are set in the worker before the user's code is imported, and a
call past its timeout kills the whole process group; with ``--unshare-pid`` and
``--die-with-parent`` every process the code started dies with it.

``none`` keeps only the limits, the scratch working directory and the group kill: the code sees
the real filesystem, network and environment. It is the explicit opt-out for hosts without
bubblewrap or user namespaces.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SANDBOXES = ("bwrap", "none")
NOBODY = 65534
WORKER = Path(__file__).with_name("sandbox_worker.py")
# System files Python and common libraries read; everything else under /etc stays hidden.
ETC_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl/certs",
    "/etc/alternatives",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32")
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
}


class SandboxUnavailableError(RuntimeError):
    """The configured sandbox cannot run on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-worker limits; 0 disables one."""

    memory_mb: int = 4096
    file_size_mb: int = 64
    max_processes: int = 64
    cpu_seconds_per_call: int = 0
    scratch_mb: int = 256

    def as_worker_limits(self) -> dict[str, int]:
        return {
            "memory_bytes": self.memory_mb << 20,
            "file_size_bytes": self.file_size_mb << 20,
            "max_processes": self.max_processes,
            "cpu_seconds_per_call": self.cpu_seconds_per_call,
        }


def check_sandbox(kind: str) -> None:
    """Fail early, naming the fix, when ``kind`` cannot start a worker here."""
    if kind not in SANDBOXES:
        raise ValueError(f"verifier sandbox must be one of {SANDBOXES}, got {kind!r}")
    if kind == "none":
        return
    if shutil.which("bwrap") is None:
        raise SandboxUnavailableError(
            "the verifier sandbox needs bubblewrap: `apt-get install -y bubblewrap` "
            "(or set the verifier's `sandbox: none` to run its code unsandboxed)"
        )
    probe = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "true"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        raise SandboxUnavailableError(
            "bubblewrap cannot create namespaces here "
            f"({probe.stderr.strip() or probe.returncode}); enable unprivileged user namespaces "
            "or set the verifier's `sandbox: none` to run its code unsandboxed"
        )


def _module_paths(target: str) -> list[str]:
    """Files or folders holding the verifier's top-level module (found without importing it)."""
    top = target.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [str(Path(p).resolve()) for p in spec.submodule_search_locations]
    return [str(Path(spec.origin).resolve())] if spec.origin else []


def _python_paths() -> list[str]:
    """The interpreter, the standard library and site-packages (resolved, existing)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).parent)}
    paths.add(str(Path(sys.executable).resolve().parent.parent))
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_paths()[key])
    return sorted({str(Path(p).resolve()) for p in paths if p and Path(p).exists()} | set(paths))


def _sys_path(module_paths: list[str]) -> list[str]:
    """``sys.path`` for the worker: taoflow's source root, the module's parent, site-packages."""
    roots = [str(Path(p).parent) for p in module_paths]
    site = [p for p in sys.path if p and "-packages" in p and Path(p).is_dir()]
    return list(dict.fromkeys(roots + site))


def _ancestors(paths: list[str]) -> list[str]:
    """Folders above ``paths`` that are not bound themselves, outermost first (not ``/tmp``)."""
    bound = {"/", "/tmp", *paths, *SYSTEM_DIRS}
    found = {str(parent) for p in paths for parent in Path(p).parents} - bound
    return sorted(found, key=lambda p: (p.count("/"), p))


def worker_command(target: str, limits: SandboxLimits, kind: str) -> list[str]:
    """The argv that starts one worker for ``target`` inside sandbox ``kind``.

    In ``bwrap`` the scratch folder is the sandbox's private ``/tmp`` (gone with it); ``none``
    gets a host folder as its working directory from :func:`start_worker`.
    """
    module_paths = _module_paths(target)
    config = {
        "target": target,
        "sys_path": _sys_path(module_paths),
        "limits": limits.as_worker_limits(),
    }
    python = [sys.executable, "-E", "-s", str(WORKER), json.dumps(config)]
    if kind == "none":
        return python
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net"]
    argv += ["--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    argv += ["--clearenv"]
    if os.geteuid() == 0:
        # As root, the code runs as the real user ``nobody`` (setpriv inside the sandbox): no
        # capabilities, and the process limit counts (the kernel does not apply it to root).
        python = [*_drop_to_nobody(), *python]
    else:
        argv += ["--unshare-user", "--cap-drop", "ALL"]
    for key, value in SANDBOX_ENV.items():
        argv += ["--setenv", key, value]
    for path in SYSTEM_DIRS:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
    if limits.scratch_mb:
        argv += ["--size", str(limits.scratch_mb << 20)]
    argv += ["--tmpfs", "/tmp"]
    # The module's own folder is not bound (only the module), so its neighbours stay hidden.
    site = [p for p in config["sys_path"] if p not in {str(Path(m).parent) for m in module_paths}]
    binds = [*ETC_FILES, *_python_paths(), *site, *module_paths, str(WORKER)]
    binds = [p for p in dict.fromkeys(binds) if Path(p).exists()]
    for folder in _ancestors(binds):  # bwrap would create them 0700: unreadable for nobody
        argv += ["--perms", "0755", "--dir", folder]
    for path in binds:
        argv += ["--ro-bind", path, path]
    argv += ["--remount-ro", "/", "--chdir", "/tmp"]
    return argv + python


def _drop_to_nobody() -> list[str]:
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] + [
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
    ]


def start_worker(
    target: str, limits: SandboxLimits, kind: str
) -> tuple[subprocess.Popen, str | None]:
    """Start one worker process in its own session; returns it and its host scratch folder."""
    scratch = tempfile.mkdtemp(prefix="taoflow-verifier-") if kind == "none" else None
    env: dict[str, Any] | None = None if kind == "none" else dict(SANDBOX_ENV)
    process = subprocess.Popen(
        worker_command(target, limits, kind),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=scratch,
        env=env,
        start_new_session=True,  # one process group: the timeout kills all of it
    )
    return process, scratch


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group (the sandbox and anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
