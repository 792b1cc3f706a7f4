"""Dense triplet sampling for continuous labels (Kim, Cho, Kwak & Lee 2019, "Deep Metric
Learning Beyond Binary Supervision", Sec. 3.2), with the interface of `PKBatchSampler`.

The log-ratio loss learns from the ratios of label distances, and the ratios that matter most
(and that a random batch almost never contains) are between an anchor's *nearest* neighbours
in label space. So each global batch is built from anchors and their neighbours:

1. take the next `anchors_per_batch` anchors from this epoch's shuffled order of all samples;
2. add each anchor's `neighbours_per_anchor` nearest samples in label space (squared Euclidean
   distance of the label vectors, exact, against every sample; ties at the k-th distance, e.g.
   samples with identical attributes, are broken at random so every tied sample gets its turn);
3. fill the rest of the batch with random other samples (the large label distances).

Every sample is in a batch at most once (a neighbour shared by two anchors is added once; the
fill makes up the difference). The paper uses one anchor per mini-batch; here every sample of
the batch is an anchor of the all-triplets loss, so the default fills half the batch with
anchor groups and half with random samples. Distances are taken on the labels as given: scale
attributes with different units beforehand (the loss compares the same raw distances).

Like `PKBatchSampler`, every rank builds the *same* global batches from (seed, epoch) and takes
its own contiguous slice; a loss that needs the groups whole must see the gathered global
batch (as `TrainModule` gathers it under DDP). Batches depend only on (seed, epoch), so
``set_epoch(epoch, start_batch=b)``, ``state_dict`` and ``load_state_dict`` resume mid-epoch
exactly as `PKBatchSampler`'s do. An epoch's plan is built when first iterated; the
neighbours come from a KD-tree over the labels, so that costs well under a millisecond per
anchor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from components.training.epochs import ResumableEpochs


class LabelNeighbourBatchSampler(ResumableEpochs):
    """Batches of anchors, their nearest neighbours in label space, and random others.

    labels: [N, A] (or [N]) finite floats. batch_size: samples per global batch (divisible
    by world_size). neighbours_per_anchor: k nearest neighbours added with each anchor.
    anchors_per_batch: anchor groups per batch (default: as many as fill half the batch, at
    least one). batches_per_epoch: default ceil(N / batch_size).
    """

    def __init__(self, labels, batch_size: int, neighbours_per_anchor: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, anchors_per_batch: int | None = None,
                 batches_per_epoch: int | None = None):
        values = np.asarray(labels)
        if values.dtype == object or not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"LabelNeighbourBatchSampler needs numeric labels [N, A], got dtype {values.dtype}")
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise ValueError(f"LabelNeighbourBatchSampler needs a non-empty [N, A] array of labels, got shape {values.shape}")
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("labels contain NaN or infinite values: every sample needs finite attributes")
        num_samples = values.shape[0]
        for name, value in (("batch_size", batch_size), ("neighbours_per_anchor", neighbours_per_anchor),
                            ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if batch_size > num_samples:
            raise ValueError(f"batch_size={batch_size} exceeds the {num_samples} training samples")
        if batch_size % world_size:
            raise ValueError(f"the global batch of {batch_size} must divide evenly over {world_size} workers")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        group = neighbours_per_anchor + 1
        if group > batch_size:
            raise ValueError(f"neighbours_per_anchor={neighbours_per_anchor} plus the anchor does not fit "
                             f"a batch of {batch_size}: lower neighbours_per_anchor or raise the batch size")
        if anchors_per_batch is None:
            anchors_per_batch = max(1, batch_size // (2 * group))
        if (isinstance(anchors_per_batch, bool) or not isinstance(anchors_per_batch, (int, np.integer))
                or anchors_per_batch < 1 or anchors_per_batch * group > batch_size):
            raise ValueError(f"anchors_per_batch must be an int in [1, {batch_size // group}] (groups of "
                             f"{group} in a batch of {batch_size}), got {anchors_per_batch!r}")
        if batches_per_epoch is not None and (
                isinstance(batches_per_epoch, bool) or not isinstance(batches_per_epoch, (int, np.integer))
                or batches_per_epoch < 1):
            raise ValueError(f"batches_per_epoch must be a positive int or None, got {batches_per_epoch!r}")
        self.labels = values
        self.batch_size, self.k, self.anchors_per_batch = int(batch_size), int(neighbours_per_anchor), int(anchors_per_batch)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.share = self.batch_size // world_size
        self.batches_per_epoch = int(batches_per_epoch or math.ceil(num_samples / batch_size))
        self.epoch, self.start_batch, self.position = 0, 0, 0
        self._plan_cache: tuple[int, np.ndarray, list[dict[int, np.ndarray]]] | None = None
        self._tree: Any = None  # sklearn KDTree over the labels, built on first use

    # Epoch state (set_epoch, state_dict, load_state_dict, len): ResumableEpochs.

    # --- iteration ------------------------------------------------------------------------
    def anchored_batches(self) -> Iterator[tuple[np.ndarray, dict[int, np.ndarray]]]:
        """(global batch, {anchor: its neighbours}) for the batches of this epoch from
        ``start_batch`` on; ``position`` counts the batches handed out (for ``state_dict``)."""
        plan, groups = self.plan(self.epoch)
        for t in range(self.start_batch, len(plan)):
            self.position = t + 1
            yield plan[t].copy(), groups[t]

    def global_batches(self) -> Iterator[np.ndarray]:
        """The batches of this epoch as every rank sees them (anchor groups first, then the fill)."""
        for batch, _ in self.anchored_batches():
            yield batch

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.global_batches():
            yield batch[self.rank * self.share: (self.rank + 1) * self.share]

    def plan(self, epoch: int) -> tuple[np.ndarray, list[dict[int, np.ndarray]]]:
        """All global batches of ``epoch`` (int64 [batches_per_epoch, batch_size]) and their
        anchor groups: a function of (seed, epoch)."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, *self._build_plan(np.random.default_rng([self.seed, epoch])))
        return self._plan_cache[1], self._plan_cache[2]

    # --- how an epoch is built --------------------------------------------------------------
    def nearest_neighbours(self, anchor: int, rng: np.random.Generator) -> np.ndarray:
        """The k samples nearest to `anchor` in label space (never the anchor itself); ties at
        the k-th distance are broken with `rng`.

        A KD-tree (scikit-learn) finds the candidates: everything within the (k+1)-th nearest
        distance, anchor included, with a little slack so rounding in the tree cannot drop a
        tied sample. The choice among them uses exact squared distances computed here.
        """
        if self._tree is None:
            from sklearn.neighbors import KDTree  # scikit-learn is a dependency; imported when first needed

            self._tree = KDTree(self.labels)
        point = self.labels[anchor][None, :]
        nearest, _ = self._tree.query(point, k=min(self.k + 1, self.labels.shape[0]))
        radius = float(nearest[0, -1])
        candidates = self._tree.query_radius(point, r=radius * (1 + 1e-9) + 1e-12)[0]
        candidates = candidates[candidates != anchor]
        distance = ((self.labels[candidates] - self.labels[anchor]) ** 2).sum(axis=1)
        kth = np.partition(distance, self.k - 1)[self.k - 1]
        closer = candidates[distance < kth]
        tied = candidates[distance == kth]
        return np.concatenate([closer, rng.choice(tied, self.k - closer.size, replace=False)]).astype(np.int64)

    def _build_plan(self, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[int, np.ndarray]]]:
        num_samples = self.labels.shape[0]
        plan = np.empty((self.batches_per_epoch, self.batch_size), dtype=np.int64)
        all_groups = []
        order, position = rng.permutation(num_samples), 0
        for t in range(self.batches_per_epoch):
            in_batch = np.zeros(num_samples, dtype=bool)
            parts: list[np.ndarray] = []
            groups: dict[int, np.ndarray] = {}
            while len(groups) < self.anchors_per_batch:
                if position == num_samples:  # every sample was an anchor: a new pass
                    order, position = rng.permutation(num_samples), 0
                anchor = int(order[position])
                position += 1
                if in_batch[anchor]:
                    continue  # already in this batch as another anchor's neighbour: skipped this pass
                neighbours = self.nearest_neighbours(anchor, rng)
                groups[anchor] = neighbours
                members = np.concatenate([[anchor], neighbours])
                new = members[~in_batch[members]]
                in_batch[new] = True
                parts.append(new)
            taken = sum(part.size for part in parts)
            parts.append(rng.choice(np.flatnonzero(~in_batch), self.batch_size - taken, replace=False))
            plan[t] = np.concatenate(parts)
            all_groups.append(groups)
        return plan, all_groups
