"""Softmax classification losses: cross_entropy (linear layer) and cosine_softmax (cosine layer).

Retrieval then uses the embedding (or an earlier layer), not the class scores: the classifier
only shapes the feature space during training.
Diagnostics of every classifier loss: ``batch_accuracy`` (last forward) and, computed when
asked, ``weight_norm_mean``, ``weight_norm_min``, ``weight_cosine_mean``, ``weight_cosine_max``
of the class weights, plus ``logit_scale`` for a cosine classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ParametricLoss, check_positive_float, vector_statistics
from .classifier import Classifier


class ClassifierLoss(ParametricLoss):
    """A loss over the scores of a :class:`Classifier` held as ``self.classifier``."""

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C] (for classification accuracy)."""
        self.check_embeddings(embeddings)
        return self.classifier(embeddings)

    def record_accuracy(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``batch_accuracy``: top-1 of the scores the loss computed anyway (O(B·C))."""
        self.record(batch_accuracy=(logits.argmax(dim=1) == labels).float().mean())

    def parameter_diagnostics(self, detailed=False):
        stats = vector_statistics(self.classifier.weight, "weight", detailed)
        if self.classifier.cosine:
            stats["logit_scale"] = self.classifier.scale.detach()
        return stats


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
        logits = self.classifier(embeddings)
        self.record_accuracy(logits, labels)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


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
        logits = self.classifier(embeddings)
        self.record_accuracy(logits, labels)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
