"""Evaluation figures written as PNG files: PR curves of several runs, convergence curves
(a metric against epochs or training time, one line per run, optionally with a band such as
± std over seeds), and retrieval grids.

matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend
switch), so importing this module changes nothing and plotting works without a display.
Files are written atomically: a temporary sibling, then a rename.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SAME_CLASS_COLOUR = (40, 170, 60)     # green border: retrieved item has the query's class
OTHER_CLASS_COLOUR = (210, 40, 40)    # red border: a different class
QUERY_COLOUR = (60, 90, 200)          # blue border around the query itself
BACKGROUND = (255, 255, 255)


def _write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _line_series(series: Mapping[str, tuple[Any, Any]], what: str, x_name: str, y_name: str, plural: str):
    """Validated (name, x, y) float arrays: each value a pair of non-empty 1-d arrays of equal length."""
    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"{plural} must be a non-empty mapping of name -> ({x_name}, {y_name})")
    for name, pair in series.items():
        try:
            x, y = (np.asarray(values, dtype=float) for values in pair)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} {name!r} must be a pair ({x_name}, {y_name}) of 1-d arrays") from exc
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError(f"{what} {name!r}: {x_name} and {y_name} must be non-empty 1-d arrays of equal "
                             f"length, got shapes {x.shape} and {y.shape}")
        yield name, x, y


def _line_figure(path: str | os.PathLike, xlabel: str, ylabel: str, title: str, draw) -> Path:
    """A 6×5 in figure with one set of axes: `draw(axes)` adds the lines; labels, grid, legend
    and the atomic PNG write are shared by every line plot here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    draw(axes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return _write_atomically(path, buffer.getvalue())


def plot_pr_curves(
    curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike, title: str = "Precision-recall"
) -> Path:
    """One precision-recall line per name (e.g. per loss) on shared axes; returns the path.

    curves: name -> (recall, precision), 1-d arrays of equal length (e.g. the `pr_recall` /
    `pr_precision` outputs of `retrieval_metrics(..., return_pr_curve=True)`).
    """
    lines = list(_line_series(curves, "curve", "recall", "precision", plural="curves"))

    def draw(axes) -> None:
        for name, recall, precision in lines:
            axes.plot(recall, precision, label=str(name), linewidth=1.8)
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.02)

    return _line_figure(path, "recall", "precision", title, draw)


def plot_curves(
    series: Mapping[str, tuple[Any, Any]], path: str | os.PathLike, xlabel: str, ylabel: str, title: str,
    companions: Mapping[str, str] | None = None, spread: Mapping[str, Any] | None = None,
) -> Path:
    """One line per name on shared axes (e.g. validation R@1 of each run against epochs or
    training seconds). companions: name -> the name of the line it accompanies, drawn dashed in
    that line's colour (e.g. a run's unseen-class curve beside its validation one). series:
    name -> (x, y), 1-d arrays of equal, non-zero length; spread: name -> a 1-d array like y
    (e.g. the std over seeds), drawn as a band y ± spread in the line's colour."""
    lines = list(_line_series(series, "series", "x", "y", plural="series"))
    partners = dict(companions or {})
    bands = dict(spread or {})
    for what, names in (("companions", {*partners, *partners.values()}), ("spread", set(bands))):
        unknown = sorted(names - set(series))
        if unknown:
            raise ValueError(f"{what} names series that are not plotted: {unknown}")
    for name, band in bands.items():
        if np.shape(band) != np.shape(series[name][1]):
            raise ValueError(f"spread {name!r} must have the shape of its series' y, got {np.shape(band)}")

    def draw(axes) -> None:
        colours: dict[str, str] = {}
        # Accompanied lines first, so that each companion finds its partner's colour.
        for name, x, y in sorted(lines, key=lambda line: line[0] in partners):
            order = np.argsort(x, kind="stable")
            companion = name in partners
            (line,) = axes.plot(x[order], y[order], label=str(name), linewidth=1.8,
                                color=colours.get(partners[name]) if companion else None,
                                marker="." if x.size < 50 else None, linestyle="--" if companion else "-")
            colours[name] = line.get_color()
            if name in bands:
                band = np.asarray(bands[name], dtype=float)[order]
                axes.fill_between(x[order], y[order] - band, y[order] + band, color=line.get_color(), alpha=0.15,
                                  linewidth=0)

    return _line_figure(path, xlabel, ylabel, title, draw)


def _tile(image: Any, colour: tuple[int, int, int], tile: int | None, border: int, name: str) -> np.ndarray:
    """One framed RGB tile from an (H, W), (H, W, 1) or (H, W, 3) uint8 image."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 images, got dtype {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] > 3:
        pixels = pixels[:, :, :3]          # multi-band chips: show the first three bands
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{name}: each image must be (H, W) grayscale or (H, W, 3) RGB, got shape {pixels.shape}")
    if tile is not None:
        # Nearest neighbour keeps the chip's pixels visible (32x32 chips would be specks).
        pixels = np.asarray(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST))
    height, width = pixels.shape[:2]
    framed = np.empty((height + 2 * border, width + 2 * border, 3), dtype=np.uint8)
    framed[...] = colour
    framed[border:border + height, border:border + width] = pixels
    return framed


def retrieval_grid(
    query_images: Sequence[Any],
    retrieved_images: Sequence[Sequence[Any]],
    query_labels: Sequence[Any],
    retrieved_labels: Sequence[Sequence[Any]],
    path: str | os.PathLike,
    tile: int | None = 64,
    border: int = 3,
    gap: int = 8,
) -> Path:
    """A PNG with one row per query: the query (blue frame), a gap, then its top-k results, each
    framed green if it has the query's label and red otherwise. Returns the path.

    query_images: Q images; retrieved_images: Q rows of K images (e.g. a (Q, K, H, W[, 3])
    array); images are uint8, (H, W) grayscale or (H, W, 3) RGB. query_labels: Q labels;
    retrieved_labels: Q rows of K labels. tile: every image is resized to tile x tile pixels
    (nearest neighbour); None keeps sizes (then all images must have the same size).
    """
    num_queries = len(query_images)
    if num_queries == 0:
        raise ValueError("retrieval_grid needs at least one query image")
    if len(retrieved_images) != num_queries or len(query_labels) != num_queries or len(retrieved_labels) != num_queries:
        raise ValueError(
            f"retrieval_grid: {num_queries} query images, but {len(retrieved_images)} rows of retrieved images, "
            f"{len(query_labels)} query labels and {len(retrieved_labels)} rows of retrieved labels"
        )
    top_k = len(retrieved_images[0])
    for row in range(num_queries):
        if len(retrieved_images[row]) != top_k or len(retrieved_labels[row]) != top_k:
            raise ValueError(f"retrieval_grid: row {row} must have {top_k} retrieved images and labels")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive pixel size or None, got {tile}")
    if border < 1 or gap < 0:
        raise ValueError(f"border must be >= 1 and gap >= 0, got border={border}, gap={gap}")

    rows = []
    for row in range(num_queries):
        tiles = [_tile(query_images[row], QUERY_COLOUR, tile, border, "query_images")]
        for rank in range(top_k):
            same = retrieved_labels[row][rank] == query_labels[row]
            colour = SAME_CLASS_COLOUR if same else OTHER_CLASS_COLOUR
            tiles.append(_tile(retrieved_images[row][rank], colour, tile, border, "retrieved_images"))
        shapes = {framed.shape for framed in tiles}
        if len(shapes) != 1:
            raise ValueError(f"retrieval_grid: images of row {row} differ in size {sorted(shapes)}; pass tile=...")
        rows.append(tiles)
    cell_h, cell_w = rows[0][0].shape[:2]
    if any(framed.shape[:2] != (cell_h, cell_w) for tiles in rows for framed in tiles):
        raise ValueError("retrieval_grid: images differ in size between rows; pass tile=...")

    # The query column is followed by one extra gap that separates it from the results.
    canvas_w = (top_k + 1) * cell_w + (top_k + 3) * gap
    canvas_h = num_queries * cell_h + (num_queries + 1) * gap
    canvas = np.empty((canvas_h, canvas_w, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    for row, tiles in enumerate(rows):
        top = gap + row * (cell_h + gap)
        for column, framed in enumerate(tiles):
            left = gap + column * (cell_w + gap) + (gap if column > 0 else 0)
            canvas[top:top + cell_h, left:left + cell_w] = framed
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return _write_atomically(path, buffer.getvalue())
