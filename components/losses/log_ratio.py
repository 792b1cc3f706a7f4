"""Log-ratio loss with dense triplet sampling (Kim, Cho, Kwak & Lee 2019, "Deep Metric
Learning Beyond Binary Supervision").

Labels are continuous (e.g. vehicle length and width): a float tensor [B] or [B, A]. Over
every triplet (a, i, j) of the batch with i ≠ a, j ≠ a, i ≠ j:

    ( log D(f_a, f_i) / D(f_a, f_j)  -  log Dy(y_a, y_i) / Dy(y_a, y_j) )²

averaged over the B(B-1)(B-2) triplets. As in the paper (its Eq. 3), D and Dy are both the
*squared* Euclidean distance, of the embeddings and of the labels: the two sides then measure
distances alike, so an embedding equal to the labels (or any scaled, rotated or translated
copy of them) has loss 0. ``eps`` is added to each distance inside the log so equal labels or
coinciding embeddings stay finite. The loss depends only on distance ratios, so it is
invariant to the scale of the embeddings and of the labels.

The batches the paper trains on come from its dense triplet sampling, an anchor plus its
nearest neighbours in label space (`components.training.label_sampler`), so that the ratios
of small label distances, the hardest to embed, are well represented in every batch.

Computed in O(B²), not as a [B, B, B] broadcast: with ℓ_ai = log(D_ai + ε) - log(Dy_ai + ε)
the term is (ℓ_ai - ℓ_aj)², and for each anchor a, over its n = B-1 others with mean m_a,
Σ_{i,j≠a} (ℓ_ai - ℓ_aj)² = 2n Σ_{i≠a} (ℓ_ai - m_a)² (the i = j terms are 0). Centring first
(a two-pass variance) keeps it free of cancellation. The broadcast and the [B, B, D]
differences of the distances cost about 1 s per step at B = D = 256 on one CPU core.
"""

from __future__ import annotations

import torch

from .base import CONTINUOUS_LABELS, MetricLoss, check_positive_float, zero_loss


def pairwise_squared_distances(x: torch.Tensor) -> torch.Tensor:
    # Explicit differences rather than ‖a‖² + ‖b‖² - 2ab: the expansion loses the small
    # distances to cancellation, and the log makes small distances matter. cdist's
    # non-matmul mode sums the squared differences without materialising [B, B, D].
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


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
        label_log = torch.log(pairwise_squared_distances(attributes) + self.eps)
        residual = embedding_log - label_log                                   # ℓ[a, i]
        others = ~torch.eye(batch_size, dtype=torch.bool, device=embeddings.device)  # i ≠ a
        num_others = batch_size - 1
        mean = (residual * others).sum(dim=1, keepdim=True) / num_others             # m_a
        centred = (residual - mean) * others
        total = 2 * num_others * centred.pow(2).sum()       # Σ_a Σ_{i≠j, both ≠ a} (ℓ_ai - ℓ_aj)²
        return total / (batch_size * num_others * (batch_size - 2))
