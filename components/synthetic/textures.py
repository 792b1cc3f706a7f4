"""Noise banks shared by all renders: ground grain, blotches, foliage, sensor noise.

Generating fractal noise per chip would dominate the render time, so each kind is generated
once per process (lazily, on first use: nothing happens at import) from a fixed seed, and a
chip takes a crop at a random offset and flip. The banks are deterministic, so crops
are too; sharing them between chips does not matter because a crop is a tiny, randomly placed
and flipped part of a 512x512 tile.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
from PIL import Image

TILE = 512
_BANK_SEED = 0x5EED_C41F


def _fractal(rng: np.random.Generator, cell_sizes: tuple[int, ...], exponent: float) -> np.ndarray:
    """Sum of bicubically upsampled white noise at several cell sizes, normalised to unit std.

    Larger cells get weight size**exponent, which gives the 1/f-like look of natural surfaces.
    """
    total = np.zeros((TILE, TILE), dtype=np.float32)
    for cell in cell_sizes:
        cells = max(2, TILE // cell)
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        upsampled = Image.fromarray(coarse, mode="F").resize((TILE, TILE), Image.Resampling.BICUBIC)
        total += np.asarray(upsampled, dtype=np.float32) * float(cell) ** exponent
    total -= total.mean()
    total /= total.std()
    return total


@lru_cache(maxsize=1)
def noise_bank() -> dict[str, np.ndarray]:
    """Zero-mean float32 tiles: 'ground' (grain + blotches), 'foliage', 'gauss' (white noise)."""
    rng = np.random.default_rng(_BANK_SEED)
    grain = _fractal(rng, (1, 2, 4), 0.6)
    blotch = _fractal(rng, (12, 24, 48, 96, 192), 1.0)
    # Foliage: clumps of crowns, sunlit tops and dark gaps, so a steep non-linearity on blobs.
    blobs = _fractal(rng, (3, 6, 12, 24), 0.8)
    foliage = np.tanh(1.3 * blobs).astype(np.float32)
    foliage = (foliage - foliage.mean()) / foliage.std()
    gauss = rng.standard_normal((TILE, TILE)).astype(np.float32)
    # Ground surfaces show both at once; pre-summing saves a full-chip operation per render.
    ground = grain + 0.9 * blotch
    bank = {"ground": ground, "foliage": foliage, "gauss": gauss}
    for tile in bank.values():
        tile.setflags(write=False)
    return bank


def crop(kind: str, height: int, width: int, rng: random.Random) -> np.ndarray:
    """A (height, width) view of a bank tile at a random offset and flip.

    No transposes: a transposed view makes every following numpy operation ~4x slower
    (column-wise memory access), and offsets and flips already give plenty of variety.
    """
    tile = noise_bank()[kind]
    if height > TILE or width > TILE:
        # Only for chips much larger than the presets: repeat the tile (seams are acceptable).
        reps = (-(-height // TILE), -(-width // TILE))
        tile = np.tile(tile, reps)
    row = int(rng.random() * (tile.shape[0] - height + 1))
    col = int(rng.random() * (tile.shape[1] - width + 1))
    view = tile[row:row + height, col:col + width]
    if rng.random() < 0.5:
        view = view[::-1]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return view


@lru_cache(maxsize=8)
def foliage_image(mode: str, size: int) -> Image.Image:
    """A tree-canopy texture (dark green crowns), as a PIL image to composite over a scene."""
    texture = noise_bank()["foliage"]
    reps = -(-size // TILE)
    if reps > 1:
        texture = np.tile(texture, (reps, reps))
    texture = texture[:size, :size]
    base = np.array([0.20, 0.30, 0.13], dtype=np.float32)
    rgb = base * (1.0 + 0.42 * texture[..., None])
    if mode == "L":
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return Image.fromarray(np.clip(grey * 255.0, 0, 255).astype(np.uint8), mode="L")
    return Image.fromarray(np.clip(rgb * 255.0, 0, 255).astype(np.uint8), mode="RGB")


@lru_cache(maxsize=16)
def centred_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row coordinates in [-0.5, 0.5] (for illumination gradients)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    cols, rows = np.meshgrid(axis, axis)
    cols.setflags(write=False)
    rows.setflags(write=False)
    return cols, rows
