"""Render the project's pipeline in kedro-viz inside headless Chromium and check the graph.

Starts ``kedro viz run`` on 127.0.0.1 (a free port), loads it in Debian's headless Chromium,
checks that the expected node names are in the rendered page, and saves a screenshot.

    python scripts/viz_check.py --expect round_1 --expect build_prompts --screenshot docs/kedro-viz.png
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
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


def wait_for_server(log: Path, server: subprocess.Popen, timeout: float) -> str:
    """The URL kedro-viz reports once it serves (it picks its own port near the one asked for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"kedro viz exited with {server.returncode}:\n{log.read_text()[-2000:]}"
            )
        found = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            url = f"http://127.0.0.1:{found.group(1)}/"
            try:
                with urllib.request.urlopen(url + "api/main", timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(1)
    raise TimeoutError(
        f"kedro viz did not serve within {timeout:.0f} s:\n{log.read_text()[-2000:]}"
    )


def chromium(args: list[str], url: str, profile: str) -> str:
    cmd = [find_chromium() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout


def check(project: Path, expect: list[str], screenshot: Path | None, timeout: float = 180) -> str:
    """Returns the rendered DOM; raises AssertionError naming the node names that are missing."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "true"}
    log = Path(tempfile.mkstemp(suffix=".log", prefix="kedro-viz-")[1])
    cmd = [sys.executable, "-m", "kedro", "viz", "run", "--host", "127.0.0.1", "--no-browser"]
    with log.open("w") as out:
        server = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = wait_for_server(log, server, timeout)
        with tempfile.TemporaryDirectory() as profile:
            dom = chromium(["--dump-dom"], url, profile)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                chromium([f"--screenshot={screenshot.resolve()}"], url, profile)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.unlink(missing_ok=True)
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
