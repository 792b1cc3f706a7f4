"""Slow, obviously-correct implementations kept next to the fast ones.

Used by the tests (the vectorised loss must equal these exactly) and by benchmarks (the
speed-up of the vectorised loss is measured against them). Not for training.
"""

from __future__ import annotations

import torch


def warp_loss_loop(
    scores: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """WARP as written in WSABIE: one sample at a time, one draw at a time.

    ``negatives`` [B, T] are the draws to use, in order (the same matrix the vectorised loss
    draws), so both implementations see exactly the same random negatives.
    """
    num_samples, num_classes = scores.shape
    total = scores.new_zeros(())
    for b in range(num_samples):
        y = int(labels[b])
        for t in range(negatives.shape[1]):
            negative = int(negatives[b, t])
            if scores[b, negative] > scores[b, y] - margin:
                num_draws = t + 1
                rank = (num_classes - 1) // num_draws
                rank_weight = sum(1.0 / i for i in range(1, rank + 1))
                total = total + rank_weight * (margin - scores[b, y] + scores[b, negative])
                break
    return total / num_samples
