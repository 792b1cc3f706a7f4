"""P×K batches (P classes × K images each) that stay correct under DDP.

An epoch cuts every class's shuffled images into chunks of K (the last chunk of a class is
topped up with repeats of that class), shuffles the chunks, and deals them into batches of P
chunks from P distinct classes. So one epoch visits every training image once (plus the
top-ups), large classes appear in proportionally more batches, and every batch has the P×K
structure pair and triplet losses need for positives.

Every rank builds the *same* sequence of global batches from the same seed and epoch and
takes its own contiguous slice: the ranks together see exactly the global P×K batch, and
no sample is on two ranks within a batch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

import numpy as np


class PKBatchSampler:
    def __init__(self, labels, classes_per_batch: int, images_per_class: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, batches_per_epoch: int | None = None):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("PKBatchSampler needs a non-empty 1-D array of labels")
        self.classes = np.unique(labels)
        if classes_per_batch < 1 or images_per_class < 1:
            raise ValueError(f"P and K must be >= 1, got P={classes_per_batch}, K={images_per_class}")
        if classes_per_batch > len(self.classes):
            raise ValueError(f"train.classes_per_batch={classes_per_batch} exceeds the {len(self.classes)} training classes")
        self.batch_size = classes_per_batch * images_per_class
        if self.batch_size % world_size:
            raise ValueError(f"the global batch P×K={self.batch_size} must divide evenly over {world_size} workers")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.p, self.k, self.rank, self.world_size, self.seed = classes_per_batch, images_per_class, rank, world_size, seed
        self.members = {int(c): np.flatnonzero(labels == c) for c in self.classes}
        chunks = sum(math.ceil(len(m) / self.k) for m in self.members.values())
        self.batches_per_epoch = batches_per_epoch or math.ceil(chunks / self.p)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _chunks(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        chunks = []
        for c, members in self.members.items():
            order = rng.permutation(members)
            for start in range(0, len(order), self.k):
                chunk = order[start:start + self.k]
                if len(chunk) < self.k:  # top up from the same class (with repeats only if it is tiny)
                    others = np.setdiff1d(members, chunk)
                    pool, replace = (others, False) if len(others) >= self.k - len(chunk) else (members, True)
                    chunk = np.concatenate([chunk, rng.choice(pool, self.k - len(chunk), replace=replace)])
                chunks.append((c, chunk))
        return [chunks[i] for i in rng.permutation(len(chunks))]

    def global_batches(self) -> Iterator[np.ndarray]:
        """The batches of this epoch as every rank sees them (class-grouped index arrays)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        pending: deque = deque()
        produced = 0
        while produced < self.batches_per_epoch:
            if len(pending) < 4 * self.p:  # refill: another pass of chunks (only when asked for more batches)
                pending.extend(self._chunks(rng))
            batch, classes, skipped = [], set(), []
            while len(batch) < self.p and pending:
                c, chunk = pending.popleft()
                (skipped if c in classes else batch).append((c, chunk))
                classes.add(c)
            pending.extendleft(reversed(skipped))
            yield np.concatenate([chunk for _, chunk in batch])
            produced += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        share = self.batch_size // self.world_size
        for batch in self.global_batches():
            yield batch[self.rank * share: (self.rank + 1) * share]
