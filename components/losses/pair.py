"""Pair-based losses, computed by pytorch-metric-learning (pml) and checked in the tests
against references written from the papers.

pml's distances L2-normalise embeddings by default; each loss below says which distance it
uses and whether it normalises.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance

from .base import MetricLoss, check_positive_float, zero_loss


class ContrastiveLoss(MetricLoss):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) in the hinge form of Musgrave et al.
    2020 ("A Metric Learning Reality Check"), which pml implements.

    Euclidean distance d of L2-normalised embeddings; positive pairs ``[d - pos_margin]_+``,
    negative pairs ``[neg_margin - d]_+``. Each of the two terms is averaged over its pairs
    with non-zero loss (pml's AvgNonZeroReducer), and the two averages are added.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0):
        super().__init__()
        self.pos_margin = check_positive_float("pos_margin", pos_margin, allow_zero=True)
        self.neg_margin = check_positive_float("neg_margin", neg_margin)
        self.pml_loss = pml_losses.ContrastiveLoss(
            pos_margin=self.pos_margin,
            neg_margin=self.neg_margin,
            distance=LpDistance(normalize_embeddings=True, p=2, power=1),
        )

    def compute_loss(self, embeddings, labels):
        return self.pml_loss(embeddings, labels)


class LiftedStructureLoss(MetricLoss):
    """Lifted structured loss (Song et al. 2016), eq. 4 of the paper.

    For each positive pair (i, j):
    ``J_ij = log(Σ_{k∈N(i)} exp(α - D_ik) + Σ_{l∈N(j)} exp(α - D_jl)) + D_ij`` and the loss is
    ``Σ_{(i,j)} [J_ij]_+² / (2|P|)`` over the |P| unordered positive pairs; D is the
    Euclidean distance of L2-normalised embeddings, α the margin.

    Computed here in O(B²) with pml's distance: the log term is logaddexp(S_i, S_j) with
    S_i = logsumexp_{k∈N(i)} (α - D_ik), one value per sample. pml's LiftedStructureLoss
    computes the same value but materialises a [positive pairs × negative pairs] matrix
    (768 × 64 512 = 50 M entries for a 64×4 batch: about 3 s per step on one CPU core).
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = check_positive_float("margin", margin)
        self.distance = LpDistance(normalize_embeddings=True, p=2, power=1)

    def compute_loss(self, embeddings, labels):
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        negative = ~same
        if not positive.any() or not negative.any():  # (one host sync, as pml's checks)
            return zero_loss(embeddings)
        distances = self.distance(embeddings)                                         # [B, B]
        # With two labels in the batch every sample has a negative, so S is finite.
        lse = torch.logsumexp((self.margin - distances).masked_fill(~negative, float("-inf")), dim=1)
        j = torch.logaddexp(lse.unsqueeze(1), lse.unsqueeze(0)) + distances           # J_ij
        # Mean over ordered positive pairs (each unordered pair twice) of [J]_+² / 2.
        return (torch.relu(j).pow(2) * positive).sum() / (2 * positive.sum())


class MultiSimilarityLoss(MetricLoss):
    """Multi-similarity loss with its pair mining (Wang et al. 2019).

    Cosine similarity S. Mining (when ``epsilon`` is not None) keeps a negative pair if
    ``S_ik + ε > min_{positives j} S_ij`` and a positive pair if
    ``S_ij - ε < max_{negatives k} S_ik``. Then, per anchor i over the kept pairs,
    ``1/α log(1 + Σ_P exp(-α(S_ij - λ))) + 1/β log(1 + Σ_N exp(β(S_ik - λ)))``, averaged
    over all anchors of the batch (λ is ``base``).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float | None = 0.1):
        super().__init__()
        self.alpha = check_positive_float("alpha", alpha)
        self.beta = check_positive_float("beta", beta)
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise ValueError(f"base must be a number, got {base!r}")
        self.base = float(base)
        self.epsilon = None if epsilon is None else check_positive_float("epsilon", epsilon, allow_zero=True)
        self.pml_loss = pml_losses.MultiSimilarityLoss(
            alpha=self.alpha, beta=self.beta, base=self.base, distance=CosineSimilarity()
        )
        self.miner = (
            None if self.epsilon is None
            else pml_miners.MultiSimilarityMiner(epsilon=self.epsilon, distance=CosineSimilarity())
        )

    def compute_loss(self, embeddings, labels):
        pairs = None if self.miner is None else self.miner(embeddings, labels)
        return self.pml_loss(embeddings, labels, pairs)


def first_two_of_each_class(labels: torch.Tensor):
    """(anchor, positive) indices: the first and second sample of every class that has two,
    in batch order. The N-pair loss takes exactly one pair per class."""
    sorted_labels, order = torch.sort(labels, stable=True)   # stable: batch order within a class
    starts = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    first = torch.nonzero(starts, as_tuple=True)[0]
    second = (first + 1).clamp(max=len(labels) - 1)
    has_second = (first + 1 < len(labels)) & (sorted_labels[second] == sorted_labels[first])
    return order[first[has_second]], order[second[has_second]]


class NPairLoss(MetricLoss):
    """Multi-class N-pair loss (Sohn 2016) with its L2 penalty on the embeddings.

    From one (anchor, positive) pair per class (the first two samples of each class in the
    batch): ``1/N Σ_i log(1 + Σ_{j≠i} exp(f_i·f⁺_j - f_i·f⁺_i))`` with plain inner products
    of un-normalised embeddings, plus ``l2_reg/4 · (mean‖f_i‖² + mean‖f⁺_i‖²)`` (the penalty
    as TensorFlow's ``npairs_loss`` writes it).

    pml's NPairsLoss computes the first term, but its default distance L2-normalises the
    embeddings (cosine, no temperature), which is not Sohn's loss: the un-normalised dot
    product is passed explicitly. pml has no matching norm penalty (its LpRegularizer
    penalises ‖f‖, not ‖f‖², over the whole batch), so the penalty is added here.
    """

    def __init__(self, l2_reg: float = 0.002):
        super().__init__()
        self.l2_reg = check_positive_float("l2_reg", l2_reg, allow_zero=True)
        self.pml_loss = pml_losses.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))

    def compute_loss(self, embeddings, labels):
        anchors, positives = first_two_of_each_class(labels)
        if len(anchors) == 0:
            return zero_loss(embeddings)
        empty = anchors[:0]
        # Give pml our pairs so both terms use the same ones (pml would pick the same).
        n_pair_term = self.pml_loss(embeddings, labels, (anchors, positives, empty, empty))
        norm_penalty = embeddings[anchors].pow(2).sum(1).mean() + embeddings[positives].pow(2).sum(1).mean()
        return n_pair_term + 0.25 * self.l2_reg * norm_penalty
