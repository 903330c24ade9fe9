"""Regenerate the shipped default data in ``data/01_raw/`` (deterministic: same files every run).

    python scripts/make_default_data.py [--out data/01_raw]

Task: reasoning-gym ``chain_sum`` with 1-digit operands, 2 or 3 terms. The two-term space holds
only 200 problems, so it is split evenly between the sets (100 each, none shared); the three-term
space (~4,000) widens the benchmark to 300. Usage: 100 two-term + 100 three-term requests;
benchmark: 100 two-term + 200 three-term problems. Measured on SmolLM2-135M-Instruct (greedy, 60
problems each): two-term 0.43, three-term 0.08, two-term with 2-digit operands 0.03 — and how often
a majority vote of 8 samples is right (what label-free training learns from): two-term ~0.38,
three-term ~0.05. More three-term usage only adds wrong pseudo-labels (measured: a 25/75 mix lost
0.04 greedy accuracy after one RFT round; a 50/50 mix gained pass@1 +0.13), so usage is half and
half.

* ``usage.jsonl`` — unlabeled chat requests in mixed shapes (OpenAI ``messages``, plain
  ``prompt``, ``prompt`` + ``system``, a bare JSON string) plus deliberately messy rows that
  exercise every reject path of ``ingest``. No answers.
* ``usage_gold.jsonl`` — the answer to each usage question; read only by the ``sft_oracle``
  baseline and to report how often a majority vote is right, never by TAO training.
* ``benchmark.jsonl`` — labeled problems from another seed, none sharing a question with usage.
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from pathlib import Path

import reasoning_gym
import update_docs_counts  # scripts/, next to this file

TASK = "chain_sum"
TASK_CONFIG = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
# (shape config, usage problems, benchmark problems)
SHAPES = [
    ({"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, 100, 100),
    ({"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}, 100, 200),
]
USAGE_SEED = 1234
BENCHMARK_SEED = 999
SHUFFLE_SEED = 7
SYSTEM_VARIANTS = [
    "Answer with the final number only.",
    "You are a calculator. Reply with just the resulting number.",
    "Be concise.",
]


def unique_problems(
    seed: int, n: int, exclude: set[str] = frozenset(), config: dict | None = None
) -> list[dict]:
    """The first ``n`` distinct problems of a seeded stream, skipping questions in ``exclude``."""
    size = n * 4
    while True:
        seen, out = set(exclude), []
        for item in reasoning_gym.create_dataset(
            TASK, seed=seed, size=size, **(config or TASK_CONFIG)
        ):
            if item["question"] not in seen:
                seen.add(item["question"])
                out.append(item)
                if len(out) == n:
                    return out
        size *= 2


def clean_row(i: int, question: str, rng: random.Random) -> dict:
    """One well-formed request in one of the shapes real exports have."""
    shape = rng.random()
    row: dict = {"id": f"req-{i:04d}"}
    if shape < 0.55:
        row["messages"] = [{"role": "user", "content": question}]
    elif shape < 0.85:
        row["prompt"] = question
    elif shape < 0.95:
        row["messages"] = [
            {"role": "system", "content": rng.choice(SYSTEM_VARIANTS)},
            {"role": "user", "content": question},
        ]
    else:
        row["prompt"] = question
        row["system"] = rng.choice(SYSTEM_VARIANTS)
    return row


def messy_rows(questions: list[str], extra: list[dict]) -> list[tuple[str, str | None]]:
    """Deliberately bad or duplicate lines: (jsonl line, gold question it carries or None).

    ``extra`` are fresh problems (not among ``questions``) for the rows that stay usable.
    """
    q = questions
    dumps = lambda obj: json.dumps(obj, ensure_ascii=False)  # noqa: E731
    user = lambda text: {"messages": [{"role": "user", "content": text}]}  # noqa: E731
    cafe = f"Café question: {extra[3]['question']}"
    return [
        # exact duplicates of earlier rows
        (dumps(user(q[0])), None),
        (dumps(user(q[1])), None),
        (dumps({"prompt": q[2]}), None),
        # whitespace / Unicode variants of earlier rows (normalised-text duplicates)
        (dumps(user("  " + q[3].replace(" ", "   ") + "\n\n")), None),
        (dumps(user(q[4].replace(" ", "\u00a0"))), None),
        (dumps(user(q[5].translate(str.maketrans("0123456789", "０１２３４５６７８９")))), None),
        (dumps(user(q[6].replace("problem", "pro\u200bblem"))), None),
        (dumps(user(q[7].upper())), None),
        # the same new prompt in composed and decomposed Unicode: kept once
        (dumps(user(unicodedata.normalize("NFC", cafe))), extra[3]["question"]),
        (dumps(user(unicodedata.normalize("NFD", cafe))), None),
        # blank
        ("", None),
        (dumps({"prompt": "   \t "}), None),
        # overlong (far beyond max_prompt_tokens)
        (
            dumps(user(q[8].replace(" =", " + " + " + ".join(["7", "3", "5", "9"] * 150) + " ="))),
            None,
        ),
        # broken JSON, a non-object, a missing field, malformed messages, no user turn
        (dumps(user(q[9]))[:-7], None),
        ("State the final answer: 1 + 1 =", None),
        ("42", None),
        (dumps({"text": q[10]}), None),
        (dumps({"messages": [{"role": "tool", "content": q[11]}]}), None),
        (dumps({"messages": [{"role": "system", "content": "Be concise."}]}), None),
        # a trailing assistant turn (removed; the prompt is kept) and a multi-turn chat
        (
            dumps(
                {
                    "messages": [
                        {"role": "user", "content": extra[0]["question"]},
                        {"role": "assistant", "content": extra[0]["answer"]},
                    ]
                }
            ),
            extra[0]["question"],
        ),
        (
            dumps(
                {
                    "messages": [
                        {"role": "user", "content": q[12]},
                        {"role": "assistant", "content": "Sure."},
                        {"role": "user", "content": extra[1]["question"]},
                    ]
                }
            ),
            extra[1]["question"],
        ),
        # PII to redact (the prompt is kept, redacted)
        (
            dumps(
                user(
                    f"I'm jane.doe@example.com, call +1 555-123-4567 if unclear. "
                    f"{extra[2]['question']}"
                )
            ),
            extra[2]["question"],
        ),
        (
            dumps({"prompt": f"Card 4111 1111 1111 1111 was charged. {extra[4]['question']}"}),
            extra[4]["question"],
        ),
        # a bare JSON string is a valid plain prompt
        (dumps(extra[5]["question"]), extra[5]["question"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/01_raw"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    n_extra = 6
    usage, benchmark = [], []
    for config, n_usage, n_benchmark in SHAPES:
        part = unique_problems(USAGE_SEED, n_usage, config=config)
        usage += part
        benchmark += unique_problems(
            BENCHMARK_SEED,
            n_benchmark,
            exclude={p["question"] for p in part},
            config=config,
        )
    extra = unique_problems(
        USAGE_SEED + 1,
        n_extra,
        exclude={p["question"] for p in usage + benchmark},
        config=SHAPES[-1][0],
    )
    random.Random(SHUFFLE_SEED).shuffle(usage)
    random.Random(SHUFFLE_SEED + 1).shuffle(benchmark)
    usage_questions = [item["question"] for item in usage]

    rng = random.Random(SHUFFLE_SEED)
    lines = [
        (json.dumps(clean_row(i, q, rng), ensure_ascii=False), q)
        for i, q in enumerate(usage_questions)
    ]
    for line, gold in messy_rows(usage_questions, extra):
        lines.insert(rng.randrange(len(lines) // 4, len(lines) + 1), (line, gold))
    answers = {p["question"]: p["answer"] for p in usage + extra}
    gold = [{"question": g, "answer": answers[g]} for _, g in lines if g is not None]

    (args.out / "usage.jsonl").write_text("".join(line + "\n" for line, _ in lines))
    (args.out / "usage_gold.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in gold)
    )
    with (args.out / "benchmark.jsonl").open("w") as handle:
        for i, item in enumerate(benchmark):
            meta = {k: v for k, v in item["metadata"].items() if k != "difficulty"}
            meta.update(seed=BENCHMARK_SEED, **TASK_CONFIG)
            row = {
                "id": f"{TASK}-{BENCHMARK_SEED}-{i:04d}",
                "question": item["question"],
                "answer": item["answer"],
                "meta": meta,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    overlap = set(usage_questions) & {p["question"] for p in benchmark}
    assert not overlap, overlap
    if args.out.resolve() == update_docs_counts.ROOT / "data" / "01_raw":
        update_docs_counts.main([])  # the READMEs' counts follow the files
    print(
        f"usage.jsonl: {len(lines)} lines ({len(lines) - len(usage)} messy or extra); "
        f"usage_gold.jsonl: {len(gold)}; benchmark.jsonl: {len(benchmark)}; overlap: 0"
    )


if __name__ == "__main__":
    main()
