"""A seeded synthetic scored frame with every column the train gates read (no taoflow import).

Shared by the gate tests and by the script that pinned the pre-gates examples' hashes, so both
see the same frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# (algorithm, that algorithm's block): the selections whose pre-gates output the tests pin.
CASES: list[tuple[str, dict]] = [
    ("dpo", {}),
    ("dpo", {"min_margin": 0.3, "pairs_per_prompt": 2, "allow_truncated_chosen": True}),
    ("rft", {}),
    ("rft", {"top_k": 2, "dedupe": True, "skip_zero_signal": True, "min_reward": 0.1}),
    ("kto", {}),
    ("kto", {"max_per_prompt": 4, "skip_zero_signal": True, "allow_truncated": True}),
    ("grpo", {}),
]


def synthetic_prompts(n: int = 14) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i:02d}" for i in range(n)],
            "messages": [
                [{"role": "user", "content": f"What is {i} + {i % 5} - 2 ?"}] for i in range(n)
            ],
            "source": "test",
            "split": ["holdout" if i == n - 1 else "train" for i in range(n)],
            "meta": "{}",
        }
    )


def synthetic_scored(n_prompts: int = 14, n_candidates: int = 6, seed: int = 7) -> pd.DataFrame:
    """Rows in a shuffled order; ties, truncation, duplicates, NaN rewards, empty completions."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        pid = f"p{i:02d}"
        answers = rng.choice(["3", "4", "5", None], size=n_candidates, p=[0.5, 0.25, 0.15, 0.1])
        unanimous = i % 5 == 0
        judge_answer = "3" if i % 3 else "4"
        for j in range(n_candidates):
            answer = "3" if unanimous else answers[j]
            votes = [a for a in answers if a == answer]
            reward = 1.0 if unanimous else float(rng.choice([0.0, 0.1, 0.5, 1.0, 1.1]))
            if i == 4 and j == 2:
                reward = float("nan")
            completion = f"the answer is {answer}" if answer is not None else "no idea"
            if i == 6 and j == 1:
                completion = "  "
            if i == 7 and j in (2, 3):
                completion = "the answer is 3"
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-c{j}",
                    "round": 1,
                    "strategy": "direct",
                    "completion": completion,
                    "finish_reason": "length" if (i + j) % 7 == 0 else "stop",
                    "reward": reward,
                    "answer": answer,
                    "agreement": 1.0 if unanimous else len(votes) / n_candidates,
                    "score_judge": float(answer == judge_answer),
                    "judge_answer": judge_answer if i != 9 else None,
                    "judge_confidence": round(float(rng.uniform(0.3, 1.0)), 3),
                }
            )
    rows.append({**rows[0], "prompt_id": "unknown", "candidate_id": "unknown-c0"})
    frame = pd.DataFrame(rows)
    groups = frame.groupby("prompt_id")["reward"]
    frame["zero_signal"] = (groups.transform("max") - groups.transform("min")).fillna(0) <= 1e-9
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
