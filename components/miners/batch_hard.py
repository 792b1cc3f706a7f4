"""Batch-hard mining (Hermans, Beyer & Leibe 2017): per anchor, its farthest positive and its
nearest negative, one triplet per anchor that has both (pml's ``BatchHardMiner``)."""

from __future__ import annotations

import torch

from .base import BaseMiner, label_masks


class BatchHardMiner(BaseMiner):
    def mine(self, dissimilarity, labels):
        positive, negative = label_masks(labels)
        inf = float("inf")
        hardest_positive = dissimilarity.masked_fill(~positive, -inf).argmax(dim=1)
        hardest_negative = dissimilarity.masked_fill(~negative, inf).argmin(dim=1)
        anchors = torch.nonzero(positive.any(dim=1) & negative.any(dim=1), as_tuple=True)[0]
        return anchors, hardest_positive[anchors], hardest_negative[anchors]
