"""The embedding model: backbone + embedding head, with named feature taps.

``forward(x)`` returns the (normalised) embedding that training optimises. ``extract(x, taps)``
returns several representations from one forward pass so that retrieval can be measured per
layer: the layer before the embedding often generalises better to unseen classes than the
embedding itself. Taps:

* ``embedding``     - the head output (normalised x scale unless normalize=False)
* ``embedding_raw`` - the head output before normalisation
* ``penultimate``   - the pooled backbone output the head reads
* ``stage1`` .. ``stage4`` - backbone stage maps, global-average-pooled to ``[B, channels]``

Inputs are float ``[B, C, H, W]`` as produced by :mod:`components.models.transforms`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from components.models.backbones import POOLED, Backbone, build_backbone, stem_for_image_size
from components.models.heads import EmbeddingHead

TAP_EMBEDDING = "embedding"
TAP_EMBEDDING_RAW = "embedding_raw"
TAP_PENULTIMATE = "penultimate"
DEFAULT_TAPS = (TAP_EMBEDDING, TAP_PENULTIMATE)


class EmbeddingModel(nn.Module):
    """Backbone -> EmbeddingHead. Class scores, where a loss trains them, live in the loss."""

    def __init__(self, backbone: Backbone, head: EmbeddingHead) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"backbone must be a components.models Backbone, got {type(backbone).__name__}")
        if not isinstance(head, EmbeddingHead):
            raise TypeError(f"head must be an EmbeddingHead, got {type(head).__name__}")
        if head.in_features != backbone.out_features:
            raise ValueError(
                f"head.in_features={head.in_features} does not match backbone.out_features={backbone.out_features}"
            )
        self.backbone = backbone
        self.head = head
        # The build_model arguments, so a checkpoint can rebuild the architecture; {} otherwise.
        self.config: dict[str, Any] = {}

    @property
    def embedding_dim(self) -> int:
        return self.head.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def extract(self, x: torch.Tensor, taps: str | Sequence[str] = DEFAULT_TAPS) -> dict[str, torch.Tensor]:
        """Return ``{tap: [B, dim]}`` for each requested tap, in the requested order.

        One backbone pass serves all taps; the head runs only if a head tap is requested.
        Gradients are not disabled here: wrap the call in ``torch.no_grad()`` for evaluation.
        """
        requested = (taps,) if isinstance(taps, str) else tuple(taps)
        valid = available_taps(self)
        unknown = [tap for tap in requested if tap not in valid]
        if unknown or not requested:
            raise ValueError(f"unknown or no taps {unknown or list(requested)!r}; valid: {', '.join(valid)}")

        features = self.backbone.forward_features(x)
        outputs: dict[str, torch.Tensor] = {}
        for tap in requested:
            if tap == TAP_PENULTIMATE:
                outputs[tap] = features[POOLED]
            elif tap in self.backbone.stage_channels:
                outputs[tap] = torch.flatten(F.adaptive_avg_pool2d(features[tap], 1), 1)
        if any(tap in (TAP_EMBEDDING, TAP_EMBEDDING_RAW) for tap in requested):
            raw = self.head.project(features[POOLED])
            outputs[TAP_EMBEDDING_RAW] = raw
            outputs[TAP_EMBEDDING] = self.head.finalize(raw)
        return {tap: outputs[tap] for tap in requested}


def available_taps(model: EmbeddingModel) -> tuple[str, ...]:
    """The tap names ``model.extract`` accepts, head taps first, then backbone stages."""
    return (TAP_EMBEDDING, TAP_EMBEDDING_RAW, TAP_PENULTIMATE, *reversed(tuple(model.backbone.stage_channels)))


def build_model(
    backbone: str = "small_cnn",
    embedding_dim: int = 256,
    in_channels: int = 1,
    image_size: int = 32,
    batchnorm: bool = True,
    normalize: bool = True,
    scale: float = 1.0,
    weights: str | os.PathLike | None = None,
    *,
    stem: str | None = None,
) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel`; the one entry point used by training and export.

    The backbone stem follows ``image_size`` (:func:`stem_for_image_size`) unless ``stem`` is
    given. ``weights`` is a local backbone state_dict file (never downloaded).
    """
    size_stem = stem_for_image_size(image_size)  # also validates image_size
    chosen_stem = stem if stem is not None else size_stem
    body = build_backbone(backbone, in_channels=in_channels, weights=weights, stem=chosen_stem)
    head = EmbeddingHead(body.out_features, dim=embedding_dim, batchnorm=batchnorm, normalize=normalize, scale=scale)
    model = EmbeddingModel(body, head)
    model.config = {
        "backbone": backbone,
        "embedding_dim": embedding_dim,
        "in_channels": in_channels,
        "image_size": image_size,
        "batchnorm": batchnorm,
        "normalize": normalize,
        "scale": scale,
        "stem": chosen_stem,
    }
    return model
