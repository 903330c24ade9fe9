"""Checkpoints of a training run: their folder, the run-key file that says whose they are, resume.

A run resumes only from checkpoints of the same configuration and data (the run key); any other
checkpoints in the folder are stale and removed, never resumed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from taoflow.config.train import TrainParams
from taoflow.core.files import atomic_path

logger = logging.getLogger(__name__)

RUN_FILE = "taoflow_run.json"  # beside the checkpoints: which config + data they belong to


def checkpoint_dir(settings: TrainParams, round_: int) -> Path:
    """``<train.output_dir>/round_<k>``."""
    return Path(settings.output_dir) / f"round_{round_}"


def run_key(config_hash: str, data_hashes: dict[str, str]) -> dict[str, str]:
    """What the checkpoints of a run belong to: its configuration and its data."""
    return {"config_hash": config_hash, **{f"data.{k}": v for k, v in data_hashes.items()}}


def prepare_checkpoint_dir(directory: Path, run_key: dict[str, str], resume: bool) -> str | None:
    """Claim ``directory`` for this run; the last checkpoint to resume from, if it matches.

    Checkpoints of another configuration or dataset are stale: they are removed, never resumed.
    """
    from transformers.trainer_utils import get_last_checkpoint

    marker = directory / RUN_FILE
    last = None
    if directory.is_dir():
        stored = json.loads(marker.read_text()) if marker.is_file() else None
        if resume and stored == run_key:
            last = get_last_checkpoint(str(directory))
        else:
            if stored is not None or any(directory.iterdir()):
                logger.warning(
                    "Removing stale checkpoints in %s (config or data changed)", directory
                )
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(run_key, indent=2, sort_keys=True))
    return last


def cleanup_checkpoints(directory: Path, keep: bool) -> None:
    """After a successful run: drop the checkpoints (GBs for full fine-tuning) unless kept."""
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
