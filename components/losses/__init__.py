"""Every loss behind one registry.

    loss = build_loss("proxy_anchor", num_classes=60, embedding_dim=256, alpha=32, margin=0.1)
    value = loss(embeddings, labels)            # scalar
    if loss.has_parameters:                     # proxies / classifier weights
        optimiser.add_param_group({"params": loss.parameters(), "lr": 100 * lr})

Losses that own per-class tensors (``loss_class(name).has_parameters``) also need
``num_classes`` and ``embedding_dim``; the other parameters and their defaults are in
``conf/loss/<name>.yaml``. ``log_ratio`` takes float labels [B] or [B, A]; every other loss
takes class indices [B]. The classifier losses (cross_entropy, cosine_softmax, warp) have a
``logits(embeddings)`` method and share state_dict keys (see ``transfer_classifier``).
"""

from __future__ import annotations

import inspect

from torch import nn

from .base import MetricLoss
from .classifier import Classifier, transfer_classifier
from .hierarchical import HierarchicalProxyLoss
from .log_ratio import LogRatioLoss
from .pair import ContrastiveLoss, LiftedStructureLoss, MultiSimilarityLoss, NPairLoss
from .proxy import ProxyAnchorLoss, ProxyNCALoss
from .smooth_ap import SmoothAPLoss
from .soft_triple import SoftTripleLoss
from .softmax import CosineSoftmaxLoss, CrossEntropyLoss
from .triplet import TripletLoss
from .warp import WarpLoss

LOSSES: dict[str, type[MetricLoss]] = {
    "cross_entropy": CrossEntropyLoss,
    "cosine_softmax": CosineSoftmaxLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "npair": NPairLoss,
    "lifted": LiftedStructureLoss,
    "multi_similarity": MultiSimilarityLoss,
    "proxy_nca": ProxyNCALoss,
    "proxy_anchor": ProxyAnchorLoss,
    "soft_triple": SoftTripleLoss,
    "warp": WarpLoss,
    "smooth_ap": SmoothAPLoss,
    "hierarchical_proxy": HierarchicalProxyLoss,
    "log_ratio": LogRatioLoss,
}

#: Constructor arguments that come from the data and the model, not from conf/loss/*.yaml.
SHAPE_PARAMS = ("num_classes", "embedding_dim")


def available_losses() -> list[str]:
    return list(LOSSES)


def loss_class(name: str) -> type[MetricLoss]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {available_losses()}")
    return LOSSES[name]


def loss_params(name: str) -> dict[str, object]:
    """The parameters ``build_loss(name, ...)`` accepts, with their defaults
    (``inspect.Parameter.empty`` for the required ones)."""
    signature = inspect.signature(loss_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_loss(name: str, **params) -> nn.Module:
    """Build the loss registered as ``name``.

    Unknown name → ValueError listing the valid names; unknown or missing parameter →
    TypeError naming it and listing the accepted ones; bad value → ValueError naming it.
    """
    cls = loss_class(name)
    accepted = loss_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"loss {name!r}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")
    missing = [k for k, default in accepted.items() if default is inspect.Parameter.empty and k not in params]
    if missing:
        raise TypeError(f"loss {name!r}: missing required parameter(s) {missing}; accepted: {sorted(accepted)}")
    return cls(**params)


__all__ = [
    "LOSSES",
    "SHAPE_PARAMS",
    "Classifier",
    "MetricLoss",
    "available_losses",
    "build_loss",
    "loss_class",
    "loss_params",
    "transfer_classifier",
]
