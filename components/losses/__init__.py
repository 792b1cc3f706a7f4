"""Every loss behind one registry.

    loss = build_loss("proxy_anchor", num_classes=60, embedding_dim=256, alpha=32, margin=0.1)
    value = loss(embeddings, labels)            # scalar
    loss.diagnostics()                          # {"proxy_norm_mean": 1.02, ...} after every step
    loss.diagnostics(detailed=True)             # + O(C²·D) ones (proxy_cosine_max), once an epoch
    if loss.has_parameters:                     # proxies / classifier weights
        optimiser.add_param_group({"params": loss.parameters(), "lr": 100 * lr})

Losses that own per-class tensors (``loss_class(name).has_parameters``) also need
``num_classes`` and ``embedding_dim``; the other parameters and their defaults are in
``conf/loss/<name>.yaml``. ``log_ratio`` takes float labels [B] or [B, A]; every other loss
takes class indices [B]. The classifier losses (cross_entropy, cosine_softmax, warp) have a
``logits(embeddings)`` method and share state_dict keys (see ``transfer_classifier``).

Ask the loss, not its name: :func:`loss_requirements` says which labels it takes, whether it
has parameters for the optimiser, whether it uses the dataset's superclasses, whether it has
logits and whether it takes a miner; :func:`loss_arguments` adds what comes from the data.
:func:`check_loss_params` checks a config's parameter names without building the loss (some
losses do real work when built: hierarchical_proxy runs k-means).

Pair and triplet losses (triplet, contrastive, lifted, multi_similarity) take ``miner``: a
name from ``components.miners`` (batch_all, batch_hard, semi_hard, multi_similarity), a
``{name: ..., params: {...}}`` mapping, or null (every pair / triplet). Every loss returns its
scalar and reports ``diagnostics()`` about the last forward (see ``base``): short, stable names
such as ``active_triplet_fraction``, ``mined_pairs``, ``proxy_norm_mean``, ``batch_accuracy``.

What this package owns: the losses' maths, their parameter checks, what each declares about
itself, and their diagnostics (and, in ``config.py``, the schema of the config's ``loss``
section). It may import torch, numpy, scikit-learn (lazily), pytorch-metric-learning, pydantic
(the schema) and ``components.miners``; never ``components.training``,
``components.evaluation`` or ``pipelines`` (they import it). No config file is read here.

Adding a loss touches three places outside the tests: its module here (a ``MetricLoss``
subclass: class attributes for what it needs, ``compute_loss`` for the maths, ``record`` /
``parameter_diagnostics`` for what it reports), its line in ``LOSSES`` below, and
``conf/loss/<name>.yaml`` (``name`` and every constructor parameter with its default). No code
outside this package branches on a loss's name: the training loop, the config check, the
sweeps and bench/bench_losses.py ask the registry and the class. In the tests, the ones that
run every registered loss (registry, training, diagnostics, capabilities) pick it up from
``LOSSES``;
tests/losses/test_loss_registry.py's ``NAMES`` lists the losses on purpose (a guard that none
disappears) and gets one word, and its reference test against a slow loop is the one to write.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import nn

from .base import CLASS_LABELS, CONTINUOUS_LABELS, MetricLoss
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


def check_loss_params(name: str, params: Mapping | None) -> None:
    """Check a config's parameter names for loss ``name`` without building it.

    Unknown name → ValueError listing the losses; unknown parameter → ValueError listing the
    valid ones; ``num_classes``/``embedding_dim`` in the config → ValueError (they come from
    the data and the model); nested names (a miner spec, hierarchical_proxy's base_params)
    are checked too. Values are checked when the loss is built.
    """
    cls = loss_class(name)
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"loss {name!r}: params must be a mapping of parameter names to values, got {params!r}")
    accepted = {k: v for k, v in loss_params(name).items() if k not in SHAPE_PARAMS}
    shape = sorted(set(params) & set(SHAPE_PARAMS))
    if shape:
        raise ValueError(
            f"loss {name!r}: {shape} must not be set in loss.params: num_classes comes from the "
            "data and embedding_dim from model.embedding_dim"
        )
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown parameter(s) {unknown}; valid parameters: {sorted(accepted)}")
    missing = [k for k, default in accepted.items() if default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ValueError(f"loss {name!r}: missing required parameter(s) {missing}")
    cls.check_param_names(params, f"loss {name!r} params")


def loss_requirements(name: str) -> dict[str, object]:
    """What loss ``name`` needs and offers, from its class (nothing is built):

    ``label_kind`` (``CLASS_LABELS`` or ``CONTINUOUS_LABELS``), ``has_parameters`` (tensors
    for the optimiser; needs num_classes and embedding_dim), ``needs_superclasses`` (uses the
    dataset's superclasses), ``has_logits`` (class scores for accuracy, transfer between
    classifier losses) and ``accepts_miner`` (takes a ``miner`` parameter).
    """
    cls = loss_class(name)
    return {
        "label_kind": cls.label_kind,
        "has_parameters": cls.has_parameters,
        "needs_superclasses": cls.needs_superclasses,
        "has_logits": callable(getattr(cls, "logits", None)),
        "accepts_miner": "miner" in loss_params(name),
    }


def loss_arguments(
    name: str,
    params: Mapping | None,
    *,
    num_classes: int,
    embedding_dim: int,
    superclass_of: list[int] | None = None,
) -> dict:
    """``build_loss(name, **loss_arguments(...))``: the config's params plus what comes from
    the data (see ``MetricLoss.data_arguments``; superclasses only reach losses that use them)."""
    return loss_class(name).data_arguments(
        params or {}, num_classes=num_classes, embedding_dim=embedding_dim, superclass_of=superclass_of
    )


__all__ = [
    "CLASS_LABELS",
    "CONTINUOUS_LABELS",
    "LOSSES",
    "SHAPE_PARAMS",
    "Classifier",
    "MetricLoss",
    "available_losses",
    "build_loss",
    "check_loss_params",
    "loss_arguments",
    "loss_class",
    "loss_params",
    "loss_requirements",
    "transfer_classifier",
]
