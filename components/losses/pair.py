"""Pair-based losses, on pytorch-metric-learning's (pml's) distances, checked in the tests
against references written from the papers (and against pml where pml is right).

pml's distances L2-normalise embeddings by default; each loss below says which distance it
uses and whether it normalises. Contrastive, lifted and multi-similarity take any miner
(``components.miners``). N-pair does not: its batch construction is its mining (one
positive pair per class, every other class's positive as a negative), and a mined set of
pairs would not be an N-pair batch.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance

from components.miners import label_masks

from .base import MetricLoss, check_positive_float, zero_loss
from .mining import MinedLoss
from .proxy import log_one_plus_sum_exp


class ContrastiveLoss(MinedLoss):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) in the hinge form of Musgrave et al.
    2020 ("A Metric Learning Reality Check"), the form pml implements.

    Euclidean distance d of L2-normalised embeddings; positive pairs ``[d - pos_margin]_+``,
    negative pairs ``[neg_margin - d]_+``. Each of the two terms is averaged over its pairs
    with non-zero loss (pml's AvgNonZeroReducer), and the two averages are added. The pairs are
    every ordered pair of the batch, or those of ``miner`` (a triplet miner gives its distinct
    (a, p) and (a, n) pairs).

    Computed on [B, B] masks rather than by pml's ContrastiveLoss: pml returns 0 whenever a
    miner gives at most one positive and one negative pair (a guard meant for empty batches),
    and the masks give the diagnostics without a second pass: ``mined_pairs``,
    ``active_pair_fraction`` and its ``active_positive_fraction`` / ``active_negative_fraction``.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, miner: str | dict | None = None):
        super().__init__()
        self.pos_margin = check_positive_float("pos_margin", pos_margin, allow_zero=True)
        self.neg_margin = check_positive_float("neg_margin", neg_margin)
        self.set_miner(miner)
        self.distance = LpDistance(normalize_embeddings=True, p=2, power=1)

    def compute_loss(self, embeddings, labels):
        distances = self.distance(embeddings)                                             # [B, B]
        positive, negative = label_masks(labels)
        positive, negative = self.mine_pair_masks(embeddings, labels, positive, negative, distances, "euclidean")
        pos_terms = torch.relu(distances - self.pos_margin) * positive
        neg_terms = torch.relu(self.neg_margin - distances) * negative
        pos_active, neg_active = (pos_terms > 0).sum(), (neg_terms > 0).sum()
        # Mean over the non-zero terms, 0 when there are none (pml's AvgNonZeroReducer).
        value = pos_terms.sum() / pos_active.clamp(min=1) + neg_terms.sum() / neg_active.clamp(min=1)
        num_pos, num_neg = positive.sum(), negative.sum()
        self.record(
            mined_pairs=num_pos + num_neg,
            active_pair_fraction=(pos_active + neg_active) / (num_pos + num_neg).clamp(min=1),
            active_positive_fraction=pos_active / num_pos.clamp(min=1),
            active_negative_fraction=neg_active / num_neg.clamp(min=1),
        )
        return value


class LiftedStructureLoss(MinedLoss):
    """Lifted structured loss (Song et al. 2016), eq. 4 of the paper.

    For each positive pair (i, j):
    ``J_ij = log(Σ_{k∈N(i)} exp(α - D_ik) + Σ_{l∈N(j)} exp(α - D_jl)) + D_ij`` and the loss is
    ``Σ_{(i,j)} [J_ij]_+² / (2|P|)`` over the |P| unordered positive pairs; D is the
    Euclidean distance of L2-normalised embeddings, α the margin.

    With a ``miner``, the positive pairs are the mined ones and N(i) holds the mined negative
    pairs (i, k); a positive pair neither of whose samples has a mined negative has no J and
    is left out. Without one, every pair (the paper).

    Computed here in O(B²) with pml's distance: the log term is logaddexp(S_i, S_j) with
    S_i = logsumexp_{k∈N(i)} (α - D_ik), one value per sample. pml's LiftedStructureLoss
    computes the same value but materialises a [positive pairs × negative pairs] matrix
    (768 × 64 512 = 50 M entries for a 64×4 batch: about 3 s per step on one CPU core).
    Diagnostics: ``mined_pairs`` (ordered positive pairs used) and ``active_pair_fraction``
    (those with J > 0).
    """

    def __init__(self, margin: float = 1.0, miner: str | dict | None = None):
        super().__init__()
        self.margin = check_positive_float("margin", margin)
        self.set_miner(miner)
        self.distance = LpDistance(normalize_embeddings=True, p=2, power=1)

    def compute_loss(self, embeddings, labels):
        positive, negative = label_masks(labels)
        if not positive.any() or not negative.any():  # (one host sync, as pml's checks)
            self.record(mined_pairs=0, active_pair_fraction=0.0)
            return zero_loss(embeddings)
        distances = self.distance(embeddings)                                         # [B, B]
        positive, negative = self.mine_pair_masks(embeddings, labels, positive, negative, distances, "euclidean")
        masked = (self.margin - distances).masked_fill(~negative, float("-inf"))
        if self.miner is None:
            # With two labels in the batch every sample has a negative, so S is finite.
            lse, used = torch.logsumexp(masked, dim=1), positive
        else:
            # A sample without mined negatives gets a very small finite S instead of -inf, so
            # logaddexp and its gradient stay finite; a pair with none on either side is left out.
            has_negative = negative.any(dim=1)
            lse = torch.logsumexp(masked.masked_fill(~has_negative.unsqueeze(1), 0.0), dim=1)
            lse = torch.where(has_negative, lse, torch.full_like(lse, torch.finfo(lse.dtype).min / 4))
            used = positive & (has_negative.unsqueeze(1) | has_negative.unsqueeze(0))
        j = torch.logaddexp(lse.unsqueeze(1), lse.unsqueeze(0)) + distances           # J_ij
        hinge = torch.relu(j) * used
        num_used = used.sum()
        self.record(mined_pairs=num_used, active_pair_fraction=(hinge > 0).sum() / num_used.clamp(min=1))
        # Mean over ordered positive pairs (each unordered pair twice) of [J]_+² / 2.
        return hinge.pow(2).sum() / (2 * num_used.clamp(min=1))


class MultiSimilarityLoss(MinedLoss):
    """Multi-similarity loss with its pair mining (Wang et al. 2019).

    Cosine similarity S. Per anchor i over the mined pairs,
    ``1/α log(1 + Σ_P exp(-α(S_ij - λ))) + 1/β log(1 + Σ_N exp(β(S_ik - λ)))``, averaged
    over all anchors of the batch (λ is ``base``).

    The pairs: by default the paper's mining (``miner: multi_similarity``), with ``epsilon``
    its ε: a negative pair is kept if ``S_ik + ε > min_{positives j} S_ij``, a positive pair if
    ``S_ij - ε < max_{negatives k} S_ik``; ``epsilon: null`` (or ``miner: null``) uses every
    pair. Any other miner replaces the paper's mining, and ``epsilon`` then does not apply
    (give a ``{name: multi_similarity, params: {...}}`` mapping to set every miner parameter).

    Written on [B, B] masks rather than with pml's MultiSimilarityLoss (whose pair-loss base
    returns 0 when a miner keeps at most one pair of each kind). Diagnostics: ``mined_pairs``
    and ``mined_pair_fraction`` (of all the batch's pairs).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float | None = 0.1,
        miner: str | dict | None = "multi_similarity",
    ):
        super().__init__()
        self.alpha = check_positive_float("alpha", alpha)
        self.beta = check_positive_float("beta", beta)
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise ValueError(f"base must be a number, got {base!r}")
        self.base = float(base)
        self.epsilon = None if epsilon is None else check_positive_float("epsilon", epsilon, allow_zero=True)
        if miner == "multi_similarity":
            miner = None if self.epsilon is None else {"name": "multi_similarity", "params": {"epsilon": self.epsilon}}
        self.set_miner(miner)
        self.similarity = CosineSimilarity()

    def compute_loss(self, embeddings, labels):
        similarity = self.similarity(embeddings)                                      # [B, B]
        all_positive, all_negative = label_masks(labels)
        positive, negative = self.mine_pair_masks(
            embeddings, labels, all_positive, all_negative, similarity, "cosine"
        )
        pos_terms = log_one_plus_sum_exp(-self.alpha * (similarity - self.base), positive, dim=1) / self.alpha
        neg_terms = log_one_plus_sum_exp(self.beta * (similarity - self.base), negative, dim=1) / self.beta
        mined = positive.sum() + negative.sum()
        self.record(mined_pairs=mined, mined_pair_fraction=mined / (all_positive.sum() + all_negative.sum()).clamp(min=1))
        return (pos_terms + neg_terms).mean()


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
    Diagnostics: ``num_pairs``, the classes of the batch that gave a pair.
    """

    def __init__(self, l2_reg: float = 0.002):
        super().__init__()
        self.l2_reg = check_positive_float("l2_reg", l2_reg, allow_zero=True)
        self.pml_loss = pml_losses.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))

    def compute_loss(self, embeddings, labels):
        anchors, positives = first_two_of_each_class(labels)
        self.record(num_pairs=len(anchors))
        if len(anchors) == 0:
            return zero_loss(embeddings)
        empty = anchors[:0]
        # Give pml our pairs so both terms use the same ones (pml would pick the same).
        n_pair_term = self.pml_loss(embeddings, labels, (anchors, positives, empty, empty))
        norm_penalty = embeddings[anchors].pow(2).sum(1).mean() + embeddings[positives].pow(2).sum(1).mean()
        return n_pair_term + 0.25 * self.l2_reg * norm_penalty
