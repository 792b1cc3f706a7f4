"""Multi-similarity pair mining (Wang et al. 2019), pml's ``MultiSimilarityMiner``.

With cosine similarity S (the paper's, and the default): a negative pair (i, k) is kept if
``S_ik + ε > min_{positives j} S_ij`` (the negative is, up to ε, more similar than i's least
similar positive), a positive pair (i, j) if ``S_ij - ε < max_{negatives k} S_ik``.
With a distance the same rule holds on ``-distance``. An anchor without positives keeps no
negative pair, one without negatives keeps no positive pair.
"""

from __future__ import annotations

import torch

from .base import PAIRS, BaseMiner, check_margin, label_masks


class MultiSimilarityMiner(BaseMiner):
    output = PAIRS

    def __init__(self, epsilon: float = 0.1, distance: str = "cosine"):
        super().__init__(distance)
        self.epsilon = check_margin("epsilon", epsilon, allow_none=False)

    def mine(self, dissimilarity, labels):
        positive, negative = label_masks(labels)
        inf = float("inf")
        nearest_negative = dissimilarity.masked_fill(~negative, inf).amin(dim=1, keepdim=True)
        farthest_positive = dissimilarity.masked_fill(~positive, -inf).amax(dim=1, keepdim=True)
        keep_positive = positive & (dissimilarity + self.epsilon > nearest_negative)
        keep_negative = negative & (dissimilarity - self.epsilon < farthest_positive)
        a1, p = torch.nonzero(keep_positive, as_tuple=True)
        a2, n = torch.nonzero(keep_negative, as_tuple=True)
        return a1, p, a2, n

    def settings(self):
        return {"epsilon": self.epsilon, **super().settings()}
