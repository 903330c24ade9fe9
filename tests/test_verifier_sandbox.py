"""The verifier's sandbox blocks each escape measured on an unsandboxed worker: reading an env
secret or the home folder, writing outside scratch, opening a TCP connection, outliving the
timeout, forking without bound. ``sandbox: none`` is the explicit opt-out and shows the escapes
are real (each probe succeeds there)."""

from __future__ import annotations

import os
import shutil
import socket
import textwrap
import time
from pathlib import Path

import pytest

from taoflow.scoring.sandbox import SandboxUnavailableError, check_sandbox
from taoflow.scoring.verifier import VerifierScorer

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
SECRET = "sk-planted-4242"


@pytest.fixture()
def probes(tmp_path, monkeypatch):
    """A verifier module whose function runs the probe named by the completion: 1.0 = escaped."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "tao_escape_probes.py").write_text(
        textwrap.dedent(
            """
            import os, socket, subprocess, sys

            def probe(target, name):
                if name == "env":
                    return float(os.environ.get("TAO_PLANTED_SECRET") == target)
                if name == "read":
                    path, needle = target.split("|")
                    try:
                        return float(needle in open(path).read())
                    except OSError:
                        return 0.0
                if name == "write":
                    try:
                        with open(target, "w") as handle:
                            handle.write("escaped")
                        return 1.0
                    except OSError:
                        return 0.0
                if name == "scratch":
                    with open("scratch.txt", "w") as handle:
                        handle.write("ok")
                    return float(open("scratch.txt").read() == "ok")
                if name == "tcp":
                    try:
                        socket.create_connection(("127.0.0.1", int(target)), timeout=2).close()
                        return 1.0
                    except OSError:
                        return 0.0
                if name == "linger":
                    subprocess.Popen(
                        [sys.executable, "-c",
                         f"import time; time.sleep(3); open({target!r}, 'w').write('alive')"],
                        start_new_session=True,
                    )
                    import time
                    time.sleep(60)
                if name == "forkbomb":
                    children = []
                    try:
                        for _ in range(200):
                            children.append(subprocess.Popen(["sleep", "5"]))
                    except OSError:
                        return 0.0
                    finally:
                        for child in children:
                            child.kill()
                    return 1.0
                if name == "fill":  # many small files: only the scratch size can stop it
                    try:
                        for i in range(int(target)):
                            with open(f"fill-{i}", "wb") as handle:
                                handle.write(b"x" * (1 << 20))
                        return 1.0
                    except OSError:
                        return 0.0
                if name == "memory":
                    try:
                        block = bytearray(int(target) << 20)
                        return float(len(block) > 0)
                    except MemoryError:
                        return 0.0
                raise ValueError(name)
            """
        )
    )
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("TAO_PLANTED_SECRET", SECRET)
    return tmp_path


def run(scorer: VerifierScorer, calls: list[tuple[str, str]]) -> list[float]:
    try:
        values, _, _ = scorer.call_all(calls)
    finally:
        scorer.close()
    return values.tolist()


@pytest.fixture()
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@needs_bwrap
def test_bwrap_blocks_env_home_writes_and_network(probes, listener):
    secret_file = probes / "home_secret.txt"
    secret_file.write_text(SECRET)
    # Outside scratch: the home folder, and the verifier's own code folder.
    outside, planted = (
        Path.home() / f"tao-escape-{os.getpid()}.txt",
        probes / "code" / "planted.txt",
    )
    calls = [
        (SECRET, "env"),
        (f"{secret_file}|{SECRET}", "read"),
        (str(outside), "write"),
        (str(planted), "write"),
        (str(listener), "tcp"),
        ("", "scratch"),
    ]
    unsafe = run(VerifierScorer(function="tao_escape_probes:probe", sandbox="none"), calls)
    assert unsafe == [1.0] * 6  # every escape works without the sandbox
    outside.unlink()
    planted.unlink()

    safe = run(VerifierScorer(function="tao_escape_probes:probe", timeout_s=10), calls)
    assert safe == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # only its own scratch folder is writable
    assert not outside.exists() and not planted.exists()
    # System files stay readable (read-only); home, the project and /etc/shadow do not exist.
    project = Path(__file__).resolve().parents[1]
    system = run(
        VerifierScorer(function="tao_escape_probes:probe"),
        [
            ("/etc/passwd|root", "read"),
            (f"{Path.home() / '.bashrc'}|", "read"),
            ("/etc/shadow|", "read"),
            (f"{project / 'pyproject.toml'}|", "read"),
        ],
    )
    assert system == [1.0, 0.0, 0.0, 0.0]


@needs_bwrap
def test_bwrap_kills_every_process_at_the_timeout(probes):
    marker = probes / "lingered.txt"
    scorer = VerifierScorer(function="tao_escape_probes:probe", timeout_s=1.0, sandbox="none")
    assert run(scorer, [(str(marker), "linger")]) == [0.0]
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists()  # unsandboxed, a detached child outlives the kill
    marker.unlink()

    scorer = VerifierScorer(function="tao_escape_probes:probe", timeout_s=1.0)
    assert run(scorer, [(str(marker), "linger")]) == [0.0]
    deadline = time.monotonic() + 10  # the kernel tears the PID namespace down asynchronously
    while _lingering() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _lingering() == []


def _lingering() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and "time.sleep(3)" in _cmdline(p)]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@needs_bwrap
def test_bwrap_limits_processes_memory_and_scratch(probes):
    scorer = VerifierScorer(
        function="tao_escape_probes:probe",
        max_processes=16,
        memory_mb=512,
        scratch_mb=8,
        timeout_s=20,
    )
    calls = [("", "forkbomb"), ("1024", "memory"), ("16", "memory"), ("32", "fill"), ("4", "fill")]
    assert run(scorer, calls) == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_missing_bwrap_is_a_clear_error_with_the_opt_out(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(
        SandboxUnavailableError, match="apt-get install -y bubblewrap.*sandbox: none"
    ):
        check_sandbox("bwrap")
    check_sandbox("none")
    with pytest.raises(ValueError, match="must be one of"):
        check_sandbox("docker")
