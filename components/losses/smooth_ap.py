"""Smooth-AP (Brown et al. 2020), written here rather than taken from pml.

pml 2.9.0's SmoothAPLoss reshapes the batch into (number of classes) groups assuming equal,
contiguous classes, so it is wrong for most P×K batch shapes, for shuffled label order and for
unequal class sizes. This one works from the labels alone.

Each sample q queries the rest of the batch by cosine similarity s_q·. For each positive i
of q (same label, i ≠ q), its rank among all other samples and among the positives are
smoothed with a sigmoid of temperature τ:

    R_all(i) = 1 + Σ_{j≠q,i}          σ((s_qj - s_qi) / τ)
    R_pos(i) = 1 + Σ_{j≠q,i, j pos.}  σ((s_qj - s_qi) / τ)
    AP_q     = 1/|P_q| Σ_{i∈P_q} R_pos(i) / R_all(i)

and the loss is ``1 - mean_q AP_q`` over the samples that have at least one positive. As
τ → 0 (and without ties) AP_q is the exact average precision of q's ranking. The query is
not one of its own positives (the authors' code and pml count it, which adds a free
precision of 1 to every AP).
Cost: only the (q, i) pairs with i ∈ P_q need a rank (the precision of any other pair is
multiplied by 0), so the sigmoid tensor is [number of positive pairs, B]: 768 × 256 for a
64×4 batch, where the plain [q, i, j] broadcast is 256³ = 16.8 M entries (and several copies
of it kept for backward: about 0.5 s per step on one CPU core, 40× the pair form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import MetricLoss, check_positive_float, zero_loss


class SmoothAPLoss(MetricLoss):
    def __init__(self, tau: float = 0.01):
        super().__init__()
        self.tau = check_positive_float("tau", tau)

    def compute_loss(self, embeddings, labels):
        batch_size = len(labels)
        normalised = F.normalize(embeddings, dim=1)
        similarity = normalised @ normalised.t()                                      # [q, j]
        eye = torch.eye(batch_size, dtype=torch.bool, device=labels.device)
        positive = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye                # [q, j]
        has_positive = positive.any(dim=1)
        if not has_positive.any():
            return zero_loss(embeddings)

        # One row per positive pair (q, i); column j: how far j ranks above i for query q.
        query, item = torch.nonzero(positive, as_tuple=True)                         # [M], [M]
        difference = similarity[query] - similarity[query, item].unsqueeze(1)         # [M, j]
        columns = torch.arange(batch_size, device=labels.device)
        counted = (columns != query.unsqueeze(1)) & (columns != item.unsqueeze(1))   # j ≠ q, j ≠ i
        # (j ≠ q: the query is not in its own ranking; j ≠ i: the "1 +" term is i itself.)
        smoothed = torch.sigmoid(difference / self.tau) * counted
        rank_all = 1.0 + smoothed.sum(dim=1)                                          # [M]
        rank_positive = 1.0 + (smoothed * positive[query]).sum(dim=1)                 # [M]
        precision_sum = similarity.new_zeros(batch_size).index_add(0, query, rank_positive / rank_all)
        num_positives = positive.sum(dim=1)
        ap = precision_sum[has_positive] / num_positives[has_positive]
        return 1.0 - ap.mean()
