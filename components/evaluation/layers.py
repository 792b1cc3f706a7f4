"""The same retrieval metrics for several feature taps side by side.

The layer before the embedding often generalises better to unseen classes, so a model is
evaluated at several taps (e.g. 'pool', 'embedding') over the same labels and protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.evaluation.retrieval import retrieval_metrics


def evaluate_layers(features: Mapping[str, Any], labels: Any, **options: Any) -> dict[str, dict[str, Any]]:
    """{tap name: retrieval_metrics(features[name], labels, **options)}, in the input's order.

    Every tap must have one row per label; options (ks, masks, chunk_size, device, ...) are
    passed to `retrieval_metrics` unchanged.
    """
    if not isinstance(features, Mapping):
        raise TypeError(f"features must be a mapping of tap name -> (N, D) array, got {type(features).__name__}")
    if not features:
        raise ValueError("features is empty: give at least one tap name -> (N, D) array")
    results: dict[str, dict[str, Any]] = {}
    for name, values in features.items():
        if not isinstance(name, str):
            raise TypeError(f"feature tap names must be strings, got {name!r}")
        try:
            results[name] = retrieval_metrics(values, labels, **options)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"feature tap {name!r}: {exc}") from exc
    return results
