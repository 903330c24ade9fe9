"""kedro-datasets' file datasets, saved atomically: a killed save leaves the old file intact.

kedro-datasets writes straight into the target path, so a run killed mid-save leaves a truncated,
unreadable file where the last good output was. These subclasses change only how their local
filesystem opens files for writing: into ``<path>.partial`` (``taoflow.core.files.atomic_path``),
renamed over the target once the write has completed. Remote stores (s3, gcs, ...) keep their own
semantics (an object appears whole on upload). The catalog names them like the originals:
``type: taoflow.datasets.atomic.ParquetDataset``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import JSONDataset as _PandasJSONDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets.pickle import PickleDataset as _PickleDataset
from kedro_datasets.text import TextDataset as _TextDataset

from taoflow.core.files import atomic_path

LOCAL_PROTOCOLS = ("file", "local")


@contextmanager
def atomic_open(fs: Any, path: str, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """``fs.open(path, mode)`` for writing into a temporary sibling, renamed on success."""
    with atomic_path(path) as tmp, fs.open(str(tmp), mode, **kwargs) as handle:
        yield handle


class AtomicFileSystem:
    """A local fsspec filesystem whose write-mode ``open`` is :func:`atomic_open`."""

    def __init__(self, fs: Any):
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if any(flag in mode for flag in "wxa"):
            if "a" in mode:  # an append cannot be made atomic by a rename
                return self._fs.open(path, mode, **kwargs)
            return atomic_open(self._fs, path, mode, **kwargs)
        return self._fs.open(path, mode, **kwargs)


class AtomicSaveMixin:
    """Wraps the dataset's local filesystem so every save goes through :func:`atomic_open`."""

    _fs: Any
    _protocol: str

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._protocol in LOCAL_PROTOCOLS:
            self._fs = AtomicFileSystem(self._fs)


class ParquetDataset(AtomicSaveMixin, _ParquetDataset):
    """``pandas.ParquetDataset``, saved atomically."""


class PandasJSONDataset(AtomicSaveMixin, _PandasJSONDataset):
    """``pandas.JSONDataset``, saved atomically."""


class JSONDataset(AtomicSaveMixin, _JSONDataset):
    """``json.JSONDataset``, saved atomically."""


class PickleDataset(AtomicSaveMixin, _PickleDataset):
    """``pickle.PickleDataset``, saved atomically."""


class TextDataset(AtomicSaveMixin, _TextDataset):
    """``text.TextDataset``, saved atomically."""


class MatplotlibDataset(AtomicSaveMixin, _MatplotlibDataset):
    """``matplotlib.MatplotlibDataset``, saved atomically."""


__all__ = [
    "AtomicFileSystem",
    "AtomicSaveMixin",
    "JSONDataset",
    "MatplotlibDataset",
    "PandasJSONDataset",
    "ParquetDataset",
    "PickleDataset",
    "TextDataset",
    "atomic_open",
]
