"""Input checks and conversions shared by the evaluation functions.

Callers hand us numpy arrays, torch tensors (CPU or GPU) or plain lists; everything is turned
into torch tensors here so the metric code has one path. Labels may be any hashable values
(ints, strings): they are encoded to dense int64 codes, and the original values are kept so
per-class results can be reported under the caller's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def as_float_matrix(values: Any, name: str) -> torch.Tensor:
    """A 2-d float32 tensor (on the input's device if it is a tensor) with finite entries."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    elif isinstance(values, (np.ndarray, list, tuple)):
        array = np.asarray(values)
        if array.dtype == object or not np.issubdtype(array.dtype, np.number):
            raise TypeError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(values).__name__}")
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-d (items x dims), got shape {tuple(tensor.shape)}")
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor


@dataclass(frozen=True)
class EncodedLabels:
    codes: np.ndarray          # (N,) int64, dense codes 0..C-1
    classes: np.ndarray        # (C,) the original label values, codes index into it

    @property
    def num_classes(self) -> int:
        return int(self.classes.shape[0])


def encode_labels(labels: Any, num_items: int, name: str = "labels") -> EncodedLabels:
    """Dense int64 codes for any 1-d label array (ints, strings, torch tensor)."""
    if isinstance(labels, torch.Tensor):
        array = labels.detach().cpu().numpy()
    elif isinstance(labels, (np.ndarray, list, tuple)):
        array = np.asarray(labels)
    else:
        raise TypeError(f"{name} must be a 1-d numpy array, torch tensor or list, got {type(labels).__name__}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {array.shape}")
    if array.shape[0] != num_items:
        raise ValueError(f"{name} has {array.shape[0]} entries but there are {num_items} embeddings")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    classes, codes = np.unique(array, return_inverse=True)
    return EncodedLabels(codes=codes.astype(np.int64).reshape(-1), classes=classes)


def as_bool_mask(mask: Any, num_items: int, name: str) -> np.ndarray:
    """A boolean numpy mask of length `num_items`; None means every item."""
    if mask is None:
        return np.ones(num_items, dtype=bool)
    if isinstance(mask, torch.Tensor):
        array = mask.detach().cpu().numpy()
    elif isinstance(mask, (np.ndarray, list, tuple)):
        array = np.asarray(mask)
    else:
        raise TypeError(f"{name} must be a boolean array or tensor, got {type(mask).__name__}")
    if array.dtype != bool:
        raise TypeError(f"{name} must have dtype bool (one flag per item), got {array.dtype}")
    if array.shape != (num_items,):
        raise ValueError(f"{name} must have shape ({num_items},), got {array.shape}")
    return array


def check_ks(ks: Any) -> tuple[int, ...]:
    """Recall@K cut-offs as a sorted tuple of distinct positive ints."""
    try:
        values = tuple(int(k) for k in ks)
    except TypeError as exc:
        raise TypeError(f"ks must be an iterable of positive ints, got {ks!r}") from exc
    for k, raw in zip(values, ks):
        if k < 1 or k != raw:
            raise ValueError(f"ks must be positive ints, got {raw!r} in {ks!r}")
    return tuple(sorted(set(values)))


def resolve_device(device: Any, embeddings: Any) -> torch.device:
    """None: the input tensor's device (CPU for numpy). 'auto': CUDA when available."""
    if device is None:
        return embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be None, 'auto' or a torch device name, got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available")
    return resolved
