"""Atomic file and folder writes: a reader never sees half an output, a killed run leaves none."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str) -> str:
    """Where an output is written before it is renamed into place (skipped by shard listings)."""
    return path + PARTIAL_SUFFIX


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling to write ``path`` into (a file or a folder), then swap it in.

    A leftover from a killed attempt is cleared first; on error the temporary is removed and
    ``path`` is left as it was. The final rename is atomic for files; a folder replaces the old
    one right after it is removed.
    """
    path = Path(path)
    tmp = Path(partial_path(str(path)))
    _remove(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.exists():
        _remove(path)
    tmp.replace(path)
