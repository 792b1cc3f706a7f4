"""SoftTriple loss (Qian et al. 2019), computed by pml's SoftTripleLoss.

K centres per class; the similarity of x to class c is a soft maximum over its centres,
``S_c = Σ_k softmax_k(s_k / γ) · s_k`` with s_k the cosine to centre k; the loss is the
softmax cross-entropy of ``λ(S - δ·onehot(y))``, plus ``τ · R``, where R spreads the centres
of a class apart: ``R = Σ_c Σ_{k<k'} sqrt(2 + ε - 2 cos(w_k, w_k')) / (C·K·(K-1))``
(pml's SparseCentersRegularizer is exactly that).
"""

from __future__ import annotations

from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.regularizers import SparseCentersRegularizer

from .base import ParametricLoss, check_positive_float, check_positive_int


class SoftTripleLoss(ParametricLoss):
    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        margin: float = 0.01,
        tau: float = 0.2,
    ):
        super().__init__(num_classes, embedding_dim)
        self.centers_per_class = check_positive_int("centers_per_class", centers_per_class)
        self.la = check_positive_float("la", la)
        self.gamma = check_positive_float("gamma", gamma)
        self.margin = check_positive_float("margin", margin, allow_zero=True)
        self.tau = check_positive_float("tau", tau, allow_zero=True)
        # With one centre per class there is nothing to spread apart (and pml's regulariser
        # refuses K = 1).
        use_regulariser = self.tau > 0 and centers_per_class > 1
        self.pml_loss = pml_losses.SoftTripleLoss(
            num_classes,
            embedding_dim,
            centers_per_class=centers_per_class,
            la=self.la,
            gamma=self.gamma,  # pml stores 1/γ and multiplies by it, as the paper divides by γ
            margin=self.margin,
            weight_regularizer=SparseCentersRegularizer(num_classes, centers_per_class) if use_regulariser else None,
            weight_reg_weight=self.tau,
        )

    @property
    def centers(self):
        """The class centres, [D, C·K] (column c·K + k is centre k of class c)."""
        return self.pml_loss.fc

    def compute_loss(self, embeddings, labels):
        # pml casts its centres to the dtype of the embeddings *in place* (e.g. to float16
        # under autocast, losing the float32 master weights); give it the centres' dtype.
        return self.pml_loss(embeddings.to(self.centers.dtype), labels)
