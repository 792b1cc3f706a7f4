"""SoftTriple loss (Qian et al. 2019), computed by pml's SoftTripleLoss.

K centres per class; the similarity of x to class c is a soft maximum over its centres,
``S_c = Σ_k softmax_k(s_k / γ) · s_k`` with s_k the cosine to centre k; the loss is the
softmax cross-entropy of ``λ(S - δ·onehot(y))``, plus ``τ · R``, where R spreads the centres
of a class apart: ``R = Σ_c Σ_{k<k'} sqrt(2 + ε - 2 cos(w_k, w_k')) / (C·K·(K-1))``
(pml's SparseCentersRegularizer is exactly that, but it computes the cosines of all C·K
centres to each other, [C·K, C·K] = 3.7 M entries at C = 192, K = 10, and keeps only the
C·K(K-1)/2 within-class ones; here only the C blocks [K, K] are computed: ~70 ms less per step
on one CPU core, about 7 % of a small_cnn training step).
Diagnostics (computed when asked): the ``proxy_*`` statistics of all C·K centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from .base import ParametricLoss, check_positive_float, check_positive_int, vector_statistics


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
        # With one centre per class there is nothing to spread apart.
        self.use_regulariser = self.tau > 0 and centers_per_class > 1
        # pml computes the softmax term only; the regulariser is added in compute_loss.
        self.pml_loss = pml_losses.SoftTripleLoss(
            num_classes,
            embedding_dim,
            centers_per_class=centers_per_class,
            la=self.la,
            gamma=self.gamma,  # pml stores 1/γ and multiplies by it, as the paper divides by γ
            margin=self.margin,
        )

    @property
    def centers(self):
        """The class centres, [D, C·K] (column c·K + k is centre k of class c)."""
        return self.pml_loss.fc

    def compute_loss(self, embeddings, labels):
        # pml casts its centres to the dtype of the embeddings *in place* (e.g. to float16
        # under autocast, losing the float32 master weights); give it the centres' dtype.
        loss = self.pml_loss(embeddings.to(self.centers.dtype), labels)
        if self.use_regulariser:
            loss = loss + self.tau * self.centre_regulariser()
        return loss

    def parameter_diagnostics(self, detailed=False):
        # Every centre of every class; the closest pair is usually two centres of one class.
        return vector_statistics(self.centers.t(), "proxy", detailed)

    def centre_regulariser(self) -> torch.Tensor:
        """R, as pml's SparseCentersRegularizer computes it (2·cos clamped to ≤ 2, and the
        smallest positive float added under the square root), from the within-class blocks."""
        num_classes, k = self.num_classes, self.centers_per_class
        centres = F.normalize(self.centers.t(), dim=1).reshape(num_classes, k, -1)    # [C, K, D]
        cos = centres @ centres.transpose(1, 2)                                        # [C, K, K]
        upper = torch.triu_indices(k, k, offset=1, device=cos.device)                 # k < k'
        pair_cos = cos[:, upper[0], upper[1]]
        tiny = torch.finfo(cos.dtype).tiny
        return torch.sqrt(2.0 + tiny - torch.clamp(2.0 * pair_cos, max=2)).sum() / (num_classes * k * (k - 1))
