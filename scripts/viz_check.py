"""Render the project's pipeline in kedro-viz inside headless Chromium and check the graph.

Starts ``kedro viz run`` on 127.0.0.1 (a free port), loads it in Debian's headless Chromium,
checks that the expected node names are in the rendered page, and saves a screenshot.

    python scripts/viz_check.py --expect round_1 --expect build_prompts --screenshot docs/kedro-viz.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
    "--window-size=1600,1000",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"kedro viz did not answer at {url} within {timeout:.0f} s")


def chromium(args: list[str], url: str, profile: str) -> str:
    cmd = [find_chromium() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout


def check(project: Path, expect: list[str], screenshot: Path | None, timeout: float = 180) -> str:
    """Returns the rendered DOM; raises AssertionError naming the node names that are missing."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "kedro", "viz", "run", "--host", "127.0.0.1", "--port", str(port)]
        + ["--no-browser"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(url + "api/main", timeout)
        with tempfile.TemporaryDirectory() as profile:
            dom = chromium(["--dump-dom"], url, profile)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                chromium([f"--screenshot={screenshot.resolve()}"], url, profile)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    missing = [name for name in expect if name not in dom]
    assert not missing, f"kedro-viz page lacks node names {missing}"
    return dom


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--expect", action="append", default=[])
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    if find_chromium() is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    check(args.project, args.expect, args.screenshot)
    print(f"kedro-viz rendered {len(args.expect)} expected names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
