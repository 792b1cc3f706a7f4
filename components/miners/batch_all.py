"""Batch-all mining (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

Every valid triplet of the batch: a ≠ p with the anchor's label, n with another label. With a
``margin``, only the triplets with ``d_an - d_ap <= margin`` (those a hinge with that margin
does not ignore), which is pml's ``TripletMarginMiner(type_of_triplets="all")``.

A triplet loss averages batch-all triplets over the non-zero terms: most triplets of a
trained batch are easy, and their zeros would drown the active ones.
"""

from __future__ import annotations

from .base import BaseMiner, check_margin, label_masks, triplets_of_pairs


class BatchAllMiner(BaseMiner):
    triplet_reduction = "mean_nonzero"

    def __init__(self, margin: float | None = None, distance: str = "euclidean"):
        super().__init__(distance)
        self.margin = check_margin("margin", margin)

    def mine(self, dissimilarity, labels):
        positive, negative = label_masks(labels)
        if self.margin is None:
            return triplets_of_pairs(positive, negative)

        def within_margin(anchors, positives):   # d[a, n] - d[a, p] <= margin, [P, B]
            return dissimilarity[anchors] - dissimilarity[anchors, positives].unsqueeze(1) <= self.margin

        return triplets_of_pairs(positive, negative, within_margin)

    def settings(self):
        return {"margin": self.margin, **super().settings()}
