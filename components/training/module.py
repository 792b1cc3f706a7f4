"""The model and its loss as one module, so DDP keeps both in sync.

Proxies and classifier weights live in the loss; wrapping model + loss in one module means
DDP all-reduces their gradients too, so every worker holds identical loss parameters.

Pair and triplet losses mine over the *global* batch: embeddings are all-gathered with a
differentiable collective before the loss. Each rank then computes the loss of the whole
global batch; the all-gather's backward sums every rank's gradient into the rank that
owns the embedding (W times the true gradient), and DDP's average divides by W again: the
parameter gradients equal those of one worker on the same global batch.

Mixed precision: only the network runs under autocast (`autocast_dtype`: bfloat16 on GPU, and on
the CPU with `train.amp_cpu`).
The loss (and its proxies / classifier) runs in float32 *outside* autocast: a `.float()`
inside an autocast region does not help, since autocast re-casts the loss's matmuls to
bfloat16, and Proxy-Anchor's α=32 exponentials turn that rounding into percent-level
gradient errors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from components.training.collectives import differentiable_all_gather


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' embeddings (with gradient) and labels, in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, labels
    gathered = torch.cat(differentiable_all_gather(embeddings), dim=0)
    label_parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_parts, labels.contiguous())
    return gathered, torch.cat(label_parts, dim=0)


class TrainModule(nn.Module):
    def __init__(self, model: nn.Module, loss: nn.Module, gather: bool = True, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.loss, self.gather, self.autocast_dtype = model, loss, gather, autocast_dtype

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        device_type = images.device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            embeddings = self.model(images)
        with torch.autocast(device_type, enabled=False):
            embeddings = embeddings.float()
            if self.gather:
                embeddings, labels = gather_batch(embeddings, labels)
            return self.loss(embeddings, labels)
