"""Training input: exact P×K batches streamed from the shards, assembled ahead of the step.

The batch sampler (`PKBatchSampler`, or a continuous-label sampler with the same interface)
only needs the labels of the sample index; `BatchRequests` turns its index arrays into
requests `(epoch, step, positions)` (from the sampler's own start: one resume mechanism,
`components.training.epochs`), and a DataLoader hands each request to one of
`loader_workers` processes, where `TrainBatches.__getitems__` reads and decodes the chips
(`IndexedSplit`: ranged reads, bounded decoded-chip cache), converts them to NCHW and, on a
CPU run, augments and normalises the whole batch. The training process only moves a ready
tensor to its device. On a GPU run the loader stops at uint8 tensors (4× less to copy) and
`BatchAugment` runs on the GPU after the transfer (batched `grid_sample` suits it).

Randomness: a batch's augmentation draws from a generator seeded by (seed, rank, epoch,
step), never from the global RNG. So ranks augment differently, and a batch's pixels do not
depend on which loader process built it, on the number of loader processes, or on whether
training resumed from a checkpoint: a loader started at (epoch, step) yields exactly the
batches an uninterrupted run yields there. The sampler's batches are a function of (seed,
epoch) and the rank's slice of them. Whatever else draws from torch's global RNG during a
step (a loss's own draws, e.g. WARP's negatives) is reseeded by the loop before every step
from `step_seed(seed, epoch, step)`: the same on every rank, since every rank computes the
loss of the whole gathered batch. Together these are all the randomness of training, so a
checkpoint needs (epoch, step) and no RNG state.

Memory per training worker: the index's numeric columns (~24 bytes per sample), the
sampler's per-class position arrays, `prefetch_batches` batches per loader process and each
loader's decoded-chip cache (`cache_mb`); nothing grows with the pixels of the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data as tud

from components.data.reader import IndexedSplit, keep_batch, loader_worker_init
from components.data.sample_index import SampleIndex
from components.models.transforms import (
    ROTATION_ANY,
    ChipTransform,
    batch_to_tensor,
    build_eval_transform,
    build_train_transform,
)
from components.training.config import TrainConfig


def batch_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """A 63-bit seed for one batch of one rank (SeedSequence mixes the four numbers)."""
    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of torch's global RNG for one training step (rank-independent; its own stream,
    apart from every `batch_seed`)."""
    sequence = np.random.SeedSequence([seed, epoch, step], spawn_key=(1,))
    return int(sequence.generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class BatchRequest:
    epoch: int
    step: int
    positions: np.ndarray      # rows of the split's sample index


class BatchRequests:
    """A DataLoader `batch_sampler`: the sampler's batches of its current epoch as
    `BatchRequest`s, from the sampler's `start_batch` on (the sampler's plan skips the earlier
    ones without loading any data). Where an epoch starts is the sampler's state alone
    (`components.training.epochs`); `set_epoch` only passes it on."""

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler) - self.sampler.start_batch

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch, start = self.sampler.epoch, self.sampler.start_batch
        for step, positions in enumerate(self.sampler, start=start):
            yield BatchRequest(epoch, step, np.asarray(positions, dtype=np.int64))


class BatchAugment:
    """The training transform of one batch, with that batch's own generator (see module doc)."""

    def __init__(self, transform: ChipTransform, seed: int, rank: int):
        self.transform, self.seed, self.rank = transform, seed, rank

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        generator = torch.Generator(device=images.device)
        generator.manual_seed(batch_seed(self.seed, self.rank, epoch, step))
        return self.transform(images, generator=generator)


class TrainBatches(tud.Dataset):
    """Map-style dataset whose batched fetch builds a whole training batch in a loader process.

    Returns {"images": float [B, C, H, W] (augmented + normalised) or uint8 when
    `augment` is None (the step augments on its device), "positions": int64 [B],
    "epoch", "step"}."""

    def __init__(self, chips: IndexedSplit, augment: BatchAugment | None):
        super().__init__()
        self.chips, self.augment = chips, augment

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, position: int) -> np.ndarray:
        return self.chips[position]

    def __getitems__(self, request: BatchRequest) -> dict:
        images = self.chips.read_batch(request.positions)
        if self.augment is None:
            nchw = images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)
            tensor = torch.from_numpy(np.ascontiguousarray(nchw))
        else:
            tensor = self.augment(batch_to_tensor(images), request.epoch, request.step)
        return {"images": tensor, "positions": torch.from_numpy(request.positions),
                "epoch": request.epoch, "step": request.step}


def train_transform(config: TrainConfig) -> ChipTransform:
    """The augmentation of `config` (none when `augment` is off). A rotation left unresolved
    (None: the pipelines set the source's own before a run starts) gets the overhead chips'
    default, as the augmentation's own default does."""
    if not config.augment:
        return build_eval_transform()
    return build_train_transform(rotation=config.rotation or ROTATION_ANY)


def build_train_loader(root_uri: str, index: SampleIndex, sampler, config: TrainConfig, rank: int,
                       device: torch.device, augment_on_device: bool | None = None,
                       ) -> tuple[tud.DataLoader, BatchRequests, BatchAugment | None]:
    """(loader, its request sampler, the augmentation the step must apply on `device` or None).
    `augment_on_device` defaults to True on a GPU."""
    augment = BatchAugment(train_transform(config), config.seed, rank)
    on_device = device.type == "cuda" if augment_on_device is None else augment_on_device
    chips = IndexedSplit(root_uri, index, cache_bytes=int(config.cache_mb * 2**20))
    requests = BatchRequests(sampler)
    workers = config.loader_workers
    extra = ({"prefetch_factor": config.prefetch_batches, "persistent_workers": True,
              "worker_init_fn": loader_worker_init} if workers else {})
    loader = tud.DataLoader(TrainBatches(chips, None if on_device else augment), batch_sampler=requests,
                            num_workers=workers, collate_fn=keep_batch, pin_memory=device.type == "cuda", **extra)
    return loader, requests, augment if on_device else None
