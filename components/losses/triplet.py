"""Triplet loss (FaceNet, Schroff et al. 2015) with in-batch mining (Hermans et al. 2017).

Distances are between L2-normalised embeddings, squared by default (FaceNet). Per triplet:
``[d_ap - d_an + margin]_+``, or with ``soft_margin`` ``log(1 + exp(d_ap - d_an))`` (Hermans
et al.; the margin is then not used). Mining, and how each one averages:

* ``batch_all``  every valid triplet; mean over the triplets with non-zero loss (Hermans et al.:
  averaging over all triplets would drown the few active ones in zeros).
* ``batch_hard`` per anchor, its farthest positive and nearest negative; mean over anchors.
* ``semi_hard``  per anchor-positive pair, the nearest negative farther than the positive
  (d_an > d_ap), or the farthest negative when none is; mean over anchor-positive pairs.
  This is FaceNet's online semi-hard mining as TensorFlow's ``triplet_semihard_loss`` does it.

pml's TripletMarginLoss computes the per-triplet terms (and, with no miner, enumerates all
triplets); pml's BatchHardMiner picks the batch-hard triplets. pml's semi-hard option
(TripletMarginMiner(type_of_triplets="semihard")) keeps *every* negative with
d_ap < d_an < d_ap + margin rather than one negative per pair, and drops the pairs that have
no semi-hard negative: a different definition, so semi-hard mining is written here.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer

from .base import MetricLoss, check_choice, check_positive_float

MINING_STRATEGIES = ("batch_all", "batch_hard", "semi_hard")


def semi_hard_triplets(distances: torch.Tensor, labels: torch.Tensor):
    """(anchor, positive, negative) index tensors, one triplet per anchor-positive pair.

    ``distances`` [B, B]; only its order matters. Pairs whose anchor has no negative in the
    batch give no triplet.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    anchors, positives = torch.nonzero(same & ~eye, as_tuple=True)
    is_negative = ~same[anchors]                                      # [P, B]
    anchor_to_all = distances[anchors]                                # [P, B]
    anchor_to_positive = distances[anchors, positives].unsqueeze(1)   # [P, 1]
    farther = is_negative & (anchor_to_all > anchor_to_positive)
    inf = torch.finfo(distances.dtype).max
    nearest_farther = torch.where(farther, anchor_to_all, inf).argmin(dim=1)
    farthest = torch.where(is_negative, anchor_to_all, -inf).argmax(dim=1)
    negatives = torch.where(farther.any(dim=1), nearest_farther, farthest)
    keep = is_negative.any(dim=1)
    return anchors[keep], positives[keep], negatives[keep]


class TripletLoss(MetricLoss):
    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "semi_hard",
        soft_margin: bool = False,
        squared: bool = True,
    ):
        super().__init__()
        self.margin = check_positive_float("margin", margin, allow_zero=True)
        self.mining = check_choice("mining", mining, MINING_STRATEGIES)
        if not isinstance(soft_margin, bool):
            raise ValueError(f"soft_margin must be a bool, got {soft_margin!r}")
        if not isinstance(squared, bool):
            raise ValueError(f"squared must be a bool, got {squared!r}")
        self.soft_margin = soft_margin
        self.squared = squared
        self.distance = LpDistance(normalize_embeddings=True, p=2, power=2 if squared else 1)
        reducer = AvgNonZeroReducer() if mining == "batch_all" else MeanReducer()
        self.triplet_loss = pml_losses.TripletMarginLoss(
            margin=0.0 if soft_margin else self.margin,
            smooth_loss=soft_margin,  # pml: softplus(d_ap - d_an + margin)
            triplets_per_anchor="all",
            distance=self.distance,
            reducer=reducer,
        )
        self.batch_hard_miner = pml_miners.BatchHardMiner(distance=self.distance)

    def compute_loss(self, embeddings, labels):
        if self.mining == "batch_all":
            return self.triplet_loss(embeddings, labels)
        if self.mining == "batch_hard":
            triplets = self.batch_hard_miner(embeddings, labels)
        else:
            with torch.no_grad():
                triplets = semi_hard_triplets(self.distance(embeddings), labels)
        return self.triplet_loss(embeddings, labels, triplets)
