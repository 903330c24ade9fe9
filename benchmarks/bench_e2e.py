"""Wall time and peak memory per stage of a whole `kedro run`, in a throwaway copy of the project.

    python benchmarks/bench_e2e.py                 # the default (embedded model) run
    python benchmarks/bench_e2e.py --env smoke     # the tiny graph, seconds
    python benchmarks/bench_e2e.py --keep /tmp/run # keep the copy (data/, mlflow.db) afterwards

The table comes from taoflow's StageTimingHook (`data/08_reporting/stage_timings.md` of the run);
this script adds the end-to-end wall time of the command, start-up included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_copy(target: Path) -> None:
    """pyproject, conf (no local overrides), shipped raw data, and the converted embedded model."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", target)
    shutil.copytree(ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("local"))
    (target / "conf" / "local").mkdir(exist_ok=True)
    (target / "src").mkdir(exist_ok=True)
    shutil.copytree(ROOT / "data" / "01_raw", target / "data" / "01_raw")
    cached = ROOT / "data" / "06_models" / "smollm2-135m-instruct"
    if cached.is_dir():  # the GGUF conversion is a one-off cost, not part of a run
        shutil.copytree(cached, target / "data" / "06_models" / cached.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro environment (default: local over base)")
    parser.add_argument("--params", default=None, help="passed to kedro run --params")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="taoflow-e2e-"))
    make_copy(workdir)
    cmd = [sys.executable, "-m", "kedro", "run"]
    if args.env:
        cmd += ["--env", args.env]
    if args.params:
        cmd += ["--params", args.params]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own sqlite store
    started = time.perf_counter()
    log = workdir / "kedro_run.log"
    with log.open("w") as handle:
        done = subprocess.run(
            cmd, check=False, cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(f"kedro run failed (exit {done.returncode}); log: {log}", file=sys.stderr)
        return done.returncode
    print((workdir / "data" / "08_reporting" / "stage_timings.md").read_text())
    print(
        f"end-to-end wall time of `{' '.join(cmd[2:])}`: {wall:.0f} s (imports and start-up included)"
    )
    report = workdir / "data" / "08_reporting" / "eval_report.md"
    if report.is_file():
        print(f"evaluation report: {report}")
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
