"""Read a dataset version's samples back, split across (node rank, loader worker) exactly.

Shards of a split are sorted by name and dealt round-robin over the global reader index
``rank * num_workers + worker``: every shard goes to exactly one reader, so the union over
all readers is every sample exactly once (no duplicates, no gaps). Training and indexing
both read through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch.distributed as dist
import torch.utils.data as tud
import webdataset as wds

from components import constants as C
from components.data.decode import chip_bytes, decode_chip
from components.data.versions import DatasetVersion


@dataclass
class Sample:
    key: str
    image: np.ndarray          # uint8, H×W (grayscale) or H×W×C
    label: str                 # class name
    label_index: int           # index of `label` in the split's class list
    meta: dict[str, Any]       # the sample's .json member (split, role, superclass, ...)


def assign_shards(shards: list[dict], rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1) -> list[dict]:
    """The shards one reader gets (see the module docstring)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker must be in [0, {num_workers}), got {worker}")
    ordered = sorted(shards, key=lambda shard: shard["name"])
    readers = world_size * num_workers
    return ordered[rank * num_workers + worker::readers]


def iter_shard(version: DatasetVersion, shard_name: str) -> Iterator[dict[str, Any]]:
    """Raw samples (`__key__`, `png`, `json` bytes) of one shard, through the version's store."""
    with version.store.open_input(shard_name) as stream:
        for sample in wds.tariterators.group_by_keys(
            wds.tariterators.tar_file_expander([{"stream": stream, "url": shard_name}])
        ):
            yield sample


def iter_samples(
    version: DatasetVersion, split: str, rank: int = 0, world_size: int = 1,
    worker: int = 0, num_workers: int = 1, decode: bool = True,
) -> Iterator[Sample]:
    """Decoded samples of `split` that belong to this reader."""
    class_index = {name: i for i, name in enumerate(version.classes(split))}
    for shard in assign_shards(version.shards(split), rank, world_size, worker, num_workers):
        for raw in iter_shard(version, shard["name"]):
            meta = json.loads(raw[C.WDS_META])
            image = decode_chip(chip_bytes(raw)) if decode else chip_bytes(raw)
            yield Sample(key=raw["__key__"], image=image, label=meta[C.LABEL],
                         label_index=class_index[meta[C.LABEL]], meta=meta)


@dataclass
class SplitArrays:
    """A whole split in memory: what training and evaluation on small chips use."""

    images: np.ndarray         # uint8 [N, H, W] or [N, H, W, C]
    labels: np.ndarray         # int64 [N], indexes into `classes`
    keys: list[str]
    classes: list[str]
    metas: list[dict[str, Any]]


def load_split(version: DatasetVersion, split: str, rank: int = 0, world_size: int = 1) -> SplitArrays:
    """Read a split (or this rank's share of it) into arrays, ordered by key."""
    samples = sorted(iter_samples(version, split, rank, world_size), key=lambda s: s.key)
    classes = version.classes(split)
    if not samples:
        shape = (0, version.manifest["image"]["size"] or 0, version.manifest["image"]["size"] or 0)
        return SplitArrays(np.zeros(shape, np.uint8), np.zeros(0, np.int64), [], classes, [])
    return SplitArrays(
        images=np.stack([s.image for s in samples]),
        labels=np.array([s.label_index for s in samples], dtype=np.int64),
        keys=[s.key for s in samples],
        classes=classes,
        metas=[s.meta for s in samples],
    )


class ShardedIterableDataset(tud.IterableDataset):
    """A torch IterableDataset over a split that deals itself out by DDP rank and loader worker."""

    def __init__(self, version: DatasetVersion, split: str, transform=None):
        super().__init__()
        self.version, self.split, self.transform = version, split, transform

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = tud.get_worker_info()
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for sample in iter_samples(self.version, self.split, rank, world, worker, workers):
            image = self.transform(sample.image) if self.transform else sample.image
            yield image, sample.label_index
