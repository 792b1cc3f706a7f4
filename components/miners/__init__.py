"""Miners: which pairs or triplets of a batch a pair or triplet loss is computed over.

    miner = build_miner("batch_hard")                  # or "semi_hard", {"name": ..., "params": ...}
    anchors, positives, negatives = miner(embeddings, labels)
    loss = build_loss("contrastive", miner="batch_hard")   # any pair/triplet loss takes one

As in pytorch-metric-learning (pml), miners are separate from losses so that any miner can be
combined with any pair or triplet loss. A miner returns pml's index tuples: triplets
``(anchor, positive, negative)`` (batch_all, batch_hard, semi_hard) or pairs
``(anchor1, positive, anchor2, negative)`` (multi_similarity); ``miner.output`` says which, and
the losses convert one form into the other (``as_triplets``, ``pair_masks``).

Adding a miner: one small file with a :class:`BaseMiner` subclass (write ``mine`` on a [B, B]
dissimilarity matrix), and its line in ``MINERS``. This package may import torch and pml's
distances only; the losses import it, never the other way round.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from .base import DISTANCES, PAIRS, TRIPLETS, BaseMiner, as_triplets, label_masks, pair_masks, triplets_of_pairs
from .batch_all import BatchAllMiner
from .batch_hard import BatchHardMiner
from .multi_similarity import MultiSimilarityMiner
from .semi_hard import SemiHardMiner

MINERS: dict[str, type[BaseMiner]] = {
    "batch_all": BatchAllMiner,
    "batch_hard": BatchHardMiner,
    "semi_hard": SemiHardMiner,
    "multi_similarity": MultiSimilarityMiner,
}


def available_miners() -> list[str]:
    return list(MINERS)


def miner_class(name: str) -> type[BaseMiner]:
    if name not in MINERS:
        raise ValueError(f"unknown miner {name!r}; available: {available_miners()}")
    return MINERS[name]


def miner_params(name: str) -> dict[str, object]:
    """The parameters ``build_miner(name, ...)`` accepts, with their defaults."""
    signature = inspect.signature(miner_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_miner(name: str, **params) -> BaseMiner:
    """Unknown name → ValueError listing the valid ones; unknown parameter → TypeError
    listing the accepted ones; bad value → ValueError naming it."""
    cls = miner_class(name)
    unknown = sorted(set(params) - set(miner_params(name)))
    if unknown:
        raise TypeError(f"miner {name!r}: unknown parameter(s) {unknown}; accepted: {sorted(miner_params(name))}")
    return cls(**params)


def _parse_spec(spec, what: str) -> tuple[str, dict] | None:
    """(name, params) of a miner spec: None, a name, or a mapping {name: ..., params: {...}}."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        extra = sorted(set(spec) - {"name", "params"})
        if "name" not in spec or extra:
            raise ValueError(
                f"{what}: a miner is a name or a mapping with keys 'name' and 'params' "
                f"(e.g. {{name: batch_all, params: {{margin: 0.2}}}}), got {dict(spec)!r}"
            )
        params = spec.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError(f"{what}: 'params' must be a mapping, got {params!r}")
        return spec["name"], dict(params)
    raise ValueError(f"{what}: expected a miner name, a {{name, params}} mapping or None, got {spec!r}")


def check_miner_spec(spec, what: str = "miner") -> None:
    """Check a miner spec's name and parameter names without building it (ValueError)."""
    if isinstance(spec, BaseMiner):
        return
    parsed = _parse_spec(spec, what)
    if parsed is None:
        return
    name, params = parsed
    if name not in MINERS:
        raise ValueError(f"{what}: unknown miner {name!r}; available: {available_miners()}")
    unknown = sorted(set(params) - set(miner_params(name)))
    if unknown:
        raise ValueError(f"{what}: miner {name!r} has no parameter(s) {unknown}; its parameters: {sorted(miner_params(name))}")


def miner_from_spec(spec, what: str = "miner") -> BaseMiner | None:
    """A miner from a spec (None, a name, a {name, params} mapping, or a miner itself)."""
    if spec is None or isinstance(spec, BaseMiner):
        return spec
    check_miner_spec(spec, what)
    parsed = _parse_spec(spec, what)
    if parsed is None:
        return None
    name, params = parsed
    try:
        return build_miner(name, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from None


__all__ = [
    "DISTANCES",
    "MINERS",
    "PAIRS",
    "TRIPLETS",
    "BaseMiner",
    "as_triplets",
    "available_miners",
    "build_miner",
    "check_miner_spec",
    "label_masks",
    "miner_class",
    "miner_from_spec",
    "miner_params",
    "pair_masks",
    "triplets_of_pairs",
]
