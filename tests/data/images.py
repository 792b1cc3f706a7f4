"""Small image files for source and ingest tests (written by the tests, never committed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(seed: int, size: int = 16, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def write_folder_dataset(root: Path, classes: dict[str, int], size: int = 16, seed_offset: int = 0) -> dict[str, int]:
    """`root/<class>/<i>.png` with distinct random images; returns the count per class."""
    for class_index, (name, count) in enumerate(sorted(classes.items())):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            seed = seed_offset + class_index * 100_000 + i
            (folder / f"img_{i:04d}.png").write_bytes(png_bytes(seed, size))
    return dict(classes)
