"""Each kind of bad input is rejected with its own reason; good inputs normalise correctly."""

from __future__ import annotations

import numpy as np
import pytest

from components import constants as C
from components.data.decode import decode_image, normalise
from components.data.records import Rejection, safe_key
from tests.data.images import jpeg_bytes, png_bytes


def reason_of(data: bytes) -> str:
    with pytest.raises(Rejection) as info:
        decode_image(data)
    return info.value.reason


def test_each_bad_input_has_its_reason():
    good = png_bytes(1, 32)
    assert reason_of(b"") == C.REJECT_EMPTY
    assert reason_of(b"this is not an image at all") == C.REJECT_UNKNOWN_FORMAT
    assert reason_of(good[: len(good) // 2]) == C.REJECT_TRUNCATED
    jpeg = jpeg_bytes(2, 64)
    assert reason_of(jpeg[: len(jpeg) // 2]) == C.REJECT_TRUNCATED
    corrupt = bytearray(good)
    corrupt[60:80] = b"\x00" * 20          # inside the IDAT chunk: CRC/zlib failure
    assert reason_of(bytes(corrupt)) in (C.REJECT_CORRUPT, C.REJECT_TRUNCATED)


def test_decode_and_normalise_modes_and_size():
    gray = decode_image(png_bytes(3, 20, "L"))
    rgb = decode_image(png_bytes(4, 20, "RGB"))
    assert gray.shape == (20, 20) and rgb.shape == (20, 20, 3)
    assert normalise(rgb, 32, 1).shape == (32, 32)
    assert normalise(gray, 8, 3).shape == (8, 8, 3)
    assert np.array_equal(normalise(gray, None, 1), gray)
    # Luma conversion equals PIL's "L" conversion within rounding.
    from PIL import Image

    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.int16)
    assert np.abs(normalise(rgb, None, 1).astype(np.int16) - expected).max() <= 1


def test_too_small_is_rejected():
    with pytest.raises(Rejection) as info:
        normalise(np.zeros((2, 9), np.uint8), 32, 1)
    assert info.value.reason == C.REJECT_TOO_SMALL


def test_safe_keys_are_webdataset_safe_and_unique():
    names = ["cars/a.png", "cars/a_png", "cars/b c.jpg", "plain/key"]
    keys = [safe_key(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert all("." not in k and " " not in k for k in keys)
    assert safe_key("plain/key") == "plain/key"
