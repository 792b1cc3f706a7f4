"""Top-1 classification accuracy, for losses that train a classifier (CE, cosine, WARP)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_tensor(values: Any, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach()
    if isinstance(values, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(values))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(values).__name__}")


def classification_accuracy(logits: Any, labels: Any) -> float:
    """Fraction of rows whose arg-max logit is the label (ties: the first maximal class).

    logits: (N, C) scores; labels: (N,) integer class indices in [0, C).
    """
    scores = _as_tensor(logits, "logits")
    targets = _as_tensor(labels, "labels")
    if scores.ndim != 2:
        raise ValueError(f"logits must be 2-d (items x classes), got shape {tuple(scores.shape)}")
    if targets.ndim != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels must be 1-d with one entry per row of logits ({scores.shape[0]}), "
            f"got shape {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"labels must be integer class indices, got dtype {targets.dtype}")
    if scores.shape[0] == 0:
        raise ValueError("logits is empty: accuracy of zero items is undefined")
    if int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    predicted = scores.argmax(dim=1).to(targets.device)
    return float((predicted == targets).to(torch.float64).mean())
