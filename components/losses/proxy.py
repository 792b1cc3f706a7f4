"""Proxy losses: Proxy-NCA and Proxy-Anchor, one learnable proxy per class.

The maths are plain functions of (embeddings, labels, proxies) because the hierarchical proxy
loss needs them on proxies that are not parameters (coarse proxies are means of fine ones).
pml's ProxyNCALoss / ProxyAnchorLoss own their proxies as parameters and cannot take others,
and pml's ProxyNCALoss is also numerically wrong at the scales used in practice: it computes
``-log(Σ softmax · same_class)`` and then *drops* the samples where that probability underflows
to 0, i.e. the worst-classified samples silently vanish from the loss (at scale 32 in float32,
a sample sitting on another class's proxy is dropped). Here it is ``-log_softmax``. The tests
check both functions against loop references and against pml's classes where pml is right.

Proxies usually learn with a larger learning rate than the network (Kim et al. use 100×);
that is the optimiser's business: the proxies are ``loss.proxies``.
Diagnostics (computed when asked): ``proxy_norm_mean``, ``proxy_norm_min``,
``proxy_cosine_mean`` and ``proxy_cosine_max`` (see ``base.vector_statistics``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ParametricLoss, check_positive_float, vector_statistics


def log_one_plus_sum_exp(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + Σ_{mask} exp(x))`` along ``dim``; 0 where the mask is empty.

    Appending a 0 term before logsumexp keeps it finite (and its gradient free of NaN) even
    when every entry is masked out.
    """
    x = x.masked_fill(~mask, float("-inf"))
    zero_shape = list(x.shape)
    zero_shape[dim] = 1
    return torch.logsumexp(torch.cat([x, x.new_zeros(zero_shape)], dim=dim), dim=dim)


def proxy_anchor_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, alpha: float = 32.0, margin: float = 0.1
) -> torch.Tensor:
    """Proxy-Anchor (Kim et al. 2020), eq. 4, cosine similarity s:

    ``1/|P⁺| Σ_{p∈P⁺} log(1 + Σ_{x∈X⁺_p} exp(-α(s(x,p) - δ)))
    + 1/|P| Σ_{p∈P} log(1 + Σ_{x∈X⁻_p} exp(α(s(x,p) + δ)))``,
    P⁺ the proxies with a positive sample in the batch, P all proxies, δ the margin.
    """
    cos = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).t()       # [B, C]
    positive = F.one_hot(labels, len(proxies)).bool()
    pos_terms = log_one_plus_sum_exp(-alpha * (cos - margin), positive, dim=0)    # [C]
    neg_terms = log_one_plus_sum_exp(alpha * (cos + margin), ~positive, dim=0)    # [C]
    num_with_positives = positive.any(dim=0).sum().clamp(min=1)
    return pos_terms.sum() / num_with_positives + neg_terms.sum() / len(proxies)


def proxy_nca_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, scale: float = 9.0
) -> torch.Tensor:
    """Proxy-NCA (Movshovitz-Attias et al. 2017) with the temperature of Proxy-NCA++
    (Teh et al. 2020): ``-log softmax_c(-scale · ‖x̂ - p̂_c‖²)[y]``, averaged over the batch,
    with L2-normalised embeddings x̂ and proxies p̂. The softmax includes the positive proxy
    (Proxy-NCA++, and pml), which keeps the loss non-negative.
    """
    x, p = F.normalize(embeddings, dim=1), F.normalize(proxies, dim=1)
    squared_distances = (2.0 - 2.0 * (x @ p.t())).clamp(min=0.0)  # exact for unit vectors
    return F.cross_entropy(-scale * squared_distances, labels)


class ProxyAnchorLoss(ParametricLoss):
    def __init__(self, num_classes: int, embedding_dim: int, alpha: float = 32.0, margin: float = 0.1):
        super().__init__(num_classes, embedding_dim)
        self.alpha = check_positive_float("alpha", alpha)
        self.margin = check_positive_float("margin", margin, allow_zero=True)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        init_proxy_anchor_proxies(self.proxies)

    def compute_loss(self, embeddings, labels):
        return proxy_anchor_loss(embeddings, labels, self.proxies, self.alpha, self.margin)

    def parameter_diagnostics(self, detailed=False):
        return vector_statistics(self.proxies, "proxy", detailed)


class ProxyNCALoss(ParametricLoss):
    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 9.0):
        super().__init__(num_classes, embedding_dim)
        self.scale = check_positive_float("scale", scale)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.proxies)

    def compute_loss(self, embeddings, labels):
        return proxy_nca_loss(embeddings, labels, self.proxies, self.scale)

    def parameter_diagnostics(self, detailed=False):
        return vector_statistics(self.proxies, "proxy", detailed)


def init_proxy_anchor_proxies(proxies: torch.Tensor) -> None:
    # As the Proxy-Anchor authors' code (and pml) initialise them.
    nn.init.kaiming_normal_(proxies, mode="fan_out")
