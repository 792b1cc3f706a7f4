"""Loading backbone weights from a local state_dict file (never from the network).

Accepted files (``torch.save`` output, read with ``weights_only=True``):

* a plain state_dict of the backbone, e.g. the torchvision ResNet files, whose ``fc.*`` keys
  (the ImageNet classifier) are dropped because backbones have no classifier;
* ``{"state_dict": {...}}`` as written by many training scripts;
* a whole chipmatch ``EmbeddingModel`` state_dict: only its ``backbone.*`` keys are used;
* keys prefixed with ``module.`` (saved from a DistributedDataParallel wrapper).

When the first convolution of the file has a different number of input channels than the
backbone (ImageNet RGB weights for grayscale or multispectral chips), it is adapted with
:func:`adapt_input_channels`. Anything else that does not match is an error naming the keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_MAX_KEYS_IN_MESSAGE = 8


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path`` and unwrap the common container formats."""
    file_path = Path(path)
    if not file_path.is_file():
        raise FileNotFoundError(f"weights file {str(file_path)!r} does not exist or is not a file")
    try:
        loaded = torch.load(file_path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a state_dict"
        raise ValueError(f"weights file {str(file_path)!r} is not a readable torch state_dict: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise ValueError(
            f"weights file {str(file_path)!r} does not hold a state_dict (a mapping of names to tensors); "
            f"got {type(loaded).__name__}"
        )
    state = dict(loaded)
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    if any(key.startswith("backbone.") for key in state):
        state = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    return state


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a conv weight ``[out, c_src, kh, kw]`` to ``in_channels`` input channels.

    Every new channel gets ``sum(source filters) / in_channels``. This keeps the response to a
    band-replicated image exactly: a grayscale chip fed to the adapted 1-channel conv gives the
    same activations as the same chip copied into R, G and B of the source conv. (A plain
    average would shrink activations by 1/3, which the pretrained BatchNorm running statistics
    would not expect.)
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a 4-d conv weight to adapt, got shape {tuple(weight.shape)}")
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / in_channels).repeat(1, in_channels, 1, 1).contiguous()


def load_backbone_weights(
    backbone: nn.Module,
    path: str | os.PathLike,
    *,
    first_conv_key: str,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``path`` into ``backbone`` strictly, adapting the first conv's input channels.

    ``first_conv_key`` is the state_dict key of the first convolution's weight; keys starting
    with one of ``ignored_prefixes`` (a source classifier such as ``fc.``) are dropped.
    Raises ValueError naming the file and the missing, unexpected or mis-shaped keys.
    """
    state = {
        key: value for key, value in load_state_dict_file(path).items() if not key.startswith(ignored_prefixes)
    }
    expected = backbone.state_dict()

    source_conv = state.get(first_conv_key)
    target_conv = expected.get(first_conv_key)
    if (
        source_conv is not None
        and target_conv is not None
        and source_conv.dim() == 4
        and source_conv.shape[1] != target_conv.shape[1]
        and source_conv.shape[0] == target_conv.shape[0]
        and source_conv.shape[2:] == target_conv.shape[2:]
    ):
        state[first_conv_key] = adapt_input_channels(source_conv, target_conv.shape[1])

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    findings = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped))
    problems = [f"{label} ({len(keys)}): {_summarise(keys)}" for label, keys in findings if keys]
    if problems:
        hint = ""
        if any(key.startswith(first_conv_key) for key in mis_shaped):
            hint = (
                " (the first conv differs in kernel size: the file was probably saved with another stem; "
                "build with the same stem, e.g. small_input=False for ImageNet ResNet weights)"
            )
        raise ValueError(
            f"weights file {str(path)!r} does not match backbone {type(backbone).__name__}: "
            + "; ".join(problems)
            + hint
        )
    backbone.load_state_dict(state, strict=True)


def _summarise(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    return shown + (f", ... (+{len(keys) - _MAX_KEYS_IN_MESSAGE} more)" if len(keys) > _MAX_KEYS_IN_MESSAGE else "")
