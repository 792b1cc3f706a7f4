"""Base classes of every chipmatch loss.

The base class owns ``forward``, the input checks, what a loss declares about itself and its
diagnostics; a subclass only writes ``compute_loss`` (the maths). Every loss is called the same
way, ``loss(embeddings, labels)``, and returns a scalar tensor that stays connected to the
autograd graph even when a batch holds no usable pair (so ``loss.backward()`` never fails on an
unlucky batch).

What a loss declares (class attributes, so a caller asks the class, never its name):
``label_kind`` (class indices or continuous attributes), ``has_parameters`` (proxies or class
weights for the optimiser), ``needs_superclasses`` (it takes the dataset's superclasses when
given: see :meth:`MetricLoss.data_arguments`).

Diagnostics: ``loss.diagnostics()`` → ``{name: float}`` about the last forward (mined and
active pairs or triplets) and the loss's own tensors (proxy and class-weight statistics), for
the training loop to log. A subclass records per-forward values with
:meth:`MetricLoss.record` from tensors it has anyway (detached, no host sync in the step: the
floats are read only when ``diagnostics()`` is called) and computes tensor statistics on demand
in :meth:`MetricLoss.parameter_diagnostics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

CLASS_LABELS = "class"            # LongTensor [B] of class indices
CONTINUOUS_LABELS = "continuous"  # float [B] or [B, A] of continuous attributes


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_positive_float(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph (a batch without pairs must still allow backward())."""
    return embeddings.sum() * 0.0


class MetricLoss(nn.Module):
    """A loss called as ``loss(embeddings, labels)`` that returns a scalar.

    Subclasses set the class attributes below and implement :meth:`compute_loss`.
    """

    #: True when the loss owns trainable tensors (proxies, classifier weights) that must be
    #: handed to the optimiser together with the model.
    has_parameters: ClassVar[bool] = False
    #: ``CLASS_LABELS`` or ``CONTINUOUS_LABELS``.
    label_kind: ClassVar[str] = CLASS_LABELS
    #: True when the loss can use the dataset's superclasses (fine class → coarse class):
    #: :meth:`data_arguments` then passes them, unless the config chose its own hierarchy.
    needs_superclasses: ClassVar[bool] = False
    #: Set by losses that own per-class tensors; labels must then lie in [0, num_classes).
    num_classes: int | None = None
    #: Set by losses that own tensors of the embedding width.
    embedding_dim: int | None = None
    #: Per-forward diagnostics of the last batch (see :meth:`record`).
    _recorded: dict[str, torch.Tensor | float]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_embeddings(embeddings)
        if self.label_kind == CONTINUOUS_LABELS:
            self.check_continuous_labels(labels, len(embeddings))
        else:
            self.check_class_labels(labels, len(embeddings))
        self._recorded = {}  # nothing from an earlier batch survives this one
        return self.compute_loss(embeddings, labels)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- what the loss needs from the data and the config --------------------------------
    @classmethod
    def data_arguments(
        cls,
        params: Mapping,
        *,
        num_classes: int,
        embedding_dim: int,
        superclass_of: list[int] | None = None,
    ) -> dict:
        """The constructor arguments: the config's ``params`` plus what comes from the data
        (``num_classes`` and ``embedding_dim`` for losses with parameters). A loss with
        ``needs_superclasses`` overrides this to add the dataset's superclasses."""
        arguments = dict(params)
        if cls.has_parameters:
            arguments.update(num_classes=num_classes, embedding_dim=embedding_dim)
        return arguments

    @classmethod
    def check_param_names(cls, params: Mapping, what: str) -> None:
        """Check the names inside nested parameters (a miner spec, base-loss parameters)
        without building anything; ValueError naming the key. Top-level names are checked
        against the signature by ``components.losses.check_loss_params``."""

    # --- diagnostics ----------------------------------------------------------------------
    def record(self, **values) -> None:
        """Keep per-forward diagnostics: tensors (detached here) or plain numbers."""
        self._recorded = {
            **getattr(self, "_recorded", {}),
            **{k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()},
        }

    def parameter_diagnostics(self, detailed: bool = False) -> dict[str, torch.Tensor | float]:
        """Statistics of the loss's own tensors, computed when asked. Without ``detailed``
        they cost O(C·D) (cheaper than the loss's own B·C·D scores); ``detailed`` adds the
        O(C²·D) ones (closest pair of proxies)."""
        return {}

    def diagnostics(self, detailed: bool = False) -> dict[str, float]:
        """``{name: float}`` about the last forward and the loss's tensors; {} if none.

        Cheap enough to call after every step (one host transfer; O(C·D) for the tensor
        statistics); ``detailed=True`` adds statistics that cost O(C²·D), meant for once per
        epoch (``proxy_cosine_max``, ``weight_cosine_max``).
        """
        with torch.no_grad():
            values = {**getattr(self, "_recorded", {}), **self.parameter_diagnostics(detailed)}
            tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
            if tensors:  # one host transfer for all of them
                device = next(iter(tensors.values())).device
                stacked = torch.stack([t.to(device, torch.float64).reshape(()) for t in tensors.values()])
                values.update(zip(tensors, stacked.tolist()))
        return {k: float(v) for k, v in values.items()}

    # --- input checks (ValueError/TypeError naming what is wrong, never assert) ----------
    def check_embeddings(self, embeddings) -> None:
        name = type(self).__name__
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"{name}: embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.ndim != 2:
            raise ValueError(f"{name}: embeddings must have shape [B, D], got {tuple(embeddings.shape)}")
        if not embeddings.is_floating_point():
            raise TypeError(f"{name}: embeddings must be floating point, got {embeddings.dtype}")
        if self.embedding_dim is not None and embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{name}: embeddings have width {embeddings.shape[1]} but the loss was built "
                f"with embedding_dim={self.embedding_dim}"
            )

    def check_class_labels(self, labels, batch_size: int) -> None:
        name = type(self).__name__
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"{name}: labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.ndim != 1 or len(labels) != batch_size:
            raise ValueError(
                f"{name}: labels must have shape [B]=[{batch_size}], got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name}: labels must be integer class indices, got {labels.dtype}")
        if batch_size == 0:
            raise ValueError(f"{name}: the batch is empty")
        # One host sync per call; cheap next to a backward pass, and a silent out-of-range
        # label would otherwise index garbage (or crash a CUDA kernel with no message).
        low, high = torch.stack([labels.min(), labels.max()]).tolist()
        if low < 0:
            raise ValueError(f"{name}: labels must be >= 0, got {low}")
        if self.num_classes is not None and high >= self.num_classes:
            raise ValueError(
                f"{name}: label {high} is out of range for num_classes={self.num_classes}"
            )

    def check_continuous_labels(self, labels, batch_size: int) -> None:
        name = type(self).__name__
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"{name}: labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.ndim not in (1, 2) or len(labels) != batch_size:
            raise ValueError(
                f"{name}: labels must have shape [B] or [B, A] with B={batch_size}, "
                f"got {tuple(labels.shape)}"
            )
        if not labels.is_floating_point():
            raise TypeError(f"{name}: continuous labels must be floating point, got {labels.dtype}")


class ParametricLoss(MetricLoss):
    """A loss that owns per-class trainable tensors (proxies or classifier weights)."""

    has_parameters: ClassVar[bool] = True
    num_classes: int   # always set here (MetricLoss's is None for losses without class tensors)

    def __init__(self, num_classes: int, embedding_dim: int):
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)


def vector_statistics(
    vectors: torch.Tensor, prefix: str, detailed: bool = False, block: int = 4096
) -> dict[str, torch.Tensor]:
    """Norms and pairwise cosines of the rows of ``vectors`` [N, D] (proxies, class weights):
    ``<prefix>_norm_mean``, ``<prefix>_norm_min``, ``<prefix>_cosine_mean`` (over pairs i ≠ j),
    all O(N·D), and with ``detailed`` ``<prefix>_cosine_max`` (the two closest rows: proxies
    collapsing onto each other), O(N²·D).

    The mean needs no [N, N] matrix, ``Σ_{i≠j} cos_ij = ‖Σ_i v̂_i‖² - N``; the max is taken
    ``block`` rows at a time, so memory stays [block, N] for many classes.
    """
    with torch.no_grad():
        vectors = vectors.detach().float()
        norms = vectors.norm(dim=1)
        stats = {f"{prefix}_norm_mean": norms.mean(), f"{prefix}_norm_min": norms.min()}
        count = len(vectors)
        if count < 2:
            return stats
        unit = F.normalize(vectors, dim=1)
        stats[f"{prefix}_cosine_mean"] = (unit.sum(dim=0).pow(2).sum() - count) / (count * (count - 1))
        if not detailed:
            return stats
        best = []
        for start in range(0, count, block):
            cos = unit[start:start + block] @ unit.t()
            rows = torch.arange(start, min(start + block, count), device=cos.device)
            cos[rows - start, rows] = -2.0  # not a row with itself
            best.append(cos.max())
        stats[f"{prefix}_cosine_max"] = torch.stack(best).max()
        return stats
