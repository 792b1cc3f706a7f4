"""What every miner shares: the distances it can rank by, input checks, and the two index
forms a miner returns.

A miner looks at a batch and picks the index tuples a pair or triplet loss is computed over:

* triplets ``(anchor, positive, negative)``: LongTensors of equal length, one entry per triplet;
* pairs ``(anchor1, positive, anchor2, negative)``: the positive pairs (anchor1[i], positive[i])
  and the negative pairs (anchor2[j], negative[j]), two independent lists.

These are pytorch-metric-learning's (pml's) index tuples, so a chipmatch miner's output can be
given to a pml loss and a pml miner's output to a chipmatch loss. Mining never takes part in
the gradient: it runs under ``no_grad`` on detached embeddings.

Internally a miner ranks by a *dissimilarity* (smaller = closer): a distance as it is, a
similarity negated. One code path then serves every distance, and pml's conventions follow
(for a similarity, pml's ``distance.margin(ap, an)`` is ``s_ap - s_an``, i.e. ``d_an - d_ap``
here).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity, LpDistance

TRIPLETS = "triplets"   # (anchor, positive, negative)
PAIRS = "pairs"         # (anchor1, positive, anchor2, negative)

#: Distances a miner can rank by, all on L2-normalised embeddings (every chipmatch pair and
#: triplet loss normalises). On unit vectors the three give the same order; they differ in
#: the units of a margin or epsilon.
DISTANCES = {
    "euclidean": lambda: LpDistance(normalize_embeddings=True, p=2, power=1),
    "squared_euclidean": lambda: LpDistance(normalize_embeddings=True, p=2, power=2),
    "cosine": CosineSimilarity,   # a similarity: larger is closer
}


def build_distance(name: str) -> BaseDistance:
    if name not in DISTANCES:
        raise ValueError(f"distance must be one of {list(DISTANCES)}, got {name!r}")
    return DISTANCES[name]()


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, B] boolean masks of the positive pairs (same label, i ≠ j) and negative pairs."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def triplets_of_pairs(positive: torch.Tensor, negative: torch.Tensor, keep=None):
    """Every (a, p, n) with (a, p) in the [B, B] mask ``positive`` and (a, n) in ``negative``,
    in (a, p, n) order; ``keep(anchors, positives)`` may narrow the [P, B] negative mask.

    Enumerated per positive pair, [P, B] (768 × 256 for a 64×4 batch), rather than as a
    [B, B, B] mask (16.8 M entries) as pml's ``get_all_triplets_indices`` does: the batch-all
    triplet loss of a 64×4 batch (forward + backward, one CPU core) took 20 ms that way, 6.5 ms
    this way.
    """
    anchors, positives = torch.nonzero(positive, as_tuple=True)
    candidates = negative[anchors]                                              # [P, B]
    if keep is not None:
        candidates = candidates & keep(anchors, positives)
    pair, negatives = torch.nonzero(candidates, as_tuple=True)
    return anchors[pair], positives[pair], negatives


def check_margin(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


class BaseMiner:
    """``miner(embeddings, labels)`` → index tuple (see the module docstring).

    A subclass sets ``output`` and writes :meth:`mine`, which sees a [B, B] dissimilarity
    matrix (smaller = closer) and the labels. A plain object, not an ``nn.Module``: a miner
    holds no tensors, so it adds nothing to a loss's state_dict or parameters.
    """

    #: ``TRIPLETS`` or ``PAIRS``: the form :meth:`__call__` returns.
    output: ClassVar[str] = TRIPLETS
    #: How a triplet loss averages the terms of this miner's triplets: ``"mean"``, or
    #: ``"mean_nonzero"`` (over the triplets with a non-zero term) for miners that keep many
    #: easy triplets, whose zeros would drown the few active ones (Hermans et al. 2017).
    triplet_reduction: ClassVar[str] = "mean"

    def __init__(self, distance: str = "euclidean"):
        self.distance_name = distance
        self.distance = build_distance(distance)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, matrix: torch.Tensor | None = None):
        """Mine a batch. ``matrix``: this miner's distance matrix of ``embeddings`` when the
        caller already has it (a loss with the same distance), to avoid computing it twice."""
        name = type(self).__name__
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
            raise ValueError(f"{name}: embeddings must be a tensor [B, D], got {getattr(embeddings, 'shape', embeddings)!r}")
        if not isinstance(labels, torch.Tensor) or labels.shape != (len(embeddings),):
            raise ValueError(f"{name}: labels must be a tensor [B]=[{len(embeddings)}], got {getattr(labels, 'shape', labels)!r}")
        with torch.no_grad():
            if matrix is None:
                matrix = self.distance(embeddings.detach())
            matrix = matrix.detach()
            dissimilarity = -matrix if self.distance.is_inverted else matrix
            return self.mine(dissimilarity, labels)

    def mine(self, dissimilarity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({fields})"

    def settings(self) -> dict:
        return {"distance": self.distance_name}


# --- the two index forms --------------------------------------------------------------------
def as_triplets(indices: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplets from either form. Pairs become every (a, p, n) whose positive pair (a, p)
    and negative pair (a, n) share the anchor a (as pml's ``convert_to_triplets``)."""
    if len(indices) == 3:
        return indices
    a1, p, a2, n = indices
    positive_row, negative_row = torch.nonzero(a1.unsqueeze(1) == a2.unsqueeze(0), as_tuple=True)
    return a1[positive_row], p[positive_row], n[negative_row]


def pair_masks(indices: tuple[torch.Tensor, ...], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, B] boolean masks of the distinct positive and negative pairs in either form
    (triplets give their (a, p) and (a, n) pairs; a pair mined twice counts once)."""
    if len(indices) == 3:
        a, p, n = indices
        a1, a2 = a, a
    else:
        a1, p, a2, n = indices
    device = p.device
    positive = torch.zeros(batch_size, batch_size, dtype=torch.bool, device=device)
    negative = torch.zeros_like(positive)
    positive[a1, p] = True
    negative[a2, n] = True
    return positive, negative
