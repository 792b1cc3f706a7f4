"""Backbones: a registry of convolutional feature extractors adapted to small image chips.

Every backbone is a :class:`Backbone`: ``forward_features(x)`` returns the named stage outputs
``stage1`` .. ``stage4`` (feature maps) and ``pooled`` (global-average-pooled last stage,
``[B, out_features]``); ``forward(x)`` returns ``pooled`` only.

Stems (how the first layers reduce resolution) matter a lot for chips far smaller than the
224x224 ImageNet images the ResNets were designed for:

* ``"cifar"`` - 3x3 stride-1 conv, no max-pool. For ~32x32 chips: the ImageNet stem would shrink
  32x32 to 8x8 before the first residual stage and to 1x1 at stage 4, discarding the fine detail
  that separates vehicle types. With it the stages see 32, 16, 8, 4 pixels.
* ``"stride2"`` - the 7x7 stride-2 conv, no max-pool. For ~64-160 pixel chips such as 101x101:
  stages see 51, 26, 13, 7 pixels, close to the 56..7 maps of ImageNet training, so the network's
  receptive fields fit the objects and ImageNet weights stay meaningful (the max-pool has no
  parameters, so dropping it does not change the state_dict). Keeping the max-pool would halve
  every map (26..4) and leave stage 4 at 4x4 for objects that fill much of the chip; dropping it
  costs about 4x the compute of the ImageNet stem, which a 101x101 chip can afford.
* ``"imagenet"`` - 7x7 stride-2 conv plus 3x3 stride-2 max-pool, the original stem; for larger
  chips (> 160 pixels) and exact reproduction of ImageNet models.

``small_input=True`` selects the cifar stem and ``False`` the imagenet stem; ``stem=`` overrides
both, and :func:`stem_for_image_size` picks one from the chip size (used by ``build_model``).
Any number of input bands is supported: only the first conv depends on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from components.models.torchvision_compat import import_torchvision
from components.models.weights import load_backbone_weights

STEM_CIFAR = "cifar"
STEM_STRIDE2 = "stride2"
STEM_IMAGENET = "imagenet"
STEMS = (STEM_CIFAR, STEM_STRIDE2, STEM_IMAGENET)

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
POOLED = "pooled"

RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
SMALL_CNN = "small_cnn"

# Chip sizes up to these limits use the cifar / stride2 stems (see the module docstring).
_CIFAR_STEM_MAX_SIZE = 64
_STRIDE2_STEM_MAX_SIZE = 160


def stem_for_image_size(image_size: int) -> str:
    """The stem suited to square chips of ``image_size`` pixels."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if image_size <= _CIFAR_STEM_MAX_SIZE:
        return STEM_CIFAR
    if image_size <= _STRIDE2_STEM_MAX_SIZE:
        return STEM_STRIDE2
    return STEM_IMAGENET


class Backbone(nn.Module):
    """Interface shared by all backbones.

    Subclasses set ``in_channels``, ``stem``, ``stage_channels`` (stage name -> channels, in
    order), ``first_conv_key`` (state_dict key of the first conv weight, adapted when loading
    weights with another band count) and implement ``_stage_outputs``.
    """

    in_channels: int
    stem: str
    stage_channels: dict[str, int]
    first_conv_key: str
    # State-dict prefixes of weight files that are not part of the backbone (source classifiers).
    ignored_weight_prefixes: tuple[str, ...] = ()

    @property
    def out_features(self) -> int:
        """Dimension of ``pooled``: the channels of the last stage."""
        return self.stage_channels[STAGE_NAMES[-1]]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"stage1": map, ..., "stage4": map, "pooled": [B, out_features]}``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        features = self._stage_outputs(x)
        features[POOLED] = torch.flatten(F.adaptive_avg_pool2d(features[STAGE_NAMES[-1]], 1), 1)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[POOLED]

    def _stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _new_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    # Same initialisation torchvision gives its ResNet convolutions.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, with a stem suited to the chip size.

    Parameter names equal torchvision's (``conv1``, ``bn1``, ``layer1`` ..), so torchvision
    weight files load directly (their ``fc.*`` keys are ignored).
    """

    first_conv_key = "conv1.weight"
    ignored_weight_prefixes = ("fc.",)

    def __init__(self, arch: str, in_channels: int = 1, stem: str = STEM_CIFAR) -> None:
        super().__init__()
        if arch not in RESNET_NAMES:
            raise ValueError(f"unknown ResNet {arch!r}; valid: {', '.join(RESNET_NAMES)}")
        _check_in_channels(in_channels)
        _check_stem(stem)
        # weights=None: random initialisation, never a download.
        net = getattr(import_torchvision().models, arch)(weights=None)
        self.arch = arch
        self.in_channels = in_channels
        self.stem = stem
        if stem == STEM_CIFAR:
            self.conv1 = _new_conv(in_channels, net.conv1.out_channels, kernel_size=3, stride=1)
        elif in_channels != net.conv1.in_channels:
            self.conv1 = _new_conv(in_channels, net.conv1.out_channels, kernel_size=7, stride=2)
        else:
            self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool if stem == STEM_IMAGENET else nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = type(net.layer1[0]).expansion  # 1 for BasicBlock (18/34), 4 for Bottleneck
        self.stage_channels = {name: width * expansion for name, width in zip(STAGE_NAMES, (64, 128, 256, 512))}

    def _stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stage1 = self.layer1(x)
        stage2 = self.layer2(stage1)
        stage3 = self.layer3(stage2)
        stage4 = self.layer4(stage3)
        return {"stage1": stage1, "stage2": stage2, "stage3": stage3, "stage4": stage4}


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias: BatchNorm follows) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = _new_conv(in_channels, out_channels, kernel_size=3, stride=stride)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class SmallCNN(Backbone):
    """A small plain CNN for fast CPU runs and tests (about 1.2 M parameters).

    Stem conv, then four stages of conv-BN-ReLU blocks; stages 2-4 halve the resolution and
    double the width, like a ResNet without residuals, so the same taps exist.
    """

    first_conv_key = "stem_conv.conv.weight"

    def __init__(
        self, in_channels: int = 1, stem: str = STEM_CIFAR, widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    ) -> None:
        super().__init__()
        _check_in_channels(in_channels)
        _check_stem(stem)
        if len(widths) != len(STAGE_NAMES) or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(f"widths must be {len(STAGE_NAMES)} positive ints, got {widths!r}")
        self.in_channels = in_channels
        self.stem = stem
        self.stem_conv = ConvBNReLU(in_channels, widths[0], stride=1 if stem == STEM_CIFAR else 2)
        self.stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == STEM_IMAGENET else nn.Identity()
        self.stage1 = ConvBNReLU(widths[0], widths[0])
        self.stage2 = nn.Sequential(ConvBNReLU(widths[0], widths[1], stride=2), ConvBNReLU(widths[1], widths[1]))
        self.stage3 = nn.Sequential(ConvBNReLU(widths[1], widths[2], stride=2), ConvBNReLU(widths[2], widths[2]))
        self.stage4 = nn.Sequential(ConvBNReLU(widths[2], widths[3], stride=2), ConvBNReLU(widths[3], widths[3]))
        self.stage_channels = dict(zip(STAGE_NAMES, widths))

    def _stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stage1 = self.stage1(self.stem_pool(self.stem_conv(x)))
        stage2 = self.stage2(stage1)
        stage3 = self.stage3(stage2)
        stage4 = self.stage4(stage3)
        return {"stage1": stage1, "stage2": stage2, "stage3": stage3, "stage4": stage4}


# --- registry ------------------------------------------------------------------------------

def _resnet_builder(arch: str) -> Callable[[int, str], Backbone]:
    return lambda in_channels, stem: ResNetBackbone(arch, in_channels=in_channels, stem=stem)


_BUILDERS: dict[str, Callable[[int, str], Backbone]] = {
    SMALL_CNN: lambda in_channels, stem: SmallCNN(in_channels=in_channels, stem=stem),
    **{arch: _resnet_builder(arch) for arch in RESNET_NAMES},
}


def available_backbones() -> tuple[str, ...]:
    """Names accepted by :func:`build_backbone`."""
    return tuple(_BUILDERS)


def build_backbone(
    name: str,
    in_channels: int = 1,
    small_input: bool = True,
    weights: str | os.PathLike | None = None,
    *,
    stem: str | None = None,
) -> Backbone:
    """Build the backbone ``name`` for ``in_channels``-band chips.

    ``small_input`` picks the cifar stem (True) or the imagenet stem (False); ``stem`` overrides
    it with any of :data:`STEMS`. ``weights`` is a local state_dict file (see
    :mod:`components.models.weights`); nothing is ever downloaded.
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(_BUILDERS)}")
    if stem is None:
        stem = STEM_CIFAR if small_input else STEM_IMAGENET
    backbone = _BUILDERS[name](in_channels, stem)
    if weights is not None:
        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(f"weights must be a local file path, got {type(weights).__name__}: {weights!r}")
        load_backbone_weights(
            backbone,
            weights,
            first_conv_key=backbone.first_conv_key,
            ignored_prefixes=backbone.ignored_weight_prefixes,
        )
    return backbone


def _check_in_channels(in_channels: int) -> None:
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
