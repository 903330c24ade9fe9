"""How often are the judge stage's reference answers right? (``judge_references`` vs ``usage_gold``)

Run the stage first (heavy: take the shared lock), then read its output against the gold answers
of the usage prompts — never used to train, only to say whether the judge is worth its CPU::

    kedro run --pipeline ingest
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 flock /tmp/taoflow-heavy.lock \
        kedro run --pipeline judge --params judge.model=embedded-judge-0.5b
    python benchmarks/bench_judge_references.py --run-dir .

Prints the share of prompts whose reference answer matches the gold answer, overall and by the
number of terms in the question, and the stage's shard count and wall time from its shards.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from taoflow.core.answers import answers_match
from taoflow.core.gold import find_gold, gold_table
from taoflow.core.text import as_messages, last_user_message

_EXPRESSION = re.compile(r":\s*([^:]*?)\s*=\s*$")


def num_terms(question: str) -> int | None:
    """Operands in the question's expression ("…problem: 1 - 7 + 9 =" → 3); None if not one."""
    match = _EXPRESSION.search(question)
    return len(re.findall(r"\d+(?:\.\d+)?", match.group(1))) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("."))
    args = parser.parse_args()
    data = args.run_dir / "data"
    references = pd.read_parquet(data / "03_primary/judge_references.parquet")
    prompts = pd.read_parquet(data / "03_primary/prompts.parquet").set_index("prompt_id")
    gold = gold_table(pd.read_json(data / "01_raw/usage_gold.jsonl", lines=True))
    keys = sorted(gold.index, key=lambda k: (-len(k), k))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for prompt_id, answer in zip(references["prompt_id"], references["judge_answer"], strict=True):
        user = last_user_message(as_messages(prompts.loc[prompt_id, "messages"])) or ""
        _, gold_answer, _ = find_gold(user, gold, keys, "embedded")
        if gold_answer is None:
            counts["no gold"][1] += 1
            continue
        right = int(answers_match(None if pd.isna(answer) else str(answer), gold_answer))
        for group in ("all", f"{num_terms(user)}-term", prompts.loc[prompt_id, "split"]):
            counts[group][0] += right
            counts[group][1] += 1
    print(f"judge: {', '.join(sorted(set(references['judge'])))}; {len(references)} prompts")
    print(f"answered: {references['judge_answer'].notna().mean():.3f}")
    for group, (right, total) in sorted(counts.items()):
        share = f"{right / total:.3f}" if total and group != "no gold" else "-"
        print(f"{group:>10}: {right}/{total} match gold ({share})")


if __name__ == "__main__":
    main()
