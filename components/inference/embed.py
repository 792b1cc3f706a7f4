"""Images → feature taps: the one place a model embeds chips.

`embed_arrays` embeds uint8 chips held in memory (search queries, tests); `embed_split`
streams one split of a dataset version through the sample index (`IndexedSplit` batches,
decoded in DataLoader worker processes when `loader_workers` > 0), so no split is ever held
in memory beyond its features. Both turn NHW/NHWC chips into NCHW with
`components.models.transforms.batch_to_tensor` and normalise with the eval transform, so
training validation, evaluation, the Ray Data index embedding and search see identical inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from components import constants as C
from components.data.reader import IndexedSplit, keep_batch, loader_worker_init
from components.data.sample_index import load_sample_index
from components.data.versions import DatasetVersion
from components.models.transforms import batch_to_tensor, build_eval_transform

DEFAULT_TAPS = ("embedding",)


@dataclass
class EmbeddedSplit:
    keys: list[str]
    labels: list[str]                  # class names
    metas: list[dict[str, Any]]        # each sample's .json member
    shards: list[str]                  # the shard holding each sample (to fetch its pixels)
    features: dict[str, np.ndarray]    # tap -> float32 [N, D], rows in `keys` order
    label_indices: np.ndarray | None = None   # int64 [N], indexes into the split's classes

    @property
    def roles(self) -> np.ndarray:
        return np.array([m.get(C.ROLE, C.ROLE_BOTH) for m in self.metas])


def _device_of(model: torch.nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def embed_batches(model, batches: Iterable[np.ndarray], taps: Sequence[str] = DEFAULT_TAPS, device=None,
                  transform=None) -> dict[str, np.ndarray]:
    """Features of every chip of `batches` (uint8 NHW/NHWC arrays), concatenated per tap.

    The model runs in eval mode on `device` (default: where its parameters are) and is put
    back in the mode it was in."""
    device = _device_of(model, device)
    model.to(device)
    transform = transform or build_eval_transform()
    was_training = model.training
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {tap: [] for tap in taps}
    try:
        for images in batches:
            tensor = transform(batch_to_tensor(np.asarray(images)).to(device, non_blocking=True))
            for tap, value in model.extract(tensor, taps=tuple(taps)).items():
                outputs[tap].append(value.float().cpu().numpy())
    finally:
        model.train(was_training)
    return {tap: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for tap, parts in outputs.items()}


def embed_arrays(model, images: np.ndarray, taps: Sequence[str] = DEFAULT_TAPS, batch_size: int = 512,
                 device=None, transform=None) -> dict[str, np.ndarray]:
    """Features of in-memory chips, uint8 [N, H, W] or [N, H, W, C]: tap -> float32 [N, D]."""
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        raise ValueError(f"images must be a numpy array [N, H, W] or [N, H, W, C], got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return embed_batches(model, chunks, taps, device, transform)


def split_loader(version: DatasetVersion, index, batch_size: int, loader_workers: int = 0,
                 cache_bytes: int = 0, pin_memory: bool = False) -> tud.DataLoader:
    """Batches of a split's chips in index order, decoded in `loader_workers` processes."""
    dataset = IndexedSplit(version.store.uri, index, cache_bytes)
    batches = tud.BatchSampler(tud.SequentialSampler(range(len(index))), batch_size, drop_last=False)
    extra = {"prefetch_factor": 2, "worker_init_fn": loader_worker_init} if loader_workers else {}
    return tud.DataLoader(dataset, batch_sampler=batches, num_workers=loader_workers, collate_fn=keep_batch,
                          pin_memory=pin_memory, **extra)


def index_tap(source: dict) -> str:
    """The feature layer an index holds, from its source.json."""
    return source.get("tap") or C.INDEX_TAP_DEFAULT


def embed_query_chip(model, chip: np.ndarray, tap: str = C.INDEX_TAP_DEFAULT) -> np.ndarray:
    """(1, D) features of one query chip in layer `tap` (the index's, `index_tap`): what
    `chipmatch search` and the search service compare with the index."""
    return embed_arrays(model, chip[None], taps=(tap,))[tap]


def embed_split(model, version: DatasetVersion, split: str, taps: Sequence[str] = DEFAULT_TAPS,
                batch_size: int = 256, device=None, loader_workers: int = 0, cache_bytes: int = 0,
                with_metadata: bool = True) -> EmbeddedSplit:
    """Features of one split of a version, streamed through its sample index (rows in key order)."""
    index = load_sample_index(version, split, keys=with_metadata, metas=with_metadata)
    if len(index) == 0:
        raise ValueError(f"dataset version {version.version} has no {split!r} samples to embed")
    device = _device_of(model, device)
    loader = split_loader(version, index, batch_size, loader_workers, cache_bytes, pin_memory=device.type == "cuda")
    features = embed_batches(model, loader, taps, device)
    metas = index.metas or []
    return EmbeddedSplit(
        keys=index.keys or [],
        labels=[index.classes[i] for i in index.labels],
        metas=metas,
        shards=[index.shards[i] for i in index.shard_ids],
        features=features,
        label_indices=index.labels,
    )
