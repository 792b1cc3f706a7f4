"""Read a dataset version's samples back: sequentially by shard, or by position through the index.

Sequential: shards of a split are sorted by name and dealt round-robin over the global
reader index ``rank * num_workers + worker``: every shard goes to exactly one reader, so the
union over all readers is every sample exactly once (no duplicates, no gaps). Ingest checks,
the Ray Data index embedding and the evaluate stage's grids read this way.

Random access (training, validation, `components.inference.embed_split`): `ChipReader`
fetches one chip by a ranged read at the offset the sample index recorded
(`components.data.sample_index`), through the version's own `Store`, i.e. the same pyarrow
filesystem, endpoint and credentials as every other read (local files, s3://, gs://).
It keeps a bounded LRU of *decoded* chips (decoding dominates the cost of a small chip) and
a bounded number of open shard files, so a reader's memory is set by `cache_bytes`, never by
the dataset's size. Why not webdataset's indexed reader `wids`: it is a separate dependency
(not installed here) that opens remote shards by downloading them whole into a local cache
directory through its own URL handlers, outside the Store, so S3 endpoint settings and the
memory/disk bound would live in two places.

`IndexedSplit` is the torch Dataset over one split's index: a batched `__getitems__` reads a
whole batch of chips (sorted by shard and offset, which keeps ranged reads local) in a
DataLoader worker process, ahead of the step.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data as tud

from components import constants as C
from components.data.decode import chip_bytes, decode_chip
from components.data.sample_index import SampleIndex
from components.data.versions import DatasetVersion
from components.storage import Store


@dataclass
class Sample:
    key: str
    image: np.ndarray | bytes  # uint8, H×W (grayscale) or H×W×C; the encoded chip with decode=False
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
    import webdataset as wds  # here: the random-access path (training, inference) does not need it

    with version.store.open_input(shard_name) as stream:
        yield from wds.tariterators.group_by_keys(
            wds.tariterators.tar_file_expander([{"stream": stream, "url": shard_name}])
        )


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


class ChipReader:
    """Decoded chips by (shard, offset, size), with a bounded LRU cache (see the module doc).

    Open files and the cache belong to one process: after a fork (DataLoader workers) the
    child starts with neither, so no file handle is shared between processes.
    """

    def __init__(self, root_uri: str, cache_bytes: int = 0, max_open_files: int = 16):
        if cache_bytes < 0 or max_open_files < 1:
            raise ValueError(f"cache_bytes must be >= 0 and max_open_files >= 1, got {cache_bytes}, {max_open_files}")
        self.root_uri, self.cache_bytes, self.max_open_files = root_uri, int(cache_bytes), max_open_files
        self._pid: int | None = None

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._store = Store(self.root_uri)
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.hits = self.misses = 0

    def _file(self, shard: str):
        handle = self._files.get(shard)
        if handle is None:
            handle = self._store.fs.open_input_file(self._store.path(shard))
            self._files[shard] = handle
            if len(self._files) > self.max_open_files:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(shard)
        return handle

    def read_bytes(self, shard: str, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self._reset()
        data = self._file(shard).read_at(int(size), int(offset))
        if len(data) != size:
            raise ValueError(f"{shard}: {size} bytes expected at offset {offset}, got {len(data)}: the sample index "
                             "does not match the shard (rebuild it with write_sample_index)")
        return data

    def chip(self, shard: str, offset: int, size: int) -> np.ndarray:
        if self._pid != os.getpid():
            self._reset()
        key = (shard, int(offset))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        image = decode_chip(self.read_bytes(shard, offset, size))
        if image.nbytes <= self.cache_bytes:
            self._cache[key] = image
            self._cached_bytes += image.nbytes
            while self._cached_bytes > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return image

    def __getstate__(self) -> dict:
        return {"root_uri": self.root_uri, "cache_bytes": self.cache_bytes, "max_open_files": self.max_open_files}

    def __setstate__(self, state: dict) -> None:
        ChipReader.__init__(self, **state)


class IndexedSplit(tud.Dataset):
    """One split's chips by position in its `SampleIndex`; `__getitems__` returns a stacked
    uint8 batch [B, H, W] or [B, H, W, C] in the order asked for."""

    def __init__(self, root_uri: str, index: SampleIndex, cache_bytes: int = 0):
        super().__init__()
        self.index = index
        self.reader = ChipReader(root_uri, cache_bytes)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> np.ndarray:
        index = self.index
        return self.reader.chip(index.shards[index.shard_ids[position]], index.offsets[position], index.sizes[position])

    def read_batch(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(positions, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, 0, 0), np.uint8)
        # Read in (shard, offset) order so consecutive ranged reads stay near each other.
        order = np.lexsort((self.index.offsets[rows], self.index.shard_ids[rows]))
        chips: list[np.ndarray] = [np.empty(0)] * len(rows)
        for i in order:
            chips[i] = self[int(rows[i])]
        return np.stack(chips)

    def __getitems__(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.read_batch(positions)


def keep_batch(batch):
    """DataLoader `collate_fn` for datasets whose `__getitems__` already returns a batch."""
    return batch


def loader_worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: one torch thread per loader process (the training
    process owns the compute threads; N loaders × N threads would oversubscribe the cores)."""
    import torch

    torch.set_num_threads(1)
