"""Noise and coverage sweep of the feedback signal, replayed on a simulation's served answers.

For every (noise, coverage) it replays the simulated users' draws on the answers a finished
simulation (``benchmarks/simulate.py``) really served, builds the ``reward_model`` stage's
feedback pairs from the thumbs, and counts how many prefer a right answer to a wrong one (the
checker knows). With ``--train`` it also trains the stage's reward model on the pairs of every
cycle but the last and scores it on the last cycle's true (right, wrong) pairs: a held-out day.

Writes ``<out>/feedback_quality.md`` and ``.csv``. Run after a simulation, alone::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/feedback_quality.py --name default --train
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", default="default", help="the simulation whose traffic is replayed")
    p.add_argument("--env", default=None, help="Kedro env the simulation ran with")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--coverage", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    p.add_argument("--train", action="store_true", help="also train and score a reward model")
    p.add_argument("--out", default="data/08_reporting/feedback_quality", help="report folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from taoflow.config.base import validate_block
    from taoflow.serving.config import load_project_config
    from taoflow.simulate import feedback_quality as fq

    args = parse(argv)
    raw, _, _ = load_project_config(ROOT, args.env)
    params = validate_block("simulate", raw.get("simulate") or {})
    system = validate_block("task", raw.get("task")).system_prompt
    rm_raw = dict(raw.get("reward_model") or {})
    rm_raw["pairs"] = {**(rm_raw.get("pairs") or {}), "from_scored": False}
    reward_model = validate_block("reward_model", rm_raw)
    cycles = sorted(
        (ROOT / params.workspace / args.name / "cycles").glob("cycle_*/traffic.parquet")
    )
    if not cycles:
        sys.exit(f"feedback_quality: no traffic under {params.workspace}/{args.name}/cycles")
    traffic = pd.concat([pd.read_parquet(f) for f in cycles], ignore_index=True)
    last = int(traffic["cycle"].max())
    grid = fq.sweep_grid(
        traffic, params, reward_model, system, noises=args.noise, coverages=args.coverage
    )
    if args.train:
        before, held = traffic[traffic["cycle"] < last], traffic[traffic["cycle"] == last]
        yardstick = fq.true_pairs(held, system)
        rows = []
        for noise, coverage in zip(grid["noise"], grid["coverage"], strict=True):
            replayed = fq.replay_feedback(before, fq.with_feedback(params, noise, coverage))
            pairs = fq.feedback_pairs(replayed, reward_model, system)
            started = time.perf_counter()
            got = fq.reward_model_accuracy(pairs, yardstick, reward_model, params.seed)
            rows.append(
                {"rm_pairs": len(pairs), **got, "rm_seconds": time.perf_counter() - started}
            )
            print(f"noise {noise:g} coverage {coverage:g}: {rows[-1]}", flush=True)
        grid = pd.concat([grid, pd.DataFrame(rows)], axis=1)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    grid.to_csv(out / "feedback_quality.csv", index=False)
    text = report(grid, args, argv, traffic, params)
    (out / "feedback_quality.md").write_text(text)
    print(text)
    return 0


def _fmt(value: float, digits: int = 3) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def report(grid, args, argv, traffic, params) -> str:
    """The sweep as a markdown table, with the command and what was replayed."""
    command = "python benchmarks/feedback_quality.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    served = len(traffic)
    right = float(traffic["correct"].mean())
    lines = [
        "## Feedback quality: noise and coverage, replayed",
        "",
        f"`{command.strip()}`",
        "",
        f"Replayed on simulation `{args.name}`: {served} served answers over "
        f"{traffic['cycle'].nunique()} cycles, {right:.1%} of them right (checker). "
        f"Simulated with noise {params.feedback.noise:g}, coverage {params.feedback.coverage:g}.",
        "",
    ]
    header = "| noise | coverage | thumbs | ups (right) | pairs | right | reversed | equal | right share |"
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    train = "rm_trained" in grid
    if train:
        header += " RM pairs | RM accuracy on the held-out day (95% CI) |"
        rule += " --- | --- |"
    lines += [header, rule]
    for row in grid.to_dict(orient="records"):
        line = (
            f"| {row['noise']:g} | {row['coverage']:g} | {row['feedback_events']} | "
            f"{row['up']} ({row['up_right']}) | {row['pairs']} | {row['right']} | "
            f"{row['reversed']} | {row['equal']} | {_fmt(row['right_share'], 2)} |"
        )
        if train:
            if row.get("rm_trained"):
                acc = (
                    f"{_fmt(row['rm_truth_accuracy'])} [{_fmt(row['rm_truth_ci_low'])}, "
                    f"{_fmt(row['rm_truth_ci_high'])}]"
                )
            else:
                acc = "not trained (too few pairs)"
            line += f" {row['rm_pairs']} | {acc} |"
        lines.append(line)
    lines += [
        "",
        "*thumbs*: feedback events; *ups (right)*: thumbs up, and how many of them on a right "
        "answer; *pairs*: the `reward_model` stage's feedback pairs; *right*: pairs whose chosen "
        "answer is right and rejected wrong; *reversed*: the opposite; *equal*: both right or both "
        "wrong (no signal about correctness); *right share*: right / pairs.",
    ]
    if train:
        lines.append(
            f"*RM*: the stage's reward model trained on the replayed pairs of cycles 1–"
            f"{int(traffic['cycle'].max()) - 1}, scored on every (right, wrong) answer pair of "
            f"cycle {int(traffic['cycle'].max())} (per-prompt accuracy, mean over prompts; 0.5 is "
            "chance)."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
