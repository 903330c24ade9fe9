"""best-of-N: a derived model that picks, per item, the top-reward one of another model's k samples.

No weights and no generation of its own: the choice is made by the score stage's label-free
scorers, so it measures the test-time compute that TAO distils into the weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.evaluate import EvaluateParams
from taoflow.config.shared import TaskParams
from taoflow.evaluation.benchmarks import MODEL_NAME, benchmark_items, source_table

BEST_OF_N_COLUMNS = [
    "model",
    "benchmark",
    "item_id",
    "prompt",
    "reference",
    "source_model",
    "sample",
    "completion",
    "n_tokens",
    "finish_reason",
    "reward",
    "answer",
    "n_samples",
    "n_top",
]


def best_of_n_source(params: EvaluateParams) -> str:
    """The model best-of-N picks from: ``best_of_n.from``, else the baseline."""
    return params.best_of_n.from_ or params.baseline


def best_of_n_settings(params: EvaluateParams, models: list[str]) -> dict[str, str] | None:
    """``evaluate.best_of_n`` checked against the evaluated models; None when disabled.

    best-of-N needs its ``from`` model to be evaluated, and a name no evaluated model has.
    """
    if not params.best_of_n.enabled:
        return None
    source = best_of_n_source(params)
    name = params.best_of_n.name
    if source not in models:
        raise ValueError(
            f"evaluate.best_of_n.from {source!r} is not an evaluated model: {list(models)}"
        )
    if not MODEL_NAME.match(name) or name in models:
        raise ValueError(
            f"evaluate.best_of_n.name {name!r} must be letters, digits or underscores and differ "
            f"from the evaluated models {list(models)}"
        )
    return {"from": source, "name": name}


def pick_best(scored: pd.DataFrame, tol: float = 1e-12) -> pd.DataFrame:
    """One row per (benchmark, item): the sample with the top ``reward``; ties → earliest sample.

    The tie rule makes the choice independent of row order and of the scorers' internal order.
    A missing reward ranks below every real one. Adds ``n_samples`` and ``n_top`` (samples tied
    at the top: how often the tie rule decided).
    """
    missing = [c for c in ("benchmark", "item_id", "sample", "reward") if c not in scored.columns]
    if missing:
        raise ValueError(f"best-of-N: scored samples lack column(s) {missing}")
    frame = scored.assign(
        _reward=pd.to_numeric(scored["reward"], errors="coerce").fillna(-np.inf)
    ).sort_values(["benchmark", "item_id", "sample"], kind="stable")
    groups = frame.groupby(["benchmark", "item_id"], sort=False)["_reward"]
    top = groups.transform("max")
    at_top = frame["_reward"] >= top - tol
    frame["n_samples"] = groups.transform("size")
    frame["n_top"] = at_top.groupby([frame["benchmark"], frame["item_id"]]).transform("sum")
    best = frame[at_top].drop_duplicates(["benchmark", "item_id"], keep="first")
    return best.drop(columns="_reward").reset_index(drop=True)


def select_best_of_n(
    outputs: pd.DataFrame,
    params: EvaluateParams,
    score: Any,
    task: TaskParams,
    sources: dict[str, Any],
) -> pd.DataFrame:
    """best-of-N on every labeled benchmark from the ``from`` model's k samples (no generation).

    Each item's k sampled completions are scored as one group by the score stage's scorers
    (``taoflow.scoring.score_candidates`` with ``params:score``, exactly as the ``score`` stage
    judges candidates) and the top-reward one becomes the prediction. The reference never
    reaches the scorers. Label-free benchmarks are left out: their metric is that same reward, so
    best-of-N would be graded by what chose it.
    """
    from taoflow.scoring import score_candidates

    source = best_of_n_source(params)
    outputs = outputs[(outputs["model"] == source) & (outputs["mode"] == "sampled")]
    frames = []
    for spec in params.enabled_benchmarks:
        if spec.kind != "labeled":
            continue
        rows = outputs[outputs["benchmark"] == spec.name].reset_index(drop=True)
        if rows.empty:
            raise ValueError(
                f"best-of-N: no sampled outputs of model {source!r} on benchmark {spec.name!r}"
            )
        items = benchmark_items(spec, source_table(sources, spec), task, params.limit)
        unknown = sorted(set(rows["item_id"]) - set(items["item_id"]))
        if unknown:
            raise ValueError(
                f"best-of-N: outputs of {source!r} name items {unknown[:5]} absent from "
                f"benchmark {spec.name!r}"
            )
        candidates = rows.drop(columns=["reference"]).assign(
            prompt_id=rows["item_id"],
            candidate_id=[f"{i}#{s}" for i, s in zip(rows["item_id"], rows["sample"], strict=True)],
            strategy="evaluate",
            round=0,
        )
        prompts = items.rename(columns={"item_id": "prompt_id"})[["prompt_id", "messages"]]
        scored, _ = score_candidates(candidates, prompts, score, task)
        best = pick_best(scored)
        first = rows.drop_duplicates("item_id").set_index("item_id")
        best["prompt"] = best["item_id"].map(first["prompt"])
        best["reference"] = best["item_id"].map(first["reference"])
        frames.append(best.assign(source_model=source, model=params.best_of_n.name))
    if not frames:
        return pd.DataFrame(columns=BEST_OF_N_COLUMNS)
    return pd.concat(frames, ignore_index=True)[BEST_OF_N_COLUMNS]
