"""The class-score layer shared by every classifier loss (cross_entropy, cosine_softmax, warp).

All three keep their layer under the attribute ``classifier`` with the same parameter names,
so their state_dicts have the same keys and WARP can fine-tune from a trained softmax model
with ``warp.load_state_dict(ce.state_dict())`` (or :func:`transfer_classifier`, which checks
the shapes first and says what differs).

* linear: ``logits = f · Wᵀ + b``                       keys: classifier.weight, classifier.bias
* cosine: ``logits = s · cos(f, w_c)``                  keys: classifier.weight, classifier.scale
  The scale s is a parameter when learnt, a buffer when fixed: the key is the same either way,
  so a fixed-scale model loads into a learnt-scale one and back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import check_positive_float, check_positive_int


class Classifier(nn.Module):
    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        cosine: bool = False,
        scale: float = 16.0,
        learn_scale: bool = False,
    ):
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        if not isinstance(cosine, bool):
            raise ValueError(f"cosine must be a bool, got {cosine!r}")
        if not isinstance(learn_scale, bool):
            raise ValueError(f"learn_scale must be a bool, got {learn_scale!r}")
        self.cosine = cosine
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        if cosine:
            nn.init.normal_(self.weight)  # only the direction matters
            scale_tensor = torch.tensor(check_positive_float("scale", scale))
            if learn_scale:
                self.scale = nn.Parameter(scale_tensor)
            else:
                self.register_buffer("scale", scale_tensor)
        else:
            # nn.Linear's initialisation, so a linear classifier starts like torch's.
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(embedding_dim)
            self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C]."""
        if self.cosine:
            cos = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).t()
            return self.scale * cos
        return F.linear(embeddings, self.weight, self.bias)

    def extra_repr(self) -> str:
        kind = "cosine" if self.cosine else "linear"
        return f"{kind}, num_classes={self.num_classes}, embedding_dim={self.embedding_dim}"


def transfer_classifier(source: nn.Module, target: nn.Module) -> None:
    """Copy the classifier of ``source`` (e.g. a trained cross_entropy loss) into ``target``
    (e.g. a warp loss), in place.

    Raises ValueError naming what differs (kind of layer, number of classes, embedding width)
    instead of torch's generic size-mismatch RuntimeError.
    """
    for role, module in (("source", source), ("target", target)):
        if not isinstance(getattr(module, "classifier", None), Classifier):
            raise ValueError(
                f"{role} ({type(module).__name__}) has no classifier layer; only the "
                "classifier losses cross_entropy, cosine_softmax and warp can be transferred"
            )
    src, dst = source.classifier, target.classifier
    if src.cosine != dst.cosine:
        kinds = {True: "cosine", False: "linear"}
        raise ValueError(
            f"classifier kind differs: source is {kinds[src.cosine]}, target is "
            f"{kinds[dst.cosine]} (build warp with cosine={src.cosine})"
        )
    src_state, dst_state = src.state_dict(), dst.state_dict()
    for key, tensor in src_state.items():
        if dst_state[key].shape != tensor.shape:
            raise ValueError(
                f"classifier.{key} has shape {tuple(tensor.shape)} in the source but "
                f"{tuple(dst_state[key].shape)} in the target (num_classes {src.num_classes} vs "
                f"{dst.num_classes}, embedding_dim {src.embedding_dim} vs {dst.embedding_dim})"
            )
    dst.load_state_dict(src_state)
