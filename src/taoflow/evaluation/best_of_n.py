"""best-of-N: a derived model that picks, per item, the top-reward one of another model's k samples.

No weights and no generation of its own: the choice is made by the score stage's label-free
scorers, so it measures the test-time compute that TAO distils into the weights. Variants
(``evaluate.best_of_n.variants``) make the same pick by their own scorers — majority vote alone,
the judge — and may attach an extra model's greedy answers as the judge's reference answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from taoflow.config.evaluate import BestOfNVariant, EvaluateParams
from taoflow.config.shared import TaskParams
from taoflow.core.answers import answers_match, extract_answer
from taoflow.evaluation.benchmarks import MODEL_NAME, benchmark_items, source_table
from taoflow.scoring.judge_model import REFERENCE_COLUMNS

SELECTED_PREFIX = "selected__"

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


def best_of_n_variants(params: EvaluateParams, models: list[str]) -> list[dict[str, str | None]]:
    """``evaluate.best_of_n.variants`` checked against the evaluated models (and each other).

    Each variant picks from an evaluated model's samples (its ``from``, else ``best_of_n.from``,
    else the baseline), has a name no evaluated or derived model has, and its ``references``
    name an evaluated model whose greedy answers become the judge's reference answers.
    """
    taken = list(models)
    if params.best_of_n.enabled:
        taken.append(params.best_of_n.name)
    out = []
    for variant in params.best_of_n.variants:
        source = variant.from_ or best_of_n_source(params)
        where = f"evaluate.best_of_n.variants[{variant.name}]"
        if source not in models:
            raise ValueError(f"{where}.from {source!r} is not an evaluated model: {models}")
        if variant.name in taken:
            raise ValueError(f"{where}.name must differ from the evaluated models {taken}")
        if variant.references is not None and variant.references not in models:
            raise ValueError(
                f"{where}.references {variant.references!r} is not an evaluated model: {models} "
                "(list it in evaluate.extra_models)"
            )
        taken.append(variant.name)
        out.append({"name": variant.name, "from": source, "references": variant.references})
    return out


def benchmark_references(
    outputs: pd.DataFrame, model: str, benchmark: str, task: TaskParams
) -> pd.DataFrame:
    """A model's answers to a benchmark's items, shaped like ``judge_references``.

    The answer is the greedy completion's; its confidence is the share of the model's sampled
    completions that agree with it, or 1.0 when the model was evaluated greedy-only (a single
    answer carries no estimate of its own).
    """
    rows = outputs[(outputs["model"] == model) & (outputs["benchmark"] == benchmark)]
    greedy = rows[rows["mode"] == "greedy"].drop_duplicates("item_id")
    if greedy.empty:
        raise ValueError(f"best-of-N references: no greedy outputs of {model!r} on {benchmark!r}")
    sampled = rows[rows["mode"] == "sampled"].groupby("item_id")["completion"].apply(list)
    out = []
    for item in greedy.itertuples(index=False):
        answer = extract_answer(item.completion, task.answer)
        samples = sampled.get(item.item_id, [])
        agree = [answers_match(extract_answer(c, task.answer), answer) for c in samples]
        confidence = float(np.mean(agree)) if samples and answer is not None else 1.0
        out.append(
            {
                "prompt_id": item.item_id,
                "judge": model,
                "mode": "greedy",
                "judge_answer": answer,
                "judge_confidence": confidence if answer is not None else 0.0,
                "n_samples": max(len(samples), 1),
                "completion": item.completion,
            }
        )
    return pd.DataFrame(out, columns=REFERENCE_COLUMNS)


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
    *,
    variant: BestOfNVariant | None = None,
) -> pd.DataFrame:
    """best-of-N on every labeled benchmark from the ``from`` model's k samples (no generation).

    Each item's k sampled completions are scored as one group by the score stage's scorers
    (``taoflow.scoring.score_candidates`` with ``params:score``, exactly as the ``score`` stage
    judges candidates) — or by ``variant``'s own scorers — and the top-reward one becomes the
    prediction. With ``variant.references``, that model's answers to the items reach the scorers
    as the judge stage's references do (the ``judge`` scorer's data). The gold reference never
    reaches the scorers. Label-free benchmarks are left out: their metric is
    that same reward, so best-of-N would be graded by what chose it.
    """
    from taoflow.scoring import score_candidates

    source = (variant.from_ if variant else None) or best_of_n_source(params)
    name = variant.name if variant else params.best_of_n.name
    config = variant.score_config(score) if variant else score
    samples = outputs[(outputs["model"] == source) & (outputs["mode"] == "sampled")]
    frames = []
    for spec in params.enabled_benchmarks:
        if spec.kind != "labeled":
            continue
        rows = samples[samples["benchmark"] == spec.name].reset_index(drop=True)
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
        refs = None
        if variant is not None and variant.references is not None:
            refs = benchmark_references(outputs, variant.references, spec.name, task)
        prompts = items.rename(columns={"item_id": "prompt_id"})[["prompt_id", "messages"]]
        scored, _ = score_candidates(candidates, prompts, config, task, references=refs)
        best = pick_best(scored)
        first = rows.drop_duplicates("item_id").set_index("item_id")
        best["prompt"] = best["item_id"].map(first["prompt"])
        best["reference"] = best["item_id"].map(first["reference"])
        frames.append(best.assign(source_model=source, model=name))
    if not frames:
        return pd.DataFrame(columns=BEST_OF_N_COLUMNS)
    return pd.concat(frames, ignore_index=True)[BEST_OF_N_COLUMNS]
