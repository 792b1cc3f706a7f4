"""WARP (WSABIE, Weston et al. 2011) over the scores of a classifier, vectorised.

For a sample with true class y, negative classes are drawn uniformly (with replacement) from
the C-1 other classes until one violates the margin, ``s_neg > s_y - margin``. If that took N
draws, the rank of y is estimated as ``r = floor((C-1)/N)`` and the sample's loss is
``L(r) · (margin - s_y + s_neg)`` with ``L(r) = Σ_{i≤r} 1/i``. A sample whose draws never
violate (within ``max_trials`` draws, by default C-1) contributes 0. The batch loss is the
mean over samples.

The textbook form is a per-sample loop of draws. Here every draw of the batch is made up
front as a [B, max_trials] matrix, and the first violating column of each row is found with
an argmax over a boolean mask: one kernel per step on the device, no Python loop and no host
sync. It costs more draws than the loop (the loop stops at the first violation), but the
draws are cheap next to the scores, which are computed for all classes anyway.
:func:`components.losses.reference.warp_loss_loop` is the per-sample loop over the same
draws; the two agree exactly.
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


def warp_loss_from_draws(
    scores: torch.Tensor,
    labels: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = 1.0,
    harmonic: torch.Tensor | None = None,
) -> torch.Tensor:
    """WARP loss of a batch given its scores [B, C] and its negative draws [B, T]."""
    num_classes = scores.shape[1]
    if harmonic is None:
        harmonic = harmonic_weights(num_classes - 1, device=scores.device)
    true_scores = scores.gather(1, labels.unsqueeze(1))                  # [B, 1]
    drawn_scores = scores.gather(1, negatives)                           # [B, T]
    violates = drawn_scores > true_scores - margin                       # [B, T]
    # argmax returns the first maximal index: the first violating draw of each row.
    first = violates.to(torch.uint8).argmax(dim=1, keepdim=True)         # [B, 1]
    any_violation = violates.any(dim=1)                                  # [B]
    num_draws = first.squeeze(1) + 1
    # More draws than C-1 (max_trials > C-1) estimates rank 0, and L(0) = 0.
    rank = torch.div(num_classes - 1, num_draws, rounding_mode="floor")
    rank_weight = harmonic.to(device=scores.device, dtype=scores.dtype)[rank]
    hinge = margin - true_scores.squeeze(1) + drawn_scores.gather(1, first).squeeze(1)
    per_sample = torch.where(any_violation, rank_weight * hinge, torch.zeros_like(hinge))
    return per_sample.mean()


class WarpLoss(ClassifierLoss):
    """WARP over a linear (``cosine=False``) or cosine (``cosine=True``) classifier.

    Its classifier has the same state_dict keys as cross_entropy (linear) and cosine_softmax
    (cosine), so it can start from a trained softmax model (see ``transfer_classifier``).
    Set ``seed`` (or assign ``self.generator``) to make the negative draws reproducible.
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

    def draw_negatives(self, labels: torch.Tensor) -> torch.Tensor:
        return draw_negative_classes(
            labels, self.num_classes, self.max_trials, self.generator_for(labels.device)
        )

    def compute_loss(self, embeddings, labels):
        scores = self.classifier(embeddings)
        negatives = self.draw_negatives(labels)
        return warp_loss_from_draws(scores, labels, negatives, self.margin, self.harmonic)
