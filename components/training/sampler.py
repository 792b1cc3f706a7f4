"""P×K batches (P distinct classes × K images each) for any class distribution, exact under DDP.

Pair and triplet losses need positives *and* negatives in every batch, so every global batch
holds exactly P distinct classes with K images each, whatever the class sizes (real imagery is
skewed: cars outnumber buses 100:1).

Epoch length. One pass over the data: a class of n images needs ceil(n / K) chunks of K to show
every image (its last chunk topped up), so an epoch has ``B = ceil(Σ_c ceil(n_c / K) / P)``
batches (or ``batches_per_epoch``): N images plus fewer than K top-ups per class. (Counting
samples instead, ceil(N / (P·K)), would leave the top-ups of small classes no room: 93 % of a
Zipf-sized set with 50 singleton classes instead of all of it.)

Which classes, how often. The epoch has B·P class slots ("chunks" of K images). A class can fill
at most B of them (one per batch). Chunks are handed out greedily by how many *new* images they
show: first every class's full chunks of K unseen images (capped at B), then the classes'
last, partial chunks (largest remainder first, ties at random), then repeats, drawn with
replacement in proportion to class size among the classes that still have room. Each class walks
through a fresh random permutation of its images, so a class given ``a`` chunks shows
``min(n, a·K)`` distinct images; the greedy order makes the epoch's coverage the largest any P×K
schedule of B batches can reach. An epoch of the default length shows exactly

    Σ_c min(n_c, B·K)        distinct images,

i.e. every image, except in a class holding more than about 1/P of the data: a batch holds a
class once, so such a class shows a fresh random B·K of its images each epoch (``fit_pk`` says
which ``batches_per_epoch`` would show them all). A shorter ``batches_per_epoch`` still gets the
most distinct images its B·P slots can hold.

Which batch. Given each class's number of chunks, batches are drawn one after another: a class
that must appear in every remaining batch is taken, the rest are drawn without replacement with
weights equal to their remaining chunks (Efraimidis–Spirakis keys). This never runs out of
distinct classes and mixes which classes meet as negatives.

Small classes. A class with fewer than K images fills its K slots with all of its images, repeated
(no repeats otherwise). Every rank builds the *same* sequence of global batches from (seed,
epoch) and takes its own contiguous slice of batch_size / world_size indices. A chunk that spans
two ranks' slices would put a repeated image on both, so small classes are placed in chunk
positions that lie inside one rank's slice first, and a small class that must span ranks gives
each rank its own images. Only when a batch holds more small classes than there are positions
inside one rank's slice (there are none when K does not divide batch_size / world_size), and such
a class has fewer images than the ranks its K slots span (a singleton spans two), is an image
unavoidably on two ranks; it then repeats in contiguous runs, so as few ranks as possible share it.
With world_size dividing P every chunk lies inside one rank's slice and this never happens.

Resume. Batches depend only on (seed, epoch); ``set_epoch(epoch, start_batch=b)`` (or
``load_state_dict``) skips the first b batches without loading any data, so a run resumed
mid-epoch sees exactly the batches it would have seen. ``state_dict(batches_done=...)`` is
what a checkpoint keeps (`components.training.epochs`, shared with the label sampler).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from components.training.epochs import ResumableEpochs


class PKFit(NamedTuple):
    """A P×K setting that fits the data; ``message`` says what was adapted or is worth knowing
    (None: nothing). ``coverage``: the fraction of distinct training images an epoch of
    ``batches_per_epoch`` batches shows."""

    classes_per_batch: int
    images_per_class: int
    batches_per_epoch: int
    coverage: float
    message: str | None


def _class_counts(labels_or_class_counts) -> np.ndarray:
    if isinstance(labels_or_class_counts, Mapping):
        counts = np.asarray([int(v) for v in labels_or_class_counts.values()], dtype=np.int64)
        return counts[counts > 0]
    labels = np.asarray(labels_or_class_counts)
    if labels.ndim != 1:
        raise ValueError(f"fit_pk needs a 1-D array of labels or a mapping class -> count, got shape {labels.shape}")
    return np.unique(labels, return_counts=True)[1]


def _check_settings(classes_per_batch: int, images_per_class: int, world_size: int) -> None:
    if classes_per_batch < 1:
        raise ValueError(f"train.classes_per_batch must be >= 1, got {classes_per_batch}")
    if images_per_class < 1:
        raise ValueError(f"train.images_per_class must be >= 1, got {images_per_class}")
    if world_size < 1:
        raise ValueError(f"train.num_workers must be >= 1, got {world_size}")


def _divisibility_error(classes_per_batch: int, images_per_class: int, world_size: int) -> ValueError:
    step = world_size // math.gcd(images_per_class, world_size)
    return ValueError(
        f"the global batch P×K = train.classes_per_batch×train.images_per_class = {classes_per_batch}×{images_per_class}"
        f" = {classes_per_batch * images_per_class} must divide evenly over train.num_workers={world_size}: set"
        f" train.classes_per_batch to a multiple of {step}, or train.images_per_class to a multiple of {world_size},"
        f" or train.num_workers to a divisor of {classes_per_batch * images_per_class}")


def default_batches_per_epoch(counts, classes_per_batch: int, images_per_class: int) -> int:
    """One pass: ceil(Σ_c ceil(n_c / K) / P) batches, room for every image of every class."""
    chunks = -(-np.asarray(counts, dtype=np.int64) // images_per_class)
    return max(1, math.ceil(int(chunks.sum()) / classes_per_batch))


def epoch_coverage(counts: np.ndarray, classes_per_batch: int, images_per_class: int, batches_per_epoch: int) -> float:
    """Fraction of distinct images one epoch shows: sum_c min(n_c, a_c·K) / N for the greedy quotas.

    The value does not depend on the seed: the greedy only breaks ties between chunks that
    show equally many new images.
    """
    counts = np.asarray(counts, dtype=np.int64)
    k, b = images_per_class, batches_per_epoch
    total = b * classes_per_batch
    full = np.minimum(counts // k, b)
    if full.sum() >= total:
        return total * k / counts.sum()
    remainder = np.where(counts // k < b, counts % k, 0)
    shown = k * full.sum() + np.sort(remainder)[::-1][:total - full.sum()].sum()
    return float(shown / counts.sum())


def fit_pk(labels_or_class_counts, classes_per_batch: int, images_per_class: int, world_size: int = 1, *,
           batches_per_epoch: int | None = None) -> PKFit:
    """Check a P×K config against the training data on the driver, before any worker starts.

    ``labels_or_class_counts``: the training labels (1-D) or a mapping class -> image count.
    P larger than the number of training classes is adapted to the largest P that fits (and
    still divides over the workers), with a message saying so; anything else that cannot work
    raises ValueError naming the key and the fix. When skewed classes leave an epoch showing
    less than half of the images, the message says which train.batches_per_epoch shows them all.
    """
    _check_settings(classes_per_batch, images_per_class, world_size)
    counts = _class_counts(labels_or_class_counts)
    if len(counts) == 0:
        raise ValueError("the training split has no labelled images: check data.* and the ingest rejections")
    p, k, message = classes_per_batch, images_per_class, None
    if p > len(counts):
        fitting = [q for q in range(len(counts), 0, -1) if (q * k) % world_size == 0]
        if not fitting:
            raise ValueError(
                f"train.classes_per_batch={p} exceeds the {len(counts)} training classes, and no smaller P makes"
                f" P×train.images_per_class={k} divide over train.num_workers={world_size}: set"
                f" train.images_per_class to a multiple of {world_size} or lower train.num_workers")
        p = fitting[0]
        message = (f"train.classes_per_batch={classes_per_batch} exceeds the {len(counts)} training classes: using"
                   f" train.classes_per_batch={p} (set it to at most {len(counts)} to silence this)")
    if (p * k) % world_size:
        raise _divisibility_error(p, k, world_size)
    if batches_per_epoch is not None and batches_per_epoch < 1:
        raise ValueError(f"train.batches_per_epoch must be >= 1 (or unset), got {batches_per_epoch}")
    batches = batches_per_epoch or default_batches_per_epoch(counts, p, k)
    coverage = epoch_coverage(counts, p, k, batches)
    if coverage < 0.5:
        chunks = -(-counts // k)   # a class needs ceil(n/K) chunks, at most one per batch
        enough = max(int(chunks.max()), math.ceil(chunks.sum() / p))
        note = (f"an epoch of {batches} batches shows {coverage:.0%} of the {int(counts.sum())} training images"
                f" (the largest class has {int(counts.max())} and a batch holds a class once): set"
                f" train.batches_per_epoch={enough} to show every image each epoch")
        message = f"{message}; {note}" if message else note
    return PKFit(p, k, batches, coverage, message)


class PKBatchSampler(ResumableEpochs):
    """Batches of P distinct classes × K images; iteration yields this rank's index array per batch."""

    def __init__(self, labels, classes_per_batch: int, images_per_class: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, batches_per_epoch: int | None = None):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("PKBatchSampler needs a non-empty 1-D array of labels")
        _check_settings(classes_per_batch, images_per_class, world_size)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if classes_per_batch > len(self.classes):
            raise ValueError(f"train.classes_per_batch={classes_per_batch} exceeds the {len(self.classes)} training"
                             f" classes: lower it (components.training.sampler.fit_pk adapts it on the driver)")
        self.batch_size = classes_per_batch * images_per_class
        if self.batch_size % world_size:
            raise _divisibility_error(classes_per_batch, images_per_class, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"train.batches_per_epoch must be >= 1 (or unset), got {batches_per_epoch}")
        self.p, self.k, self.rank, self.world_size, self.seed = classes_per_batch, images_per_class, rank, world_size, seed
        order = np.argsort(inverse, kind="stable")
        self.sizes = np.bincount(inverse)
        self.members = np.split(order, np.cumsum(self.sizes)[:-1])   # per class (index into self.classes)
        self.batches_per_epoch = batches_per_epoch or default_batches_per_epoch(self.sizes, self.p, self.k)
        self.share = self.batch_size // world_size
        self.segments = self._segments()
        self.epoch, self.start_batch, self.position = 0, 0, 0
        self._plan_cache: tuple[int, np.ndarray] | None = None

    # Epoch state (set_epoch, state_dict, load_state_dict, len): ResumableEpochs.

    # --- iteration -------------------------------------------------------------------------
    def global_batches(self) -> Iterator[np.ndarray]:
        """The batches of this epoch as every rank sees them, from ``start_batch`` on.

        Each is an index array of P·K: P class chunks of K, every rank's slice contiguous.
        Every iteration starts at ``start_batch``; while it runs, ``position`` counts the
        batches handed out, so ``state_dict()`` taken after a training step resumes right after it.
        """
        plan = self.plan(self.epoch)
        for t in range(self.start_batch, len(plan)):
            self.position = t + 1
            yield plan[t].copy()

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.global_batches():
            yield batch[self.rank * self.share: (self.rank + 1) * self.share]

    def plan(self, epoch: int) -> np.ndarray:
        """All global batches of ``epoch``: an int64 array (batches_per_epoch, P·K), a function of (seed, epoch)."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, self._build_plan(np.random.default_rng([self.seed, epoch])))
        return self._plan_cache[1]

    # --- how an epoch is built -------------------------------------------------------------
    def _segments(self) -> list[list[int]]:
        """For each chunk position in a batch, the sizes of its parts on successive ranks."""
        segments = []
        for position in range(self.p):
            start, end = position * self.k, (position + 1) * self.k
            cuts = [start, *range((start // self.share + 1) * self.share, end, self.share), end]
            segments.append(list(np.diff(cuts)))
        return segments

    def _quotas(self, rng: np.random.Generator) -> np.ndarray:
        """Chunks per class this epoch: sum B·P, each <= B, greedy by new images shown."""
        n, k, b = self.sizes, self.k, self.batches_per_epoch
        total = b * self.p
        full = np.minimum(n // k, b)
        if full.sum() >= total:   # only with a short batches_per_epoch: every chunk shows K new images
            return rng.multivariate_hypergeometric(full, total)
        quota, left = full.copy(), total - int(full.sum())
        remainder = n % k
        partial = np.flatnonzero((remainder > 0) & (n // k < b))
        partial = partial[np.lexsort((rng.random(len(partial)), -remainder[partial]))][:left]
        quota[partial] += 1
        left -= len(partial)
        while left > 0:   # repeats, with replacement across batches, in proportion to class size
            room = b - quota
            weights = np.where(room > 0, n, 0).astype(float)
            draw = np.minimum(rng.multinomial(left, weights / weights.sum()), room)
            quota += draw
            left -= int(draw.sum())
        return quota

    def _schedule(self, quota: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B, P) class ids: P distinct classes per batch, class c in exactly quota[c] batches."""
        b, p = self.batches_per_epoch, self.p
        remaining = quota.astype(np.int64).copy()
        active = np.flatnonzero(remaining > 0)
        schedule = np.empty((b, p), dtype=np.int64)
        for t in range(b):
            if t % 64 == 0:
                active = active[remaining[active] > 0]
            left = remaining[active]
            forced = active[left == b - t]          # must appear in every batch still to come
            free = active[(left > 0) & (left < b - t)]
            need = p - len(forced)
            if need:
                keys = np.log(rng.random(len(free))) / remaining[free]
                chosen = np.concatenate([forced, free[np.argpartition(-keys, need - 1)[:need]]])
            else:
                chosen = forced
            remaining[chosen] -= 1
            schedule[t] = chosen
        return schedule

    def _chunks(self, c: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """(count, K) indices of class c: successive permutations cut into chunks of K.

        A class with at least K images never repeats one inside a chunk (its last, short chunk
        of a permutation is topped up with other images of the class). A smaller class gives
        every chunk all its images in random order, repeated to K.
        """
        members, k = self.members[c], self.k
        if len(members) < k:
            perms = rng.permuted(np.tile(members, (count, 1)), axis=1)
            return perms[:, np.arange(k) % len(members)]
        full = len(members) // k
        rows: list[np.ndarray] = []
        while sum(len(r) for r in rows) < count:
            perm = rng.permutation(members)
            rows.append(perm[:full * k].reshape(full, k))
            if len(members) % k:
                tail = perm[full * k:]
                rows.append(np.concatenate([tail, rng.choice(perm[:full * k], k - len(tail), replace=False)])[None])
        return np.concatenate(rows)[:count]

    def _spread(self, members: np.ndarray, segments: list[int]) -> np.ndarray:
        """K slots for a small class whose chunk spans ranks: each rank gets its own images if possible."""
        n, k = len(members), self.k
        if len(segments) > n:   # fewer images than ranks: unavoidable sharing, contiguous runs
            return members[np.arange(k) * n // k]
        per_rank = np.ones(len(segments), dtype=int)
        extra = n - len(segments)
        for i, size in enumerate(segments):
            add = min(extra, size - 1)
            per_rank[i] += add
            extra -= add
        slots, start = [], 0
        for count, size in zip(per_rank, segments):
            slots.append(members[start:start + count][np.arange(size) % count])
            start += count
        return np.concatenate(slots)

    def _build_plan(self, rng: np.random.Generator) -> np.ndarray:
        b, p, k = self.batches_per_epoch, self.p, self.k
        quota = self._quotas(rng)
        schedule = self._schedule(quota, rng)
        # Chunk positions: small classes first into positions inside one rank's slice.
        spans = np.array([len(s) for s in self.segments])
        need = np.where(self.sizes < k, self.sizes, np.iinfo(np.int64).max)[schedule]
        class_order = np.lexsort((rng.random((b, p)), need), axis=-1)
        position_order = np.lexsort((rng.random((b, p)), np.broadcast_to(spans, (b, p))), axis=-1)
        placed = np.empty_like(schedule)
        np.put_along_axis(placed, position_order, np.take_along_axis(schedule, class_order, axis=-1), axis=-1)
        # The j-th appearance of a class in the epoch takes its j-th chunk.
        classes = np.flatnonzero(quota)
        table = np.concatenate([self._chunks(int(c), int(quota[c]), rng) for c in classes])
        offsets = np.zeros(len(quota), dtype=np.int64)
        offsets[classes] = np.cumsum(quota[classes]) - quota[classes]
        flat = placed.ravel()
        by_class = np.argsort(flat, kind="stable")
        appearance = np.empty_like(flat)
        appearance[by_class] = np.arange(len(flat)) - offsets[flat[by_class]]
        rows = (offsets[flat] + appearance).reshape(b, p)
        plan = table[rows]                                      # (B, P, K)
        if spans.max() > 1:
            for t, j in zip(*np.nonzero((self.sizes[placed] < k) & (spans[None, :] > 1))):
                n = self.sizes[placed[t, j]]
                plan[t, j] = self._spread(plan[t, j, :n], self.segments[j])
        return plan.reshape(b, p * k)
