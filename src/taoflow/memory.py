"""Give freed memory back to the OS during a run, so one node's peak is not every later node's.

On Linux, glibc serves blocks under its *dynamic* mmap threshold from the heap, and that
threshold rises (up to 32 MB) each time a larger mmapped block is freed. After the first torch
tensors are freed, every activation, KV-cache and gradient tensor of a 135M model therefore
lives in the heap; freed, it stays resident (fragmented heap, nothing trimmed), so RSS only
ratchets up across training steps and nodes. Fixing the threshold (glibc's ``mallopt``, the same
as its ``MALLOC_MMAP_THRESHOLD_`` variable) maps every large block on its own and unmaps it when
freed; ``malloc_trim`` returns what the small-block heap left free between nodes. Neither touches
any value a node computes: allocation policy only, outputs stay bit-identical.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from typing import Any

from kedro.framework.hooks import hook_impl

from taoflow.config.memory import MemoryParams

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = MemoryParams().mmap_threshold  # glibc's own initial default, kept fixed
ENV_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"  # set by the user: glibc applied it; leave it alone


def _libc() -> Any | None:
    """glibc through ctypes, or None elsewhere (musl, macOS, Windows): then nothing is done."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``threshold`` bytes or more by mmap for the rest of the process.

    True when applied; False off glibc or when ``MALLOC_MMAP_THRESHOLD_`` is set (the user's).
    """
    libc = _libc()
    if libc is None or ENV_THRESHOLD in os.environ:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))


def release_freed_memory(collect: bool = True) -> bool:
    """Return the heap's free memory to the OS; ``collect`` first frees unreachable cycles.

    A full collection costs a few hundred milliseconds in a process holding torch and
    transformers, so the per-node hook skips it: what Kedro releases is freed by reference count.
    """
    if collect:
        gc.collect()
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class MemoryReleaseHook:
    """Fixed mmap threshold for the run; the heap's free memory returned before every node.

    Both follow the ``memory`` parameter block (``conf/base/parameters_memory.yml``).
    """

    def __init__(self) -> None:
        self._release = True

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        params = _memory_params()
        self._release = params.release
        if params.release and fix_mmap_threshold(params.mmap_threshold):
            logger.debug("glibc mmap threshold fixed at %d bytes", params.mmap_threshold)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        if self._release:
            release_freed_memory(collect=False)


def _memory_params() -> MemoryParams:
    """The run's validated ``memory`` block (its defaults where the project has none)."""
    from taoflow.config.graph import graph_parameters

    params = graph_parameters().get("memory")
    return params if isinstance(params, MemoryParams) else MemoryParams()
