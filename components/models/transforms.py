"""Preprocessing for training and inference: numpy chips -> normalised float tensors.

* :func:`image_to_tensor` / :func:`batch_to_tensor` turn uint8/uint16/float numpy chips
  (``HW``/``HWC`` or ``NHW``/``NHWC``) into float ``[C, H, W]`` / ``[N, C, H, W]`` in [0, 1].
* :class:`Normalize` applies per-channel ``(x - mean) / std`` (a single value serves every band).
* :class:`ChipAugment` is the training augmentation for overhead chips. Overhead imagery has no
  canonical "up" and no handedness, so it draws, per sample: a rotation by any angle (or by a
  multiple of 90 degrees), a horizontal flip (with the rotations this covers vertical flips too),
  a small scale jitter and an integer shift (the "random crop": a shifted window of the same
  size). All are composed into one affine map per sample and applied to the whole batch with one
  ``grid_sample`` call, so it runs on the batch's device (GPU after the transfer) and costs the
  same for any batch size. The geometry follows ``torchvision.transforms.v2.functional.affine``
  exactly (the tests compare against it), but rotated-in corners are filled by reflection by
  default instead of a constant, so a model cannot learn "black corners mean rotated".
  Randomness comes from an optional ``torch.Generator``: the same generator state gives the
  same augmentation on any device.
* :class:`ChipTransform` chains float conversion, optional augmentation and normalisation;
  :func:`build_train_transform` / :func:`build_eval_transform` build the two variants.

torchvision is only reached through :mod:`components.models.torchvision_compat`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.models.torchvision_compat import import_torchvision_submodule

# [0, 1] -> [-1, 1]; replace with dataset statistics where known.
DEFAULT_MEAN = (0.5,)
DEFAULT_STD = (0.5,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# For ImageNet weights adapted to one band (components.models.weights sums the RGB filters):
# a grey chip is then treated like the same grey in R, G and B, normalised on average like this.
IMAGENET_GRAY_MEAN = (sum(IMAGENET_MEAN) / 3,)
IMAGENET_GRAY_STD = (sum(IMAGENET_STD) / 3,)

ROTATION_ANY = "any"      # uniform angle in [0, 360)
ROTATION_RIGHT = "right"  # a multiple of 90 degrees: samples pixel centres, no blur
ROTATION_NONE = "none"
ROTATIONS = (ROTATION_ANY, ROTATION_RIGHT, ROTATION_NONE)
PADDING_MODES = ("reflection", "border", "zeros")
INTERPOLATIONS = ("bilinear", "nearest")

_INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


# --- numpy -> tensor -----------------------------------------------------------------------

def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """One chip, ``HW`` or ``HWC`` (uint8, uint16 or float in [0, 1]) -> float32 ``[C, H, W]``."""
    array = _check_array(image, "image", (2, 3))
    chw = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return _to_unit_float(chw)


def batch_to_tensor(images: np.ndarray) -> torch.Tensor:
    """A batch, ``NHW`` or ``NHWC`` (uint8, uint16 or float in [0, 1]) -> float32 ``[N, C, H, W]``."""
    array = _check_array(images, "images", (3, 4))
    nchw = array[:, None] if array.ndim == 3 else np.moveaxis(array, -1, 1)
    return _to_unit_float(nchw)


def _check_array(array: np.ndarray, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {array.shape}")
    if array.dtype not in _INTEGER_SCALES and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} has dtype {array.dtype}; expected uint8, uint16 or a float dtype")
    return array


def _to_unit_float(array: np.ndarray) -> torch.Tensor:
    divisor = _INTEGER_SCALES.get(array.dtype)
    # ascontiguousarray: moveaxis gives a strided view; copying once here keeps convs fast.
    tensor = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32, copy=False))
    return tensor / divisor if divisor is not None else tensor


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Integer image tensors -> float32 in [0, 1]; float tensors are returned unchanged."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.is_floating_point():
        return images
    return _v2_functional().to_dtype(images, torch.float32, scale=True)


def _v2_functional():
    return import_torchvision_submodule("transforms.v2.functional")


# --- normalisation -------------------------------------------------------------------------

class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on ``[C, H, W]`` or ``[B, C, H, W]`` float tensors."""

    def __init__(self, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD) -> None:
        super().__init__()
        self.mean = _as_float_tuple("mean", mean)
        self.std = _as_float_tuple("std", std)
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean!r} and std {self.std!r} must have the same length")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[-3]
        if len(self.mean) not in (1, channels):
            raise ValueError(f"mean/std have {len(self.mean)} values but the images have {channels} channels")
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        return _v2_functional().normalize(images, mean=list(mean), std=list(std))

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def _as_float_tuple(name: str, values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (values,)
    try:
        result = tuple(float(value) for value in values)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from error
    if not result or not all(math.isfinite(value) for value in result):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {values!r}")
    return result


# --- augmentation --------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of :class:`ChipAugment` (tensors of length N).

    The output is ``affine(flip(image))`` with torchvision's conventions: ``angle`` in degrees,
    ``scale`` a zoom factor, ``shift_x``/``shift_y`` in pixels (x right, y down).
    """

    angle: torch.Tensor
    flip: torch.Tensor
    scale: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor


class ChipAugment(nn.Module):
    """Random rotation, flip, scale jitter and shift for overhead chips, batched (see module doc).

    Args:
        rotation: ``"any"`` angle, ``"right"`` (multiples of 90 degrees) or ``"none"``.
        flip: horizontal flip with probability 0.5.
        scale_jitter: zoom drawn uniformly from ``[1 - j, 1 + j]``.
        max_shift: largest shift as a fraction of the chip side (rounded to whole pixels).
        padding_mode: how pixels from outside the chip are filled (``grid_sample`` modes).
        interpolation: ``"bilinear"`` or ``"nearest"``.
    """

    def __init__(
        self,
        rotation: str = ROTATION_ANY,
        flip: bool = True,
        scale_jitter: float = 0.1,
        max_shift: float = 0.0625,
        padding_mode: str = "reflection",
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {rotation!r}; valid: {', '.join(ROTATIONS)}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"unknown padding_mode {padding_mode!r}; valid: {', '.join(PADDING_MODES)}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        if not 0.0 <= scale_jitter < 1.0:
            raise ValueError(f"scale_jitter must be in [0, 1), got {scale_jitter!r}")
        if not 0.0 <= max_shift < 0.5:
            raise ValueError(f"max_shift must be in [0, 0.5), got {max_shift!r}")
        self.rotation = rotation
        self.flip = bool(flip)
        self.scale_jitter = float(scale_jitter)
        self.max_shift = float(max_shift)
        self.padding_mode = padding_mode
        self.interpolation = interpolation

    def sample_params(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw parameters for ``batch_size`` chips of ``height`` x ``width`` pixels."""
        device = generator.device if generator is not None else torch.device("cpu")

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch_size, generator=generator, device=device)

        def integers(low: int, high_inclusive: int) -> torch.Tensor:
            values = torch.randint(low, high_inclusive + 1, (batch_size,), generator=generator, device=device)
            return values.to(torch.float32)

        if self.rotation == ROTATION_ANY:
            angle = uniform(0.0, 360.0)
        elif self.rotation == ROTATION_RIGHT:
            angle = 90.0 * integers(0, 3)
        else:
            angle = torch.zeros(batch_size, device=device)
        flip = uniform(0.0, 1.0) < 0.5 if self.flip else torch.zeros(batch_size, dtype=torch.bool, device=device)
        scale = uniform(1.0 - self.scale_jitter, 1.0 + self.scale_jitter)
        shift_x = integers(-round(self.max_shift * width), round(self.max_shift * width))
        shift_y = integers(-round(self.max_shift * height), round(self.max_shift * height))
        return AugmentParams(angle=angle, flip=flip, scale=scale, shift_x=shift_x, shift_y=shift_y)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply ``params`` to float ``[B, C, H, W]`` images."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"expected float images [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if params.angle.shape[0] != batch:
            raise ValueError(f"params are for {params.angle.shape[0]} images, the batch has {batch}")
        grid = _sampling_grid(params, height, width, device=images.device).to(images.dtype)
        return F.grid_sample(images, grid, mode=self.interpolation, padding_mode=self.padding_mode, align_corners=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``[C, H, W]`` or ``[B, C, H, W]`` float images; each sample gets its own draw."""
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        if batch.dim() != 4:
            raise ValueError(f"expected images [C, H, W] or [B, C, H, W], got shape {tuple(images.shape)}")
        params = self.sample_params(batch.shape[0], batch.shape[-2], batch.shape[-1], generator=generator)
        augmented = self.apply(batch, params)
        return augmented[0] if single else augmented


def _sampling_grid(params: AugmentParams, height: int, width: int, device: torch.device) -> torch.Tensor:
    """``grid_sample`` grid ``[B, H, W, 2]`` for ``affine(flip(image))`` as torchvision defines it.

    In pixel coordinates centred on the chip (x right, y down) an output pixel p reads the
    input at ``A (p - shift)`` with ``A = flip . [[cos, sin], [-sin, cos]] / scale``. grid_sample
    works in coordinates divided by half the chip size (``align_corners=False``), so A is
    rescaled to a normalised ``theta`` for ``affine_grid``. The small ``[B, 2, 3]`` matrices are
    computed in float64 where the parameters live; only the grid is built on the image device.
    """
    angle = params.angle.to(torch.float64)
    radians = torch.deg2rad(angle)
    cos, sin = torch.cos(radians), torch.sin(radians)
    # Snap multiples of 90 degrees to exact cos/sin so those rotations sample pixel centres
    # (no blur, up to float32 rounding of the grid).
    right = torch.remainder(angle, 90.0) == 0
    cos = torch.where(right, torch.round(cos), cos)
    sin = torch.where(right, torch.round(sin), sin)
    inv_scale = 1.0 / params.scale.to(torch.float64)
    flip_sign = 1.0 - 2.0 * params.flip.to(torch.float64)  # -1 mirrors x
    a11, a12 = flip_sign * cos * inv_scale, flip_sign * sin * inv_scale
    a21, a22 = -sin * inv_scale, cos * inv_scale
    shift_x, shift_y = params.shift_x.to(torch.float64), params.shift_y.to(torch.float64)
    half_w, half_h = width / 2.0, height / 2.0
    theta = torch.stack(
        (
            torch.stack((a11, a12 * half_h / half_w, -(a11 * shift_x + a12 * shift_y) / half_w), dim=-1),
            torch.stack((a21 * half_w / half_h, a22, -(a21 * shift_x + a22 * shift_y) / half_h), dim=-1),
        ),
        dim=1,
    )
    theta = theta.to(device=device, dtype=torch.float32)
    return F.affine_grid(theta, [theta.shape[0], 1, height, width], align_corners=False)


# --- full pipelines ------------------------------------------------------------------------

class ChipTransform(nn.Module):
    """float conversion -> optional :class:`ChipAugment` -> :class:`Normalize`.

    Accepts a numpy chip (``HW``/``HWC``, see :func:`image_to_tensor`), or a tensor
    ``[C, H, W]`` / ``[B, C, H, W]`` (integer tensors are scaled to [0, 1]).
    """

    def __init__(self, normalize: Normalize, augment: ChipAugment | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        self.augment = augment

    def forward(self, images: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        tensor = image_to_tensor(images) if isinstance(images, np.ndarray) else to_float(images)
        if tensor.dim() not in (3, 4):
            raise ValueError(f"expected images [C, H, W] or [B, C, H, W], got shape {tuple(tensor.shape)}")
        if self.augment is not None:
            tensor = self.augment(tensor, generator=generator)
        return self.normalize(tensor)


def build_train_transform(
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    *,
    rotation: str = ROTATION_ANY,
    flip: bool = True,
    scale_jitter: float = 0.1,
    max_shift: float = 0.0625,
    padding_mode: str = "reflection",
) -> ChipTransform:
    """The training transform: augmentation for overhead chips, then normalisation."""
    augment = ChipAugment(
        rotation=rotation, flip=flip, scale_jitter=scale_jitter, max_shift=max_shift, padding_mode=padding_mode
    )
    return ChipTransform(Normalize(mean, std), augment)


def build_eval_transform(mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD) -> ChipTransform:
    """The inference transform: float conversion and normalisation only (deterministic)."""
    return ChipTransform(Normalize(mean, std))
