"""Write the shipped data's counts into the READMEs, counted from the files themselves.

    python scripts/update_docs_counts.py [--check]

Rewrites the block between ``<!-- data-counts:start -->`` and ``<!-- data-counts:end -->`` in
``data/01_raw/README.md`` (the table of files) and in ``README.md`` (the one-sentence summary)
from ``data/01_raw/*.jsonl``; ``scripts/make_default_data.py`` calls it after writing the files.
``--check`` changes nothing and exits 1 if a README disagrees with the files
(``tests/test_docs.py`` runs the same check).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- data-counts:start -->", "<!-- data-counts:end -->"
BLOCK = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.S)


def n_terms(question: str) -> int:
    """Operands of a chain_sum question ("...problem: 1 - 7 + 9 =" has 3)."""
    expression = question.rsplit(":", 1)[-1].split("=", maxsplit=1)[0]
    return len(re.findall(r"\d+", expression))


def _seeds() -> dict[str, int]:
    """The generator's seeds, read from its source (importing it needs reasoning-gym)."""
    tree = ast.parse((ROOT / "scripts" / "make_default_data.py").read_text())
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.endswith("_SEED")
    }


def count(raw: Path) -> dict[str, int]:
    """Lines and problem shapes of the shipped files."""
    usage = (raw / "usage.jsonl").read_text(encoding="utf-8").splitlines()
    gold = [json.loads(line) for line in (raw / "usage_gold.jsonl").read_text().splitlines()]
    bench = [json.loads(line) for line in (raw / "benchmark.jsonl").read_text().splitlines()]
    gold_terms = Counter(n_terms(row["question"]) for row in gold)
    bench_terms = Counter(int(row["meta"]["num_terms"]) for row in bench)
    return {
        "usage_lines": len(usage),
        "usage_problems": len(gold),
        "usage_2": gold_terms[2],
        "usage_3": gold_terms[3],
        "usage_dropped": len(usage) - len(gold),
        "gold": len(gold),
        "benchmark": len(bench),
        "benchmark_2": bench_terms[2],
        "benchmark_3": bench_terms[3],
        **_seeds(),
    }


def data_readme_block(c: dict[str, int]) -> str:
    """The table of ``data/01_raw/README.md``."""
    return f"""{START}
Counted from the files by `python scripts/update_docs_counts.py` (`tests/test_docs.py` checks it):

| file | rows | what | who reads it |
| --- | --- | --- | --- |
| `usage.jsonl` | {c["usage_lines"]} lines | unlabeled chat requests (seed {c["USAGE_SEED"]}): {c["usage_problems"]} distinct problems ({c["usage_2"]} two-term, {c["usage_3"]} three-term) as OpenAI `messages`, plain `prompt`, `prompt` + `system`, with their own system turn, or in the unusual but usable shapes below; plus {c["usage_dropped"]} lines that ingest rejects or deduplicates (below). **No answers.** | `ingest` (catalog `usage_files`) |
| `usage_gold.jsonl` | {c["gold"]} | `{{"question", "answer"}}` for every distinct usage problem (the chain_sum question text, also where a messy row embeds it) | only the `sft_oracle` baseline and reports of how often majority vote is right — never TAO training |
| `benchmark.jsonl` | {c["benchmark"]} | labeled problems `{{"id", "question", "answer", "meta"}}` from seed {c["BENCHMARK_SEED"]}, **no question shared with usage** (deduplicated across sets); {c["benchmark_3"]} have 3 terms, {c["benchmark_2"]} have 2 | `evaluate` |

With the default config, `kedro run --pipeline ingest` keeps {c["gold"]} prompts (one per line of
`usage_gold.jsonl`; `tests/test_ingest.py` checks it) and rejects or deduplicates the other
{c["usage_dropped"]} lines.
{END}"""


def main_readme_block(c: dict[str, int]) -> str:
    """The data sentence of the top-level ``README.md``."""
    return f"""{START}
`data/01_raw/usage.jsonl` holds {c["usage_lines"]} lines: {c["usage_problems"]} distinct problems (reasoning-gym
`chain_sum`, 1-digit operands; {c["usage_2"]} 2-term, {c["usage_3"]} 3-term) and {c["usage_dropped"]} messy lines that
ingest must reject or deduplicate; `data/01_raw/benchmark.jsonl` holds {c["benchmark"]} labeled
problems ({c["benchmark_2"]} 2-term, {c["benchmark_3"]} 3-term), counted by `scripts/update_docs_counts.py`.
{END}"""


def render(readme: Path, block: str) -> str:
    """``readme``'s text with its counts block replaced by ``block``."""
    text = readme.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        raise ValueError(f"{readme} has no {START} ... {END} block")
    return BLOCK.sub(lambda _: block, text, count=1)


def targets(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(README, its expected text) for every README that states the shipped data's counts."""
    c = count(root / "data" / "01_raw")
    return [
        (
            root / "data" / "01_raw" / "README.md",
            render(root / "data/01_raw/README.md", data_readme_block(c)),
        ),
        (root / "README.md", render(root / "README.md", main_readme_block(c))),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="project root")
    parser.add_argument("--check", action="store_true", help="only report stale READMEs")
    args = parser.parse_args(argv)
    stale = []
    for readme, expected in targets(args.root):
        if readme.read_text(encoding="utf-8") == expected:
            continue
        stale.append(readme)
        if not args.check:
            readme.write_text(expected, encoding="utf-8")
            print(f"updated {readme}")
    if args.check and stale:
        print("stale counts in " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
