"""Triplet loss (FaceNet, Schroff et al. 2015) over the triplets of a miner (Hermans et al. 2017).

Distances are between L2-normalised embeddings, squared by default (FaceNet). Per triplet:
``[d_ap - d_an + margin]_+``, or with ``soft_margin`` ``log(1 + exp(d_ap - d_an))`` (Hermans
et al.; the margin is then not used). The triplets come from ``miner`` (see
``components.miners``), and how they are averaged is the miner's ``triplet_reduction``:

* ``batch_all``  every valid triplet; mean over the triplets with non-zero loss (Hermans et al.:
  averaging over all triplets would drown the few active ones in zeros). ``miner: null`` is
  the same set of triplets.
* ``batch_hard`` per anchor, its farthest positive and nearest negative; mean over anchors.
* ``semi_hard``  per anchor-positive pair, the nearest negative farther than the positive
  (d_an > d_ap), or the farthest negative when none is; mean over anchor-positive pairs
  (FaceNet's online semi-hard mining as TensorFlow's ``triplet_semihard_loss`` does it).
* a pair miner (``multi_similarity``): every (a, p, n) whose two pairs it kept; mean.

``mining`` is the older name of ``miner`` (``TripletLoss(mining="semi_hard")`` keeps its
meaning); give one of them.

The terms are computed here from pml's distance rather than by pml's TripletMarginLoss, so the
per-triplet values are at hand for the diagnostics without a second pass.
Diagnostics: ``mined_triplets`` (how many the loss averaged over) and
``active_triplet_fraction`` (those with ``d_ap - d_an + margin > 0``; margin 0 for the soft
margin, whose term is never exactly 0).
"""

from __future__ import annotations

import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance

from .base import check_positive_float, zero_loss
from .mining import MinedLoss

DEFAULT_MINER = "semi_hard"


class TripletLoss(MinedLoss):
    def __init__(
        self,
        margin: float = 0.2,
        miner: str | dict | None = DEFAULT_MINER,
        soft_margin: bool = False,
        squared: bool = True,
        mining: str | dict | None = None,
    ):
        super().__init__()
        self.margin = check_positive_float("margin", margin, allow_zero=True)
        if not isinstance(soft_margin, bool):
            raise ValueError(f"soft_margin must be a bool, got {soft_margin!r}")
        if not isinstance(squared, bool):
            raise ValueError(f"squared must be a bool, got {squared!r}")
        if mining is not None:
            if miner != DEFAULT_MINER and miner != mining:
                raise ValueError(
                    f"give miner or mining (its older name), not both: miner={miner!r}, mining={mining!r}"
                )
            self.set_miner(mining, "mining")
        else:
            self.set_miner(miner, "miner")
        self.soft_margin = soft_margin
        self.squared = squared
        self.distance_name = "squared_euclidean" if squared else "euclidean"
        self.distance = LpDistance(normalize_embeddings=True, p=2, power=2 if squared else 1)
        self.reduction = "mean_nonzero" if self.miner is None else self.miner.triplet_reduction

    def compute_loss(self, embeddings, labels):
        distances = self.distance(embeddings)                                      # [B, B]
        anchors, positives, negatives = self.mine_triplets(embeddings, labels, distances, self.distance_name)
        if len(anchors) == 0:
            self.record(mined_triplets=0, active_triplet_fraction=0.0)
            return zero_loss(embeddings)
        # d_ap - d_an: the hinge's margin is added below, the soft margin has none.
        gap = distances[anchors, positives] - distances[anchors, negatives]
        if self.soft_margin:
            terms = F.softplus(gap)
            active = gap > 0
        else:
            terms = F.relu(gap + self.margin)
            active = terms > 0
        if self.reduction == "mean_nonzero":
            # pml's AvgNonZeroReducer: the sum over the triplets with a non-zero term (0 if none).
            value = terms.sum() / (terms > 0).sum().clamp(min=1)
        else:
            value = terms.mean()
        self.record(mined_triplets=len(anchors), active_triplet_fraction=active.float().mean())
        return value
