"""WARP (WSABIE, Weston et al. 2011) over the scores of a classifier, vectorised.

For a sample with true class y, negative classes are drawn uniformly (with replacement) from
the C-1 other classes until one violates the margin, ``s_neg > s_y - margin``. If that took N
draws, the rank of y is estimated as ``r = floor((C-1)/N)`` and the sample's loss is
``L(r) · (margin - s_y + s_neg)`` with ``L(r) = Σ_{i≤r} 1/i``. A sample whose draws never
violate (within ``max_trials`` draws, by default C-1) contributes 0. The batch loss is the
mean over samples.

The textbook form is a per-sample loop of draws. Here the draws of the whole batch are
scanned a block of columns at a time, under no_grad, and the first violating column of each
row is found with an argmax over a boolean mask; only the rows that have not violated yet go
on to the next, larger block, and the scan stops once none is left. Rows in which no class
violates the margin at all (checked once on the [B, C] scores) can never find a violation and
are not scanned past the first block: they contribute 0, exactly as after max_trials
fruitless draws. The gradient then flows through two gathers per row (true class and chosen
negative), not through the [B, T] drawn scores.
:func:`components.losses.reference.warp_loss_loop` is the per-sample loop over the same
draws; the two agree exactly.

Why blocks: drawing and scanning all C-1 columns up front costs O(B·C) per step although
most rows stop after a few draws (at C = 1000 that made the loss 1.8× slower than the blocks
on one CPU core; see bench/bench_losses.py). The blocks grow ×4 from 32 columns, so a row
needs at most ~log4(C/32)+1 of them; every block after the first costs one host sync.
"""

from __future__ import annotations

import torch

from .base import check_positive_float, check_positive_int
from .classifier import Classifier
from .softmax import ClassifierLoss


def harmonic_weights(max_rank: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``L`` as a lookup table of length max_rank+1: ``L[0] = 0``, ``L[r] = Σ_{i≤r} 1/i``."""
    ranks = torch.arange(1, max_rank + 1, dtype=torch.float64, device=device)
    table = torch.cat([torch.zeros(1, dtype=torch.float64, device=device), torch.cumsum(1.0 / ranks, 0)])
    return table.to(dtype)


def draw_negative_classes(
    labels: torch.Tensor, num_classes: int, num_draws: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B, num_draws] classes drawn uniformly from the C-1 classes other than each label.

    Draw an offset in [0, C-2] and skip over the true class, so every draw is a negative
    (no rejection loop) and each negative class has probability 1/(C-1).
    """
    offsets = torch.randint(
        0, num_classes - 1, (len(labels), num_draws), generator=generator, device=labels.device
    )
    return offsets + (offsets >= labels.unsqueeze(1)).long()


#: Columns of draws scanned in the first block, and the growth of later blocks. The first
#: block is drawn for every row, so with max_trials <= FIRST_BLOCK the module draws exactly
#: ``draw_negative_classes(labels, C, max_trials, generator)`` (one call, as before).
FIRST_BLOCK, BLOCK_GROWTH = 32, 4


def first_violations(scores, labels, margin, max_trials, draw_block):
    """Search each row's draws for the first violation ``s_neg > s_y - margin``, no_grad.

    ``draw_block(rows, start, stop)`` gives the draws [len(rows), stop-start] of columns
    start..stop-1 for ``rows`` (None: every row). Returns (found [B] bool, number of draws up
    to and including the violating one [B], the violating class [B]).
    """
    with torch.no_grad():
        threshold = scores.gather(1, labels.unsqueeze(1)) - margin                # [B, 1]
        # First block, every row at once: most rows stop here (a few fixed-size kernels,
        # no boolean indexing, no host sync).
        start = min(FIRST_BLOCK, max_trials)
        block = draw_block(None, 0, start)                                        # [B, w]
        hits = scores.gather(1, block) > threshold
        # argmax returns the first maximal index: the first violating draw of each row.
        first = hits.to(torch.uint8).argmax(dim=1, keepdim=True)                  # [B, 1]
        found = hits.gather(1, first).squeeze(1)
        num_draws = first.squeeze(1) + 1
        negative = block.gather(1, first).squeeze(1)
        if start >= max_trials:
            return found, num_draws, negative
        # Later blocks only for the rows still searching that *can* violate: a row in which no
        # negative class violates would scan all max_trials draws in vain (and adds 0).
        violators = (scores > threshold).scatter(1, labels.unsqueeze(1), False)
        rows = torch.nonzero(~found & violators.any(dim=1)).squeeze(1)           # one host sync
        width = start * BLOCK_GROWTH
        while len(rows) and start < max_trials:
            stop = min(start + width, max_trials)
            block = draw_block(rows, start, stop)                                 # [R, w]
            hits = scores[rows.unsqueeze(1), block] > threshold[rows]
            first = hits.to(torch.uint8).argmax(dim=1, keepdim=True)
            hit = hits.gather(1, first).squeeze(1)
            done = rows[hit]
            found[done] = True
            num_draws[done] = start + first.squeeze(1)[hit] + 1
            negative[done] = block.gather(1, first).squeeze(1)[hit]
            rows = rows[~hit]
            start, width = stop, width * BLOCK_GROWTH
    return found, num_draws, negative


def warp_loss_given_violations(scores, labels, found, num_draws, negative, margin, harmonic=None):
    """The batch loss once each row's first violation is known (differentiable in scores)."""
    num_classes = scores.shape[1]
    if harmonic is None:
        harmonic = harmonic_weights(num_classes - 1, device=scores.device)
    # More draws than C-1 (max_trials > C-1) estimates rank 0, and L(0) = 0.
    rank = torch.div(num_classes - 1, num_draws, rounding_mode="floor")
    rank_weight = harmonic.to(device=scores.device, dtype=scores.dtype)[rank]
    hinge = (margin - scores.gather(1, labels.unsqueeze(1)) + scores.gather(1, negative.unsqueeze(1))).squeeze(1)
    per_sample = torch.where(found, rank_weight * hinge, torch.zeros_like(hinge))
    return per_sample.mean()


def warp_loss_from_draws(
    scores: torch.Tensor,
    labels: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = 1.0,
    harmonic: torch.Tensor | None = None,
) -> torch.Tensor:
    """WARP loss of a batch given its scores [B, C] and its negative draws [B, T]."""
    def draw_block(rows, start, stop):
        return negatives[:, start:stop] if rows is None else negatives[rows, start:stop]

    found, num_draws, negative = first_violations(scores, labels, margin, negatives.shape[1], draw_block)
    return warp_loss_given_violations(scores, labels, found, num_draws, negative, margin, harmonic)


class WarpLoss(ClassifierLoss):
    """WARP over a linear (``cosine=False``) or cosine (``cosine=True``) classifier.

    Its classifier has the same state_dict keys as cross_entropy (linear) and cosine_softmax
    (cosine), so it can start from a trained softmax model (see ``transfer_classifier``).
    Set ``seed`` (or assign ``self.generator``) to make the negative draws reproducible.
    Diagnostics: the classifier losses' ones, plus ``violating_fraction`` (samples whose
    draws found a violating class) and ``mean_draws`` (draws those samples took).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        cosine: bool = False,
        scale: float = 16.0,
        learn_scale: bool = False,
        margin: float = 1.0,
        max_trials: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(num_classes, embedding_dim)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for warp (it ranks negatives), got {num_classes}")
        self.margin = check_positive_float("margin", margin)
        self.max_trials = num_classes - 1 if max_trials is None else check_positive_int("max_trials", max_trials)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.classifier = Classifier(num_classes, embedding_dim, cosine=cosine, scale=scale, learn_scale=learn_scale)
        # Not persistent: the state_dict must hold exactly the classifier's keys, like the
        # softmax losses, so checkpoints transfer both ways.
        self.register_buffer("harmonic", harmonic_weights(num_classes - 1), persistent=False)

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """The generator of the draws: None (torch's global RNG) unless a seed was given."""
        if self.seed is None and self.generator is None:
            return None
        if self.generator is None or self.generator.device != torch.device(device):
            # Generators are per device; re-seed one where the loss now runs.
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed if self.seed is not None else 0)
        return self.generator

    def draw_negatives(self, labels: torch.Tensor, num_draws: int | None = None) -> torch.Tensor:
        return draw_negative_classes(
            labels, self.num_classes, num_draws or self.max_trials, self.generator_for(labels.device)
        )

    def compute_loss(self, embeddings, labels):
        scores = self.classifier(embeddings)

        # Negatives are drawn lazily, block by block, only for the rows still searching (the
        # draws stay i.i.d. uniform over the C-1 negatives, so the estimator is unchanged).
        def draw_block(rows, start, stop):
            return self.draw_negatives(labels if rows is None else labels[rows], stop - start)

        found, num_draws, negative = first_violations(scores, labels, self.margin, self.max_trials, draw_block)
        self.record_accuracy(scores, labels)
        # Rows that found a violating class, and the draws they took: how hard the negatives
        # have become (a trained model needs many draws, and few rows still violate).
        self.record(
            violating_fraction=found.float().mean(),
            mean_draws=(num_draws * found).sum() / found.sum().clamp(min=1),
        )
        return warp_loss_given_violations(scores, labels, found, num_draws, negative, self.margin, self.harmonic)
