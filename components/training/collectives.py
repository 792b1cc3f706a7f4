"""Collectives that back-propagate: all-gather for global-batch mining, all-reduce for BatchNorm.

`torch.distributed.nn.functional` is the public, documented autograd-aware API; PyTorch now
marks it deprecated in favour of private functional collectives, so its FutureWarning is
silenced here, at the call, rather than for the whole process.
"""

from __future__ import annotations

import warnings

import torch


def differentiable_all_gather(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_gather(tensor)


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(tensor)
