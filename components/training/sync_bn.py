"""BatchNorm with statistics over the global batch, on CPU (gloo) as well as GPU.

PyTorch's `nn.SyncBatchNorm` refuses CPU modules under DDP, but without synchronised
statistics N CPU workers would normalise each half-batch on its own and no longer learn
what one worker learns on the global batch. `GlobalBatchNorm` sums per-channel counts, sums
and sums of squares over all workers with a differentiable all-reduce. (As with the
embedding all-gather, every worker back-propagates the loss of the whole global batch, and
DDP's gradient average turns the W-fold sum back into the single-worker gradient.)
On GPU, `convert_batchnorm` uses `nn.SyncBatchNorm` (NCCL kernels) instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from components.training.collectives import differentiable_all_reduce


class GlobalBatchNorm(_BatchNorm):
    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...] input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        local_count = torch.tensor([x.numel() / x.size(1)], dtype=x.dtype, device=x.device)
        stats = differentiable_all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), local_count]))
        channels = x.size(1)
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:2 * channels] / count - mean * mean).clamp(min=0)  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` synchronised across workers (SyncBatchNorm on GPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace(module)


def _replace(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        synced = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        with torch.no_grad():
            if module.affine:
                synced.weight.copy_(module.weight)
                synced.bias.copy_(module.bias)
            if module.track_running_stats:
                synced.running_mean.copy_(module.running_mean)
                synced.running_var.copy_(module.running_var)
                synced.num_batches_tracked.copy_(module.num_batches_tracked)
        synced.weight.requires_grad_(module.weight.requires_grad) if module.affine else None
        synced.bias.requires_grad_(module.bias.requires_grad) if module.affine else None
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _replace(child))
    return module
