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
    if len(data) == 0:
        raise Rejection(C.REJECT_EMPTY, "0 bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise Rejection(C.REJECT_UNKNOWN_FORMAT, "not a PNG/JPEG/TIFF/... image PIL can identify") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder error is a corrupt file
        raise Rejection(C.REJECT_CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    try:
        image.load()
    except OSError as exc:
        reason = C.REJECT_TRUNCATED if "truncated" in str(exc).lower() else C.REJECT_CORRUPT
        raise Rejection(reason, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - SyntaxError, ValueError, zlib errors...
        raise Rejection(C.REJECT_CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    return pil_to_array(image)


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
    """Convert to `channels` (1 → H×W, 3 → H×W×3) and resize to a square `image_size`."""
    if array.ndim not in (2, 3):
        raise Rejection(C.REJECT_CORRUPT, f"image has {array.ndim} dimensions")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise Rejection(C.REJECT_TOO_SMALL, f"{width}x{height} pixels, need at least {MIN_SIDE}")
    array = _to_channels(array, channels)
    if image_size is not None and (height, width) != (image_size, image_size):
        mode = "L" if channels == 1 else "RGB"
        resized = Image.fromarray(array, mode=mode).resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(resized, dtype=np.uint8)
    return np.ascontiguousarray(array)


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


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint8)
