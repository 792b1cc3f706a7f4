"""Decode, validate and normalise one image; every failure becomes a `Rejection` with a reason.

PIL does the decoding (torchvision's decoders do not load against the CPU torch build here).
`Image.load()` is forced so that truncated files fail now, inside the stage that records
them, and not later inside a training worker.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from components import constants as C
from components.data.records import Rejection

# Never pad truncated files with grey: a truncated input is a rejection, not a sample.
ImageFile.LOAD_TRUNCATED_IMAGES = False

MIN_SIDE = 4  # smaller than this cannot be a chip of anything


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, TIFF, ...) → uint8 array H×W or H×W×C."""
    return pil_to_array(open_image(data))


def chip_from_bytes(data: bytes, image_size: int | None, channels: int) -> bytes:
    """Encoded input → encoded chip: `encode_chip(normalise(decode_image(data), ...))`, faster.

    When the decoded image already has the chip's mode (8-bit gray for 1 channel, RGB for 3),
    PIL resizes and re-encodes it directly: the same pixels and the same PNG bytes as the
    array path, without two copies through numpy (a third of the per-chip cost at 32×32).
    """
    image = open_image(data)
    if (channels, image.mode) not in ((1, "L"), (3, "RGB")):
        return encode_chip(normalise(pil_to_array(image), image_size, channels))
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise Rejection(C.REJECT_TOO_SMALL, f"{width}x{height} pixels, need at least {MIN_SIDE}")
    if image_size is not None and (width, height) != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    # The input's ancillary data (ICC profile, transparency, text) must not reach the chip:
    # PIL's PNG writer copies some of it from `info`, the array path never sees it.
    image.info = {}
    return _png_bytes(image)


def open_image(data: bytes) -> Image.Image:
    """Decode fully (so truncation fails here) into a PIL image; failures are `Rejection`s."""
    if len(data) == 0:
        raise Rejection(C.REJECT_EMPTY, "0 bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise Rejection(C.REJECT_UNKNOWN_FORMAT, "not a PNG/JPEG/TIFF/... image PIL can identify") from exc
    except Exception as exc:  # any decoder error is a corrupt file
        raise Rejection(C.REJECT_CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    try:
        image.load()
    except OSError as exc:
        reason = C.REJECT_TRUNCATED if "truncated" in str(exc).lower() else C.REJECT_CORRUPT
        raise Rejection(reason, str(exc)) from exc
    except Exception as exc:  # SyntaxError, ValueError, zlib errors...
        raise Rejection(C.REJECT_CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    return image


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode → uint8 array; 16-bit and float images are rescaled to their own range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        return rescale_to_uint8(array)
    if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1", "HSV", "LAB"):
        image = image.convert("RGB" if image.mode != "1" else "L")
    return np.asarray(image, dtype=np.uint8)


def rescale_to_uint8(array: np.ndarray) -> np.ndarray:
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.clip((array - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)


def normalise(array: np.ndarray, image_size: int | None, channels: int) -> np.ndarray:
    """Convert to `channels` (1 → H×W, otherwise H×W×channels) and resize to a square `image_size`.

    1 and 3 channels convert between grayscale and RGB; any other count (multi-band imagery)
    keeps the input's first `channels` bands and rejects inputs with fewer.
    """
    if array.ndim not in (2, 3):
        raise Rejection(C.REJECT_CORRUPT, f"image has {array.ndim} dimensions")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise Rejection(C.REJECT_TOO_SMALL, f"{width}x{height} pixels, need at least {MIN_SIDE}")
    array = _to_channels(array, channels) if channels in (1, 3) else _first_bands(array, channels)
    if image_size is not None and (height, width) != (image_size, image_size):
        array = _resize(array, image_size)
    return np.ascontiguousarray(array)


def _first_bands(array: np.ndarray, channels: int) -> np.ndarray:
    bands = 1 if array.ndim == 2 else array.shape[2]
    if bands < channels:
        raise Rejection(C.REJECT_WRONG_BANDS, f"{bands} band(s), shard.channels asks for {channels}")
    return array[:, :, :channels]


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize; band by band beyond RGB (PIL images hold at most 4 bands)."""
    def one(plane: np.ndarray) -> np.ndarray:
        mode = "L" if plane.ndim == 2 else "RGB"
        return np.asarray(Image.fromarray(plane, mode=mode).resize((size, size), Image.BILINEAR), dtype=np.uint8)

    if array.ndim == 2 or array.shape[2] == 3:
        return one(array)
    return np.stack([one(array[:, :, band]) for band in range(array.shape[2])], axis=2)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if channels == 1:
        if array.ndim == 2:
            return array
        # ITU-R 601 luma, as PIL's "L" conversion: bands beyond 3 (e.g. NIR) are dropped.
        rgb = array[:, :, :3].astype(np.float32) if array.shape[2] >= 3 else np.repeat(array[:, :, :1], 3, 2).astype(np.float32)
        luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(luma + 0.5, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], channels, axis=2)
    if array.shape[2] >= channels:
        return array[:, :, :channels]
    return np.concatenate([array, np.repeat(array[:, :, -1:], channels - array.shape[2], 2)], axis=2)


def chip_member(channels: int) -> str:
    """The WebDataset member a chip of `channels` bands is stored as (PNG where it fits)."""
    return C.WDS_IMAGE if channels in (1, 3) else C.WDS_ARRAY


def encode_chip(array: np.ndarray) -> bytes:
    """Lossless bytes of a normalised chip: PNG for 1 or 3 bands, .npy otherwise."""
    if array.ndim == 2 or array.shape[2] == 3:
        return _png_bytes(Image.fromarray(array))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_chip(data: bytes) -> np.ndarray:
    """Inverse of `encode_chip` (the format is recognised by its magic bytes)."""
    if data[:6] == b"\x93NUMPY":
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8)


def chip_bytes(sample: dict) -> bytes:
    """The encoded chip of a raw WebDataset sample, whichever member holds it."""
    for member in C.WDS_CHIP_MEMBERS:
        if member in sample:
            return sample[member]
    raise KeyError(f"sample {sample.get('__key__')!r} has no chip member ({list(C.WDS_CHIP_MEMBERS)})")
