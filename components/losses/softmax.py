"""Softmax classification losses: cross_entropy (linear layer) and cosine_softmax (cosine layer).

Retrieval then uses the embedding (or an earlier layer), not the class scores: the classifier
only shapes the feature space during training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ParametricLoss, check_positive_float
from .classifier import Classifier


class ClassifierLoss(ParametricLoss):
    """A loss over the scores of a :class:`Classifier` held as ``self.classifier``."""

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C] (for classification accuracy)."""
        self.check_embeddings(embeddings)
        return self.classifier(embeddings)


def _check_label_smoothing(value) -> float:
    value = check_positive_float("label_smoothing", value, allow_zero=True)
    if value >= 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {value!r}")
    return value


class CrossEntropyLoss(ClassifierLoss):
    """Softmax cross-entropy over a linear classifier (with bias)."""

    def __init__(self, num_classes: int, embedding_dim: int, label_smoothing: float = 0.0):
        super().__init__(num_classes, embedding_dim)
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        self.classifier = Classifier(num_classes, embedding_dim, cosine=False)

    def compute_loss(self, embeddings, labels):
        return F.cross_entropy(
            self.classifier(embeddings), labels, label_smoothing=self.label_smoothing
        )


class CosineSoftmaxLoss(ClassifierLoss):
    """Softmax cross-entropy over ``s · cos(f, w_c)`` (normalised features and class weights)."""

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 16.0,
        learn_scale: bool = False,
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes, embedding_dim)
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        self.classifier = Classifier(
            num_classes, embedding_dim, cosine=True, scale=scale, learn_scale=learn_scale
        )

    def compute_loss(self, embeddings, labels):
        return F.cross_entropy(
            self.classifier(embeddings), labels, label_smoothing=self.label_smoothing
        )
