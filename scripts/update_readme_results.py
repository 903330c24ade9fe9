r"""Copy a run's evaluation table and stage timings into README.md (between the results markers).

    python scripts/update_readme_results.py --run-dir .    # after `kedro run` in this project
    python scripts/update_readme_results.py --run-dir /tmp/run \
        --variant 'kto|/tmp/var_kto|`kedro run --env kto --from-nodes round_1.build_train_examples`'

A variant is a copy of the main run re-run from some node with other settings: its tuned models
(``round_k``) join the tables as ``round_k (label)``; models it did not retrain are the main run's.
``LABEL@round_2`` keeps only that model of the variant.

The numbers are the pipeline's own outputs (`data/08_reporting/eval_results.parquet`,
`eval_paired.parquet`, `stage_timings.md`); this script only lays them out.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["accuracy", "pass@1", "maj@8", "pass@8"]


def fmt(row: pd.Series | None) -> str:
    if row is None:
        return "–"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def results_table(results: pd.DataFrame, benchmark: str) -> str:
    bench = results[results["benchmark"] == benchmark]
    models = list(dict.fromkeys(bench["model"]))
    lines = [
        "| model | greedy accuracy | sampled pass@1 | maj@8 | pass@8 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model in models:
        cells = []
        for metric in METRICS:
            match = bench[(bench["model"] == model) & (bench["metric"] == metric)]
            cells.append(fmt(match.iloc[0] if len(match) else None))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    n = int(bench["n"].max())
    return "\n".join(lines) + f"\n\n{n} benchmark problems; 95% bootstrap CIs over problems.\n"


def label_free_table(results: pd.DataFrame, benchmark: str) -> str:
    """The label-free benchmark (holdout prompts): what TAO optimises, not what is true."""
    bench = results[results["benchmark"] == benchmark]
    if bench.empty:
        return ""
    lines = ["| model | mean label-free reward | win rate vs base |", "| --- | --- | --- |"]
    for model in dict.fromkeys(bench["model"]):
        cells = []
        for metric in ("mean_reward", "win_rate"):
            match = bench[(bench["model"] == model) & (bench["metric"] == metric)]
            cells.append(fmt(match.iloc[0] if len(match) else None))
        if cells != ["–", "–"]:
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    n = int(bench["n"].max())
    return (
        f"On the {n} `{benchmark}` prompts, scored by the same label-free scorers (the quantity "
        f"TAO optimises — compare with the labeled gain above; each run scores its models' samples "
        f"of a prompt as one pool, so a variant's row compares with its own run's base):\n\n"
        + "\n".join(lines)
        + "\n\n"
    )


def paired_table(paired: pd.DataFrame, benchmark: str) -> str:
    rows = paired[(paired["benchmark"] == benchmark) & paired["metric"].isin(METRICS[:3])]
    lines = [
        "| model vs base | metric | difference [95% CI] | wins / losses | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for _, r in rows.iterrows():
        verdict = (
            "better" if r["ci_low"] > 0 else "worse" if r["ci_high"] < 0 else "no clear difference"
        )
        wl = (
            f"{int(r['wins'])} / {int(r['losses'])}" if "wins" in r and pd.notna(r["wins"]) else "–"
        )
        lines.append(
            f"| {r['model']} | {r['metric']} | {r['diff']:+.3f} [{r['ci_low']:+.3f}, "
            f"{r['ci_high']:+.3f}] | {wl} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def train_audit_table(runs: list[tuple[str, Path]]) -> str:
    """Per run and round: what the trust gates let reach training, and how right it was."""
    lines = [
        "| run | round | gold-labelled prompts | prompts trained on | chosen examples right "
        "| rejected examples wrong |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, run_dir in runs:
        for path in sorted((run_dir / "data" / "08_reporting").glob("round_*/train_audit.parquet")):
            audit = pd.read_parquet(path)
            gold = pd.read_parquet(path.parent / "reward_audit.parquet")
            n_gold = len(gold)
            chosen = audit[audit["side"] == "chosen"]
            rejected = audit[audit["side"] == "rejected"]
            kept = chosen["prompt_id"].nunique()
            right = f"{chosen['correct'].mean():.0%} of {len(chosen)}" if len(chosen) else "–"
            wrong = (
                f"{(~rejected['correct'].astype(bool)).mean():.0%} of {len(rejected)}"
                if len(rejected)
                else "–"
            )
            lines.append(
                f"| {label} | {path.parent.name} | {n_gold} | {kept} ({kept / n_gold:.0%}) "
                f"| {right} | {wrong} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def audit_table(reporting: Path) -> str:
    """Per round: how right the label-free rewards were on the training prompts (reward_audit)."""
    lines = [
        "| round | prompts | majority vote gives a label | that label is right "
        "| top-reward candidate right | some candidate right |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(reporting.glob("round_*/reward_audit.parquet")):
        audit = pd.read_parquet(path)
        labelled = audit[audit["pseudo_label_correct"].notna()]
        right = labelled["pseudo_label_correct"].astype(bool).mean() if len(labelled) else 0.0
        lines.append(
            f"| {path.parent.name} | {len(audit)} | {len(labelled) / len(audit):.0%} | {right:.0%} "
            f"| {audit['top_reward_correct'].mean():.0%} | {(audit['n_correct'] > 0).mean():.0%} |"
        )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


TUNED_PREFIX = "round_"


def with_variants(
    main: pd.DataFrame, variants: list[tuple[str, Path, str]], name: str
) -> pd.DataFrame:
    """The main run's rows plus every variant's tuned-model rows, relabelled ``round_k (label)``."""
    frames = [main]
    for spec, run_dir, _ in variants:
        label, _, only = spec.partition("@")  # "label@round_2": that model only
        frame = pd.read_parquet(run_dir / "data" / "08_reporting" / name)
        models = frame["model"].astype(str)
        keep = models == only if only else models.str.startswith(TUNED_PREFIX)
        frame = frame[keep].copy()
        frame["model"] = frame["model"].astype(str) + f" ({label})"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def variant_notes(variants: list[tuple[str, Path, str]]) -> str:
    lines = []
    for spec, run_dir, command in variants:
        label = spec.partition("@")[0]
        stages = json.loads((run_dir / "data" / "08_reporting" / "stage_timings.json").read_text())
        timing = pd.DataFrame(stages["stages"])
        train = timing[timing["stage"] == "train"]
        took = f"; train stage {float(train['seconds'].iloc[0]):.0f} s" if len(train) else ""
        lines.append(f"* `({label})`: {command}{took}")
    return "\n".join(lines) + "\n\n" if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT)
    parser.add_argument("--benchmark", default="chain_sum")
    parser.add_argument("--label-free-benchmark", default="holdout")
    parser.add_argument("--command", default="kedro run", help="the command that produced the run")
    parser.add_argument(
        "--block", default="results", help="README markers <!-- BLOCK:start/end -->"
    )
    parser.add_argument("--config", default="default", help="configuration named in the block")
    parser.add_argument("--label", default="this run", help="the main run's label in audit tables")
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        help="OLD=NEW: show the main run's model OLD as NEW (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL|RUN_DIR|HOW (Markdown: the command and where it ran) of a variant (repeatable)",
    )
    args = parser.parse_args()
    variants = []
    for spec in args.variant:
        label, run_dir, command = spec.split("|", 2)
        variants.append((label, Path(run_dir), command))
    reporting = args.run_dir / "data" / "08_reporting"
    start, end = f"<!-- {args.block}:start -->", f"<!-- {args.block}:end -->"
    runs = [(args.label, args.run_dir)] + [(v[0].partition("@")[0], v[1]) for v in variants]
    renames = dict(item.split("=", 1) for item in args.rename)
    results = with_variants(
        pd.read_parquet(reporting / "eval_results.parquet").replace({"model": renames}),
        variants,
        "eval_results.parquet",
    )
    paired = with_variants(
        pd.read_parquet(reporting / "eval_paired.parquet").replace({"model": renames}),
        variants,
        "eval_paired.parquet",
    )
    timings = (reporting / "stage_timings.md").read_text().split("\n", 2)[-1].strip()
    block = (
        f"{start}\n"
        f"Produced by `{args.command}` on the {args.config} configuration (2-core CPU, no GPU), laid out "
        f"by `python scripts/update_readme_results.py`.\n\n"
        f"{results_table(results, args.benchmark)}\n"
        f"{variant_notes(variants)}"
        f"{label_free_table(results, args.label_free_benchmark)}"
        f"Paired with the base model on the same problems:\n\n"
        f"{paired_table(paired, args.benchmark)}\n"
        + (
            f"How right the label-free rewards were on the training prompts (`audit` stage: "
            f"checked against `usage_gold` after the fact, never used to train):\n\n{audit}\n"
            if (audit := audit_table(reporting))
            else ""
        )
        + (
            f"What training learned from, checked against `usage_gold` after the fact "
            f"(`train_audit`; for DPO the chosen and rejected sides of each pair):\n\n{trained}\n"
            if (trained := train_audit_table(runs))
            else ""
        )
        + f"Wall time and peak memory per stage of that run:\n\n{timings}\n"
        f"{end}"
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    if start not in text:
        raise SystemExit(f"README.md has no {start} … {end} markers")
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    readme.write_text(text)
    print(block)


if __name__ == "__main__":
    main()
