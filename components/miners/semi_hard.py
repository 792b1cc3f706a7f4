"""Online semi-hard mining (FaceNet, Schroff et al. 2015), as TensorFlow's
``triplet_semihard_loss`` does it: one triplet per anchor-positive pair, with the nearest
negative farther than the positive (d_an > d_ap), or the farthest negative when none is.
Pairs whose anchor has no negative in the batch give no triplet.

pml's ``TripletMarginMiner(type_of_triplets="semihard")`` is another definition: it keeps
*every* negative with d_ap < d_an <= d_ap + margin and drops the pairs that have none. The
negative chosen here, when one lies inside that band, is the nearest of pml's (the tests
check that).
"""

from __future__ import annotations

import torch

from .base import BaseMiner, label_masks


class SemiHardMiner(BaseMiner):
    def mine(self, dissimilarity, labels):
        positive, negative = label_masks(labels)
        anchors, positives = torch.nonzero(positive, as_tuple=True)
        is_negative = negative[anchors]                                          # [P, B]
        anchor_to_all = dissimilarity[anchors]                                   # [P, B]
        anchor_to_positive = dissimilarity[anchors, positives].unsqueeze(1)      # [P, 1]
        farther = is_negative & (anchor_to_all > anchor_to_positive)
        inf = float("inf")
        nearest_farther = anchor_to_all.masked_fill(~farther, inf).argmin(dim=1)
        farthest = anchor_to_all.masked_fill(~is_negative, -inf).argmax(dim=1)
        negatives = torch.where(farther.any(dim=1), nearest_farther, farthest)
        keep = is_negative.any(dim=1)
        return anchors[keep], positives[keep], negatives[keep]
