"""Optimiser with a separate learning rate for loss parameters, and a warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, loss: nn.Module, name: str, lr: float, weight_decay: float,
                    loss_lr_multiplier: float) -> torch.optim.Optimizer:
    """Proxies and classifier weights usually learn faster than the network (e.g. 100× for
    Proxy-Anchor), hence their own parameter group."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "name": "model"}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": lr * loss_lr_multiplier, "weight_decay": 0.0, "name": "loss"})
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"train.optimizer {name!r} is unknown; valid choices: ['adamw', 'sgd']")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warmup, then cosine decay to 1 % of the base rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
