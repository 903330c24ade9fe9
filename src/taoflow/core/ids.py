"""Stable identities: content hashes and derived seeds that are the same on every machine."""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import json
import random
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that is the same on every machine and Python run.

    ``hash()`` is salted per process, so ids and seeds derived from it would not reproduce.
    """
    payload = json.dumps(
        obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from (global seed, round, shard, ...) so work can be split freely."""
    return int(stable_hash(list(parts), 8), 16) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; CPU runs are then bit-reproducible.

    torch is seeded now if it is imported, else the moment it is (:class:`_SeedOnImport`): a
    run seeds before its first node without paying seconds of torch import for nodes that
    never use it, and torch's first draw comes from the same state either way.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    else:
        _SeedOnImport.arm(seed)


class _SeedOnImport(importlib.abc.MetaPathFinder):
    """Seeds torch right after its import (armed by :func:`seed_everything`; one at a time)."""

    seed: int | None = None

    @classmethod
    def arm(cls, seed: int) -> None:
        cls.seed = seed
        if not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls())

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch" or type(self).seed is None:
            return None
        sys.meta_path.remove(self)  # let the normal finders locate torch
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, hook = spec.loader, type(self)

        class _Seeding(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                # Disarmed only here, by the import that ran: a probe such as
                # importlib.util.find_spec("torch") (transformers' is_torch_available) also
                # reaches this finder, and must not use up the seed.
                seed, hook.seed = hook.seed, None
                if seed is not None:
                    module.manual_seed(seed)

            def __getattr__(self, attr: str) -> Any:  # get_source, is_package, ...
                return getattr(loader, attr)

        spec.loader = _Seeding()
        return spec


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame (columns in name order, rows as stored): its data identity."""
    ordered = frame[sorted(frame.columns)].reset_index(drop=True)
    payload = ordered.to_json(orient="split", index=False, default_handler=str, double_precision=15)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def source_hash(*modules: str) -> str:
    """Hash of the named modules' source files (a package: every ``.py`` under it).

    A code version for cache and shard keys that nobody has to remember to bump: any edit to
    the code that computes a result changes the keys of what it computed.
    """
    import importlib
    from pathlib import Path

    digest = hashlib.sha256()
    for name in modules:
        path = Path(importlib.import_module(name).__file__ or "")
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            digest.update(f"{name}:{file.relative_to(path.parent).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
