"""Render the project's pipeline in kedro-viz inside headless Chromium and check the graph.

Starts ``kedro viz run`` on 127.0.0.1 (a free port), loads it in Debian's headless Chromium,
checks that the expected node names are in the rendered page, and saves a screenshot.

Chromium reaches kedro-viz through a small local proxy that shows the page as a returning user
sees it: the first-visit feature tour is marked as seen (kedro-viz's own ``KedroViz``
localStorage setting ``showFeatureHints: false``, set before the app starts), and the version
check reports "up to date" (offline, kedro-viz 12 compares its version with the string "None" and
shows a "Kedro-Viz None is here!" banner).

    python scripts/viz_check.py --expect round_1 --expect build_prompts --screenshot docs/kedro-viz.png
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


# Runs in the page before kedro-viz's own script: kedro-viz reads its settings from these keys
# (the tour's on/off switch; the last run the user has seen, which otherwise dots the run icon).
SEEN_TOUR = (
    "<script>localStorage.setItem('KedroViz', JSON.stringify("
    "Object.assign(JSON.parse(localStorage.getItem('KedroViz') || '{}'),"
    " {showFeatureHints: false, featureHintStep: 0})));"
    "localStorage.setItem('KedroViz-workflow-last-run-end-time', '9999-12-31T00:00:00Z');</script>"
)


def returning_user(path: str, content_type: str, body: bytes) -> bytes:
    """The response a returning user's browser would act on: tour seen, version up to date."""
    if path.split("?", maxsplit=1)[0].rstrip("/").endswith("/api/version"):
        version = json.loads(body)
        version.update(is_outdated=False, latest=version.get("installed"))
        return json.dumps(version).encode()
    if content_type.startswith("text/html") and b"<head>" in body:
        return body.replace(b"<head>", b"<head>" + SEEN_TOUR.encode(), 1)
    return body


@contextmanager
def proxy(upstream: str) -> Iterator[str]:
    """A loopback HTTP proxy to ``upstream`` that passes responses through ``returning_user``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = upstream.rstrip("/") + self.path
            try:
                with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
                    status, headers, body = response.status, response.headers, response.read()
            except urllib.error.HTTPError as err:
                status, headers, body = err.code, err.headers, err.read()
            kind = headers.get("Content-Type", "")
            body = returning_user(self.path, kind, body)
            self.send_response(status)
            self.send_header("Content-Type", kind or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


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
        upstream = wait_for_server(log, server, timeout)
        with proxy(upstream) as url, tempfile.TemporaryDirectory() as profile:
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
