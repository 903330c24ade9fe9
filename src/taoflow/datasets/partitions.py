"""``ResumablePartitionedDataset``: shard-by-shard saving that a killed run resumes.

A node returns ``{shard_id: callable}``; each callable computes one shard. Saving calls them in
order and writes each shard atomically as it finishes; a shard already on disk is not recomputed.
Shard ids must therefore name the work exactly (e.g. include a hash of the plan), so that a
changed configuration never reuses a stale shard. A ``_manifest.json`` lists the shards of the
latest save; loading returns only those, in order.
"""

from __future__ import annotations

import json
from copy import deepcopy
from typing import Any

from kedro_datasets.partitions import PartitionedDataset
from tqdm.auto import tqdm

from taoflow.core.files import PARTIAL_SUFFIX, partial_path
from taoflow.datasets.atomic import LOCAL_PROTOCOLS, atomic_open

MANIFEST = "_manifest.json"


class ResumablePartitionedDataset(PartitionedDataset):
    """A ``PartitionedDataset`` whose save skips shards that already exist."""

    def __init__(self, *args: Any, progress_desc: str | None = None, **kwargs: Any):
        kwargs.setdefault("filename_suffix", ".parquet")
        super().__init__(*args, **kwargs)
        self._progress_desc = progress_desc

    def _manifest_path(self) -> str:
        return f"{self._normalized_path.rstrip('/')}/{MANIFEST}"

    def save(self, data: dict[str, Any]) -> None:
        self._filesystem.makedirs(self._normalized_path, exist_ok=True)
        ids = sorted(data)
        done = 0
        bar = tqdm(ids, desc=self._progress_desc or "shards", unit="shard", disable=len(ids) < 2)
        for partition_id in bar:
            path = self._partition_to_path(partition_id)
            if self._filesystem.exists(path):
                done += 1
                bar.set_postfix(resumed=done)
                continue
            partition_data = data[partition_id]
            if callable(partition_data):
                partition_data = partition_data()
            tmp = partial_path(path)
            kwargs = deepcopy(self._dataset_config)
            kwargs[self._filepath_arg] = self._join_protocol(tmp)
            self._dataset_type(**kwargs).save(partition_data)
            self._filesystem.mv(tmp, path)
        manifest = self._manifest_path()
        local = self._protocol in LOCAL_PROTOCOLS
        with (
            atomic_open(self._filesystem, manifest, "w")
            if local
            else self._filesystem.open(manifest, "w") as handle
        ):
            json.dump({"partitions": ids}, handle)
        self._invalidate_caches()

    def load(self) -> dict[str, Any]:
        partitions = super().load()
        if self._filesystem.exists(self._manifest_path()):
            with self._filesystem.open(self._manifest_path()) as handle:
                wanted = json.load(handle)["partitions"]
            missing = [p for p in wanted if p not in partitions]
            if missing:
                raise FileNotFoundError(
                    f"{self._normalized_path}: shards {missing[:5]} listed but missing"
                )
            partitions = {p: partitions[p] for p in wanted}
        return dict(sorted(partitions.items()))

    def _list_partitions(self) -> list[str]:
        return [p for p in super()._list_partitions() if not p.endswith((PARTIAL_SUFFIX, MANIFEST))]
