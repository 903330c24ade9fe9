"""Continuous improvement, measured: serve → simulated usage and feedback → kedro run, in cycles.

Each simulation runs ``simulate.cycles`` cycles (``conf/base/parameters_simulate.yml``) in a copy
of the project under ``<simulate.workspace>/<name>`` with its own MLflow store, and writes:

* ``<out>/report.md`` — per simulation, the table of cycles: served champion's greedy accuracy,
  paired 95% CIs vs the base model and vs the champion it replaced, the candidate's accuracy, the
  gate's decision, the feedback reward model's pair accuracy on held-out feedback, and the
  prompts / feedback events / feedback pairs each cycle used; then a comparison of simulations;
* ``<out>/accuracy.png`` — accuracy per cycle and the paired difference vs base, per simulation.

Run (the lead's real cycles take hours on the embedded default; the smoke variant takes a minute)::

    HF_HUB_OFFLINE=1 python benchmarks/simulate.py                      # make simulate
    HF_HUB_OFFLINE=1 python benchmarks/simulate.py --ablation           # + the same without the RM
    HF_HUB_OFFLINE=1 python benchmarks/simulate.py --noise 0 0.2 0.4    # a noise sweep
    HF_HUB_OFFLINE=1 python benchmarks/simulate.py --coverage 0.1 0.3 1 # a coverage sweep
    HF_HUB_OFFLINE=1 python benchmarks/simulate.py --env smoke --smoke --name smoke  # make simulate-smoke
    python benchmarks/simulate.py --ablation --report-only --with clean-full  # + a finished one
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", default=None, help="Kedro env of every cycle (default: base)")
    p.add_argument("--name", default="default", help="simulation name (workspace folder)")
    p.add_argument("--out", default="data/08_reporting/simulate", help="report folder")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="two short cycles on the tiny model (use with --env smoke; the test's settings)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--cycles", type=int)
    p.add_argument("--prompts-per-cycle", type=int)
    p.add_argument("--samples-per-prompt", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--comment-share", type=float)
    p.add_argument("--late-share", type=float)
    p.add_argument("--noise", type=float, nargs="+", help="one value, or several: a sweep")
    p.add_argument("--coverage", type=float, nargs="+", help="one value, or several: a sweep")
    p.add_argument("--no-feedback-rm", action="store_true", help="without the feedback RM only")
    p.add_argument("--ablation", action="store_true", help="also run without the feedback RM")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild report.md and the plot from the simulations' workspaces; run nothing",
    )
    p.add_argument(
        "--with",
        dest="finished",
        nargs="+",
        default=[],
        metavar="NAME",
        help="finished simulations (workspace names) added to the report after the others; "
        "read, never run",
    )
    p.add_argument(
        "--kedro-params", default=None, help='JSON merged into every kedro run, e.g. {"tao": {...}}'
    )
    return p.parse_args(argv)


def variants(args: argparse.Namespace, base: dict) -> list[tuple[str, dict]]:
    """(name, simulate block) per simulation the flags ask for."""
    fields = {
        "seed": args.seed,
        "cycles": args.cycles,
        "prompts_per_cycle": args.prompts_per_cycle,
        "samples_per_prompt": args.samples_per_prompt,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
    }
    if args.smoke:
        from taoflow.simulate import SMOKE

        base = {**base, **SMOKE}
    block = {**base, **{k: v for k, v in fields.items() if v is not None}}
    feedback = dict(block.get("feedback") or {})
    for key in ("comment_share", "late_share"):
        if getattr(args, key) is not None:
            feedback[key] = getattr(args, key)
    if args.kedro_params:
        block["kedro_params"] = json.loads(args.kedro_params)
    block["feedback"] = feedback
    if args.no_feedback_rm:
        block["feedback_reward_model"] = False
    out = []
    for noise in args.noise or [None]:
        for coverage in args.coverage or [None]:
            fb = dict(feedback)
            suffix = ""
            if noise is not None:
                fb["noise"] = noise
                suffix += f"-noise{noise:g}" if len(args.noise) > 1 else ""
            if coverage is not None:
                fb["coverage"] = coverage
                suffix += f"-coverage{coverage:g}" if len(args.coverage) > 1 else ""
            out.append((args.name + suffix, {**block, "feedback": fb}))
    if args.ablation:
        out += [(f"{n}-no-rm", {**b, "feedback_reward_model": False}) for n, b in out]
    return out


def main(argv: list[str] | None = None) -> int:
    from taoflow.config.base import validate_block
    from taoflow.serving.config import load_project_config
    from taoflow.simulate import Simulation, cycle_table, final_champion, load_results, summarise

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "openai", "openai._base_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse(argv)
    raw, _, _ = load_project_config(ROOT, args.env)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summaries, sections, timings, finals = {}, [], {}, {}
    base = dict(raw.get("simulate") or {})
    runs = [(name, block, args.report_only) for name, block in variants(args, base)]
    runs += [(name, base, True) for name in args.finished if name not in {n for n, *_ in runs}]
    for name, block, read_only in runs:
        params = validate_block("simulate", block)
        started = time.perf_counter()
        if read_only:
            try:
                results = load_results(ROOT / params.workspace / name, name)
            except ValueError as exc:
                raise SystemExit(f"simulate: {exc}") from None
            timings[name] = sum(r.counts.get("cycle_seconds", 0.0) for r in results)
        else:
            results = Simulation(ROOT, params, name=name, env=args.env).run()
            timings[name] = time.perf_counter() - started
        summary = summarise(results, seed=params.seed)
        summaries[name] = summary
        finals[name] = final_champion(results) if results else None
        summary.to_csv(out / f"{name}.csv", index=False)
        sections.append(cycle_table(summary, title=f"{name} ({timings[name]:.0f} s)"))
        print(sections[-1], flush=True)
        # after each simulation: a kill keeps the finished ones
        write_report(out, argv, sections, summaries, finals)
    print(f"report: {out / 'report.md'}\nplot: {out / 'accuracy.png'}")
    return 0


def write_report(
    out: Path, argv: list[str] | None, sections: list[str], summaries: dict, finals: dict
) -> None:
    """``report.md`` and ``accuracy.png`` for the simulations finished so far."""
    from taoflow.simulate import plot_cycles

    command = "python benchmarks/simulate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = ["## Continuous improvement", "", f"`{command.strip()}`", "", *sections]
    if len(summaries) > 1:
        report += [comparison(summaries, finals)]
    (out / "report.md").write_text("\n".join(report))
    plot_cycles(summaries).savefig(out / "accuracy.png", dpi=120)


def comparison(summaries: dict, finals: dict, seed: int = 0) -> str:
    """Last cycle's champion per simulation (ablation / sweeps side by side): vs base, and paired
    on the same items against the first simulation's last champion."""
    from taoflow.simulate import versus

    first = next(iter(summaries))
    lines = [
        "### Simulations compared (last cycle)",
        "",
        f"| simulation | champion acc. | vs base (95% CI) | vs {first}'s champion (95% CI) "
        "| feedback events | RM pair acc. |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summaries.items():
        last = s.iloc[-1]
        ci = f"{last['vs_base_diff']:+.3f} [{last['vs_base_ci_low']:+.3f}, {last['vs_base_ci_high']:+.3f}]"
        if name == first or finals.get(name) is None or finals.get(first) is None:
            paired = "—"
        else:
            got = versus(finals[name], finals[first], seed)
            paired = f"{got['diff']:+.3f} [{got['ci_low']:+.3f}, {got['ci_high']:+.3f}]"
        rm = last.get("rm_eval_accuracy")
        rm = "—" if rm is None or math.isnan(rm) else f"{rm:.3f}"
        events = int(s["feedback_events"].fillna(0).sum())
        lines.append(f"| {name} | {last['accuracy']:.3f} | {ci} | {paired} | {events} | {rm} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
