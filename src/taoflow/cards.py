"""Hugging Face model cards for saved policies, and pushing a policy folder to a hub.

Every policy folder (``PolicyDataset``) gets a ``README.md`` built with ``huggingface_hub``'s
``ModelCard``: its YAML metadata names the base model, the algorithm and the lineage taoflow
records in ``taoflow.json`` (round, parent, config hash, data hashes, seed, steps), so the folder
explains itself on a hub or on disk. The promote stage adds the gate's evaluation (metric, value,
paired CI, decision) to the card of the version it registers. The card holds no dates, so saving
the same policy twice writes the same file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, get_token

from taoflow.errors import UserError

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
LINEAGE_KEY = "taoflow"
TOKEN_ENV = "HF_TOKEN"
_TRAINING_ROWS = (
    ("algorithm", "algorithm"),
    ("round", "round"),
    ("parent", "started from"),
    ("reference", "reference model"),
    ("lora", "LoRA"),
    ("seed", "seed"),
    ("global_step", "optimizer steps"),
    ("config_hash", "training config hash"),
    ("resumed_from", "resumed from"),
)


def _plain(value: Any) -> Any:
    """A JSON/YAML-safe copy (paths, numpy numbers and the like become strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _eval_results(results: dict[str, Any] | None) -> list[EvalResult] | None:
    if not results or results.get("value") is None:
        return None
    benchmark, _, metric = str(results["metric"]).rpartition("/")
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=benchmark or "taoflow-benchmark",
            dataset_name=benchmark or "taoflow benchmark",
            metric_type=metric,
            metric_value=float(results["value"]),
        )
    ]


def _results_section(results: dict[str, Any] | None) -> str:
    if not results:
        return (
            "Not evaluated when this folder was saved. The version registered in MLflow by the "
            "promote stage carries the gate's evaluation in its card."
        )
    lines = [f"- **{results['metric']}**: {results.get('value')}"]
    if None not in (results.get("diff"), results.get("ci_low"), results.get("ci_high")):
        lines.append(
            f"- difference vs {results.get('compared_with')}: {results['diff']:+.4g} "
            f"(CI {results.get('ci_low'):.4g} to {results.get('ci_high'):.4g}, "
            f"n = {results.get('n')})"
        )
    if results.get("decision"):
        lines.append(f"- registry decision: `@{results['decision']}` — {results.get('reason', '')}")
    return "\n".join(lines)


def policy_card(lineage: dict[str, Any], results: dict[str, Any] | None = None) -> ModelCard:
    """The card of a policy with ``lineage`` (its ``taoflow.json``); ``results``: the gate's."""
    lineage = _plain(lineage)
    name = str(lineage.get("name") or "taoflow-policy")
    base = lineage.get("base_model")
    algorithm = lineage.get("algorithm")
    tags = ["taoflow", "tao", "label-free"] + ([str(algorithm)] if algorithm else [])
    data = ModelCardData(
        base_model=str(base) if base else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        model_name=name,
        tags=tags,
        eval_results=_eval_results(results),
        **{LINEAGE_KEY: lineage},
    )
    training = [
        f"| {label} | `{lineage[key]}` |"
        for key, label in _TRAINING_ROWS
        if lineage.get(key) is not None
    ]
    hashes = lineage.get("data_hashes") or {}
    data_rows = [f"| {k} | `{v}` |" for k, v in sorted(hashes.items())]
    body = [
        f"# {name}",
        "",
        f"Tuned from `{base}` by taoflow (label-free test-time adaptive optimisation: rewards "
        f"from agreement and scorers, no labels) with "
        f"`{algorithm or 'no training'}`.",
        "",
        "## Training",
        "",
        "| | |\n| --- | --- |\n" + "\n".join(training) if training else "No training recorded.",
        "",
        "## Data",
        "",
        "| dataset | content hash |\n| --- | --- |\n" + "\n".join(data_rows)
        if data_rows
        else "No training data hashes recorded.",
        "",
        "## Results",
        "",
        _results_section(results),
        "",
        "## Use",
        "",
        "```python\nfrom transformers import pipeline\n"
        'chat = pipeline("text-generation", model="<this folder or repo id>")\n'
        'chat([{"role": "user", "content": "What is 3 + 4?"}], max_new_tokens=64)\n```',
        "",
        "The full lineage is in `taoflow.json` and in this card's `taoflow` metadata.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def write_policy_card(
    folder: str | Path, lineage: dict[str, Any], results: dict[str, Any] | None = None
) -> Path:
    """Write ``README.md`` (the model card) into a policy folder; returns its path."""
    path = Path(folder) / CARD_FILE
    path.write_text(str(policy_card(lineage, results)), encoding="utf-8")
    return path


def _hub_token() -> str:
    token = os.environ.get(TOKEN_ENV) or get_token()
    if not token:
        raise UserError(
            f"no Hugging Face token: set {TOKEN_ENV} (a write token) or run `hf auth login`."
        )
    return token


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload a saved policy folder (weights, tokenizer, lineage, card) to ``repo_id``.

    The token comes from ``HF_TOKEN`` (or ``huggingface_hub``'s login) and is never logged. A
    folder saved before cards existed gets its card written from ``taoflow.json`` first.
    Returns the commit URL.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from taoflow.models import LINEAGE_FILE, read_lineage

    root = Path(folder)
    if not (root / "config.json").is_file():
        raise UserError(f"{root} is not a saved policy folder (no config.json).")
    if not (root / CARD_FILE).is_file():
        if not (root / LINEAGE_FILE).is_file():
            raise UserError(f"{root} has neither a {CARD_FILE} model card nor {LINEAGE_FILE}.")
        write_policy_card(root, read_lineage(root))
    api = HfApi(token=_hub_token())
    logger.info("Pushing %s to %s (%s)", root, repo_id, "private" if private else "public")
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(root),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or f"taoflow policy {root.name}",
        )
    except OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the hub.") from None
    except HfHubHTTPError as err:
        raise UserError(f"hub refused the push to {repo_id}: {str(err).splitlines()[0]}") from None
    return str(getattr(commit, "commit_url", commit))
