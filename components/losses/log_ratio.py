"""Log-ratio loss with dense triplet sampling (Kim, Cho, Kwak & Lee 2019, "Deep Metric
Learning Beyond Binary Supervision").

Labels are continuous (e.g. vehicle length and width): a float tensor [B] or [B, A]. Over
every triplet (a, i, j) of the batch with i ≠ a, j ≠ a, i ≠ j:

    ( log D(f_a, f_i) / D(f_a, f_j)  -  log Dy(y_a, y_i) / Dy(y_a, y_j) )²

averaged over the B(B-1)(B-2) triplets; D is the squared Euclidean distance of the embeddings,
Dy the Euclidean distance of the labels, and ``eps`` is added to each distance inside the log
so equal labels or coinciding embeddings stay finite. The loss depends only on distance
ratios, so it is invariant to the scale of the embeddings and of the labels.

Vectorised: with ℓ_ai = log(D_ai + ε) - log(Dy_ai + ε), the term is (ℓ_ai - ℓ_aj)², one
[B, B, B] broadcast.
"""

from __future__ import annotations

import torch

from .base import CONTINUOUS_LABELS, MetricLoss, check_positive_float, zero_loss


def pairwise_squared_distances(x: torch.Tensor) -> torch.Tensor:
    # Explicit differences rather than ‖a‖² + ‖b‖² - 2ab: the expansion loses the small
    # distances to cancellation, and the log makes small distances matter.
    return (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(dim=2)


class LogRatioLoss(MetricLoss):
    label_kind = CONTINUOUS_LABELS

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = check_positive_float("eps", eps)

    def compute_loss(self, embeddings, labels):
        batch_size = len(labels)
        if batch_size < 3:
            return zero_loss(embeddings)
        attributes = labels.reshape(batch_size, -1).to(embeddings.dtype)
        embedding_log = torch.log(pairwise_squared_distances(embeddings) + self.eps)
        label_distance = pairwise_squared_distances(attributes).clamp(min=0).sqrt()
        label_log = torch.log(label_distance + self.eps)
        residual = embedding_log - label_log                                   # ℓ[a, i]
        difference = residual.unsqueeze(2) - residual.unsqueeze(1)             # ℓ_ai - ℓ_aj
        eye = torch.eye(batch_size, dtype=torch.bool, device=embeddings.device)
        distinct = ~eye.unsqueeze(2) & ~eye.unsqueeze(1) & ~eye.unsqueeze(0)  # i≠a, j≠a, i≠j
        return (difference.pow(2) * distinct).sum() / distinct.sum()
