"""Pair and triplet losses that take a miner (``components.miners``).

A mined loss holds ``self.miner`` (None: every valid pair or triplet of the batch) and asks
for what it is computed over in its own form: a triplet loss for triplets
(:meth:`MinedLoss.mine_triplets`), a pair loss for [B, B] masks of positive and negative pairs
(:meth:`MinedLoss.mine_pair_masks`). Any miner fits any such loss: pairs become triplets
sharing an anchor, triplets give their (a, p) and (a, n) pairs.

When the miner ranks by the distance the loss computes anyway, the loss hands it its matrix
so the batch's [B, B] distances are computed once.
"""

from __future__ import annotations

from collections.abc import Mapping

from components.miners import (
    BaseMiner,
    as_triplets,
    check_miner_spec,
    label_masks,
    miner_from_spec,
    pair_masks,
    triplets_of_pairs,
)

from .base import MetricLoss

MINER_KEYS = ("miner", "mining")


class MinedLoss(MetricLoss):
    miner: BaseMiner | None = None

    def set_miner(self, spec, what: str = "miner") -> None:
        self.miner = miner_from_spec(spec, what)

    @classmethod
    def check_param_names(cls, params: Mapping, what: str) -> None:
        for key in MINER_KEYS:
            if key in params:
                check_miner_spec(params[key], f"{what}.{key}")

    def _mine(self, embeddings, labels, matrix, distance_name):
        same = matrix is not None and distance_name == self.miner.distance_name
        return self.miner(embeddings, labels, matrix if same else None)

    def mine_triplets(self, embeddings, labels, matrix=None, distance_name=None):
        """(anchor, positive, negative) of the miner, or every valid triplet without one."""
        if self.miner is None:
            return triplets_of_pairs(*label_masks(labels))
        return as_triplets(self._mine(embeddings, labels, matrix, distance_name))

    def mine_pair_masks(self, embeddings, labels, positive, negative, matrix=None, distance_name=None):
        """[B, B] masks of the positive and negative pairs to use: the label masks
        (``positive``, ``negative``) without a miner, the mined pairs with one."""
        if self.miner is None:
            return positive, negative
        mined_positive, mined_negative = pair_masks(
            self._mine(embeddings, labels, matrix, distance_name), len(labels)
        )
        # A miner returns valid pairs; the & costs nothing next to the loss and keeps a
        # hand-written miner from mixing a negative pair into the positives.
        return mined_positive & positive, mined_negative & negative

    def extra_repr(self) -> str:
        return f"miner={self.miner!r}"
