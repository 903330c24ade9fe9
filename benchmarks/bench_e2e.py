"""Wall time and peak memory per stage of a whole `kedro run`, first and unchanged rerun.

    python benchmarks/bench_e2e.py                 # the default (embedded model) run, twice
    python benchmarks/bench_e2e.py --env smoke     # the tiny graph
    python benchmarks/bench_e2e.py --no-rerun      # the first run only
    python benchmarks/bench_e2e.py --keep /tmp/run # keep the copy (data/, mlflow.db) afterwards

Per-stage numbers come from taoflow's StageTimingHook (`data/08_reporting/stage_timings.json` of
each run: wall time, peak RSS, start-up to the first node); this script adds each command's
end-to-end wall time (start-up included) and peak RSS, runs the same command again unchanged in
the same copy (`--rerun`, on by default: what work done once saves) and prints, per stage, both
runs and the speed-up. The table is written as `bench_e2e.md` in the run folder (and, when the
folder is a throwaway one, kept as `data/08_reporting/bench_e2e.md` of this checkout), each run's
timings as `stage_timings_first.json` / `stage_timings_rerun.json` beside it.
"""

from __future__ import annotations

import argparse
import json
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


def run_once(cmd: list[str], workdir: Path, env: dict[str, str], log: Path) -> dict:
    """One `kedro run`: its exit code, wall time, peak RSS and the StageTimingHook's numbers."""
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "returncode": child.returncode,
        "wall": time.perf_counter() - started,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # Linux: kilobytes
        "log": log,
    }
    timings = workdir / "data" / "08_reporting" / "stage_timings.json"
    if child.returncode == 0 and timings.is_file():
        data = json.loads(timings.read_text())
        result["stages"] = {s["stage"]: s for s in data["stages"]}
        result["startup"] = data.get("startup_seconds")
    return result


def _ratio(first: float | None, rerun: float | None) -> str:
    if first is None or rerun is None or rerun <= 0:
        return "-"
    return f"{first / rerun:.1f}x"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def comparison_table(first: dict, rerun: dict | None) -> str:
    """Markdown: per stage, wall time and peak RSS of both runs and the speed-up."""
    rerun = rerun or {}
    lines = [
        "| stage | first run (s) | rerun (s) | speed-up | first peak RSS (GB) | "
        "rerun peak RSS (GB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    stages = list(first.get("stages", {}))
    stages += [s for s in rerun.get("stages", {}) if s not in stages]
    for name in stages:
        a = first.get("stages", {}).get(name, {})
        b = rerun.get("stages", {}).get(name, {})
        lines.append(
            f"| {name} | {_num(a.get('seconds'))} | {_num(b.get('seconds'))} | "
            f"{_ratio(a.get('seconds'), b.get('seconds'))} | "
            f"{_num(a.get('peak_rss_gb'), '.2f')} | {_num(b.get('peak_rss_gb'), '.2f')} |"
        )
    lines.append(
        f"| start-up (to the first node) | {_num(first.get('startup'))} | "
        f"{_num(rerun.get('startup'))} | {_ratio(first.get('startup'), rerun.get('startup'))} "
        "| | |"
    )
    lines.append(
        f"| **end-to-end (start-up included)** | {_num(first['wall'])} | "
        f"{_num(rerun.get('wall'))} | {_ratio(first['wall'], rerun.get('wall'))} | "
        f"{_num(first['peak_rss_gb'], '.2f')} | {_num(rerun.get('peak_rss_gb'), '.2f')} |"
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="Kedro environment (default: local over base)")
    parser.add_argument("--params", default=None, help="passed to kedro run --params")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    parser.add_argument(
        "--rerun",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the same command again, unchanged, in the same copy (default: on)",
    )
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
    runs = []
    for label in ("first", "rerun") if args.rerun else ("first",):
        done = run_once(cmd, workdir, env, workdir / f"kedro_run_{label}.log")
        if done["returncode"] != 0:
            print(
                f"kedro run failed (exit {done['returncode']}); log: {done['log']}", file=sys.stderr
            )
            return done["returncode"]
        runs.append(done)
        # each run's own timings, kept: the rerun overwrites the project's (bench_floor.py reads it)
        shutil.copy(
            workdir / "data" / "08_reporting" / "stage_timings.json",
            workdir / f"stage_timings_{label}.json",
        )
    first, rerun = runs[0], (runs[1] if len(runs) > 1 else None)
    title = f"`{' '.join(cmd[2:])}`" + (", then the same command again unchanged" if rerun else "")
    report = f"# End-to-end: {title}\n\n" + comparison_table(first, rerun)
    print(report)
    (workdir / "bench_e2e.md").write_text(report)
    evaluation = workdir / "data" / "08_reporting" / "eval_report.md"
    if evaluation.is_file():
        print(f"evaluation report: {evaluation}")
    if args.keep is None:
        kept = ROOT / "data" / "08_reporting" / "bench_e2e.md"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(report)
        print(f"table: {kept}")
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"table: {workdir / 'bench_e2e.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
