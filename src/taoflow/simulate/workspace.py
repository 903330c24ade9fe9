"""Where a simulation runs: a copy of the project (config, raw data) with its own MLflow store.

Cycles accumulate state (traces, watermark, registry, reward model); running them in a folder of
their own keeps the project's ``data/`` and ``mlflow.db`` untouched and makes a rerun start clean.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from taoflow.models import resolve_model_path

MARKER = ".taoflow-simulate"


def prepare_workspace(project: Path, root: Path, model_ref: str, cache_dir: str) -> Path:
    """A fresh ``root``: pyproject, conf, data/01_raw copied; the base model's cache linked.

    The base model is materialised once in the project's own cache (the embedded GGUF converts
    in minutes) and linked into the workspace's, so every simulation reuses it.
    """
    project, root = project.resolve(), root.resolve()
    marker = root / MARKER
    if root == project or root in project.parents:
        raise ValueError(f"simulate.workspace: {root} holds the project itself")
    if root.is_dir() and any(root.iterdir()) and not marker.is_file():
        raise ValueError(
            f"simulate.workspace: {root} is not empty and was not made by the simulator; "
            "choose another simulate.workspace or --name"
        )
    shutil.rmtree(root, ignore_errors=True)  # only ever a folder this function made
    root.mkdir(parents=True)
    marker.write_text("made by taoflow.simulate; rebuilt at every simulation\n")
    shutil.copy(project / "pyproject.toml", root)
    shutil.copytree(project / "conf", root / "conf")
    (root / "src").mkdir()  # bootstrap only checks the folder; taoflow itself is installed
    shutil.copytree(project / "data" / "01_raw", root / "data" / "01_raw")
    cache = Path(cache_dir)
    if not cache.is_absolute():
        with chdir(project):
            built = Path(resolve_model_path(model_ref, cache_dir)).resolve()
        if (project / cache).resolve() in built.parents:
            link = root / cache / built.relative_to((project / cache).resolve())
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(built, target_is_directory=True)
    return root


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Work in ``path`` (relative catalog paths), then go back."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block, restoring the previous values after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
