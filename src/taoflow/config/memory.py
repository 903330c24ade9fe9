"""``memory``: how a run gives freed memory back to the OS (``taoflow.memory``).

Allocation policy only: outputs are bit-identical either way. The fixed threshold lowers the
training peak and keeps RSS flat between nodes, at the price of more system time in training
(each large tensor is mapped and unmapped on its own); ``docs/performance.md`` has both measured.
"""

from __future__ import annotations

from pydantic import Field

from taoflow.config.base import StrictModel


class MemoryParams(StrictModel):
    """Whether the run fixes glibc's mmap threshold and trims the heap before every node."""

    release: bool = Field(
        True, description="fix the mmap threshold for the run and trim the heap before each node"
    )
    mmap_threshold: int = Field(
        128 * 1024,
        ge=4096,
        le=32 * 1024 * 1024,
        description="bytes from which a block is mapped on its own (glibc's M_MMAP_THRESHOLD)",
    )
