"""Figures logged with evaluations: PR curves of several runs on one plot, and retrieval grids.

matplotlib runs with the Agg backend (no display needed) and is imported lazily.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

SAME_CLASS = (40, 180, 60)     # green border: retrieved item of the query's class
OTHER_CLASS = (210, 40, 40)    # red border otherwise
QUERY = (60, 110, 220)         # blue border: the query itself


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str, title: str = "precision-recall (unseen classes)") -> None:
    """One line per run: `curves[name] = (recall, precision)`."""
    if not curves:
        raise ValueError("plot_pr_curves needs at least one curve")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5), dpi=120)
    for name, (recall, precision) in curves.items():
        axes.plot(np.asarray(recall), np.asarray(precision), label=name, linewidth=1.6)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _tile(image: np.ndarray, colour: tuple[int, int, int], size: int, border: int) -> Image.Image:
    rgb = Image.fromarray(image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)).convert("RGB")
    rgb = rgb.resize((size, size), Image.NEAREST)
    framed = Image.new("RGB", (size + 2 * border, size + 2 * border), colour)
    framed.paste(rgb, (border, border))
    return framed


def retrieval_grid(query_images: np.ndarray, retrieved_images: np.ndarray, query_labels: Sequence,
                   retrieved_labels: Sequence[Sequence], path: str, tile: int = 64, border: int = 3) -> None:
    """One row per query: the query (blue frame), then its top-k results, framed green when
    they share the query's class and red otherwise. Images are uint8 H×W or H×W×C."""
    queries, k = len(query_images), retrieved_images.shape[1]
    if queries != len(retrieved_images) or queries != len(query_labels) or queries != len(retrieved_labels):
        raise ValueError("retrieval_grid: queries, retrieved images and labels must have the same length")
    cell, gap = tile + 2 * border, 8
    canvas = Image.new("RGB", (cell * (k + 1) + gap, cell * queries), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row in range(queries):
        canvas.paste(_tile(query_images[row], QUERY, tile, border), (0, row * cell))
        for column in range(k):
            same = retrieved_labels[row][column] == query_labels[row]
            canvas.paste(_tile(retrieved_images[row, column], SAME_CLASS if same else OTHER_CLASS, tile, border),
                         (cell * (column + 1) + gap, row * cell))
    draw.line([(cell + gap // 2, 0), (cell + gap // 2, cell * queries)], fill=(150, 150, 150), width=1)
    canvas.save(path, format="PNG")
