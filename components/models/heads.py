"""Heads on top of a backbone's pooled features.

* :class:`EmbeddingHead` - linear projection to the embedding, optional BatchNorm1d, then L2
  normalisation times a scale. Retrieval ranks by dot products of normalised embeddings
  (squared distance = 2 - 2 * dot), so normalisation is on by default.

Class scores (the cosine-distance classifier layer among them) belong to the losses in
``components.losses``, which own their class weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Guards the division in L2 normalisation for an all-zero vector.
_NORM_EPS = 1e-12


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_positive_float(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


class EmbeddingHead(nn.Module):
    """``[B, in_features]`` -> ``[B, dim]`` embedding.

    ``batchnorm`` whitens the projection per dimension, which keeps the embedding from
    collapsing onto a few directions early in training; the linear bias is dropped then
    because BatchNorm's shift replaces it. ``scale`` multiplies the normalised embedding (its
    norm becomes ``scale``) and must stay 1.0 when ``normalize`` is False.
    """

    def __init__(
        self, in_features: int, dim: int = 256, batchnorm: bool = True, normalize: bool = True, scale: float = 1.0
    ) -> None:
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("dim", dim)
        _check_positive_float("scale", scale)
        if not normalize and scale != 1.0:
            raise ValueError(f"scale={scale!r} needs normalize=True: it sets the norm of normalised embeddings")
        self.in_features = in_features
        self.dim = dim
        self.normalize = bool(normalize)
        self.scale = float(scale)
        self.linear = nn.Linear(in_features, dim, bias=not batchnorm)
        self.batchnorm = nn.BatchNorm1d(dim) if batchnorm else None

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding before normalisation (``embedding_raw``)."""
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"EmbeddingHead expects features [B, {self.in_features}], got shape {tuple(features.shape)}"
            )
        raw = self.linear(features)
        return self.batchnorm(raw) if self.batchnorm is not None else raw

    def finalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalise (and scale) a raw embedding from :meth:`project`."""
        if not self.normalize:
            return raw
        return F.normalize(raw, p=2.0, dim=1, eps=_NORM_EPS) * self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.finalize(self.project(features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, dim={self.dim}, normalize={self.normalize}, scale={self.scale}"
