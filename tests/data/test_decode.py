"""Each kind of bad input is rejected with its own reason; good inputs normalise correctly."""

from __future__ import annotations

import io

import numpy as np
import pytest

from components import constants as C
from components.data.decode import chip_from_bytes, decode_image, encode_chip, normalise
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


def _png_with_ancillary_chunks(seed: int, size: int) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "made by a test")
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(
        buffer, format="PNG", pnginfo=info, transparency=0, dpi=(72, 72), icc_profile=b"\0" * 128)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [None, 16, 20, 33])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_chip_from_bytes_equals_the_array_path(size, channels):
    """The fast path (PIL straight through) gives the same bytes as decode → normalise → encode."""
    from PIL import Image

    palette = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (20, 20), dtype=np.uint8)).convert("P").save(palette, "PNG")
    inputs = [png_bytes(1, 20, "L"), png_bytes(2, 20, "RGB"), jpeg_bytes(3, 20), _png_with_ancillary_chunks(4, 20),
              palette.getvalue()]
    for data in inputs:
        try:
            expected = encode_chip(normalise(decode_image(data), size, channels))
        except Rejection as rejection:   # e.g. fewer bands than asked for
            with pytest.raises(Rejection) as info:
                chip_from_bytes(data, size, channels)
            assert info.value.reason == rejection.reason
            continue
        assert chip_from_bytes(data, size, channels) == expected


def test_chip_from_bytes_rejects_like_decode():
    good = png_bytes(1, 32)
    for data, reason in ((b"", C.REJECT_EMPTY), (b"not an image", C.REJECT_UNKNOWN_FORMAT),
                         (good[: len(good) // 2], C.REJECT_TRUNCATED), (png_bytes(2, 3), C.REJECT_TOO_SMALL)):
        with pytest.raises(Rejection) as info:
            chip_from_bytes(data, 16, 1)
        assert info.value.reason == reason


def test_load_block_gives_chips_hashes_and_rejections_per_input(tmp_path):
    """Ingest's Ray Data UDF, called in-process on one block."""
    import hashlib
    import json

    import pyarrow as pa

    from components.data.chips import load_block
    from components.data.sources.folder import FolderConfig

    good, rgb = png_bytes(1, 20), png_bytes(2, 24, "RGB")
    files = {"a/good.png": good, "a/rgb.png": rgb, "b/empty.png": b"", "b/half.png": good[: len(good) // 2]}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    names = sorted(files) + ["b/missing.png"]
    batch = pa.table({"key": names, "locator": [json.dumps({"path": str(tmp_path / n)}) for n in names]})
    source_json = json.dumps(FolderConfig(root=str(tmp_path)).model_dump(mode="json"))
    out = load_block(batch, source_json, 16, 1).to_pydict()
    assert out["key"] == names
    reasons = dict(zip(names, out["reject_reason"]))
    assert reasons == {"a/good.png": "", "a/rgb.png": "", "b/empty.png": C.REJECT_EMPTY,
                       "b/half.png": C.REJECT_TRUNCATED, "b/missing.png": C.REJECT_UNREADABLE}
    for row, name in enumerate(names[:2]):
        assert out["chip"][row] == encode_chip(normalise(decode_image(files[name]), 16, 1))
        assert out["raw_sha256"][row] == hashlib.sha256(files[name]).hexdigest()
    assert all(out["chip"][row] == b"" for row in range(2, 5))
