"""PR curves and retrieval grids are written as valid PNG files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from components.evaluation import retrieval_metrics
from components.evaluation.plots import (
    OTHER_CLASS_COLOUR,
    QUERY_COLOUR,
    SAME_CLASS_COLOUR,
    plot_curves,
    plot_pr_curves,
    retrieval_grid,
)


def test_pr_curves_of_several_runs_make_one_png(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((120, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 120)
    curves = {}
    for name, noise in (("triplet", 0.1), ("cosine-ce", 1.0)):
        metrics = retrieval_metrics(features + noise * rng.standard_normal(features.shape), labels,
                                    return_pr_curve=True)
        curves[name] = (metrics["pr_recall"], metrics["pr_precision"])
    path = plot_pr_curves(curves, tmp_path / "plots" / "pr.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200
    assert [p.name for p in path.parent.iterdir()] == ["pr.png"]  # no temporary left behind


def test_pr_curves_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_pr_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="curve 'a'"):
        plot_pr_curves({"a": (np.zeros(3), np.zeros(4))}, tmp_path / "x.png")


def test_convergence_curves_draw_one_coloured_line_per_run(tmp_path):
    epochs = np.arange(1, 6)
    series = {"proxy_anchor": (epochs, 1 - 0.5 ** epochs), "triplet": (epochs[::-1], 0.1 * epochs[::-1]),
              "triplet unseen": (epochs, 0.05 * epochs)}
    path = plot_curves(series, tmp_path / "curves.png", "epoch", "R@1", "convergence",
                       companions={"triplet unseen": "triplet"})
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # matplotlib's first two cycle colours (C0 blue, C1 orange) are drawn: one colour per run,
    # "triplet unseen" dashed in triplet's, so the third (C2 green) is never used.
    def drawn(colour):
        return (np.abs(pixels.astype(int) - colour).sum(axis=1) < 30).sum()

    for colour in ((31, 119, 180), (255, 127, 14)):
        assert drawn(colour) > 50, colour
    assert drawn((44, 160, 44)) == 0
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_curves({}, tmp_path / "x.png", "x", "y", "t")
    with pytest.raises(ValueError, match="series 'a'"):
        plot_curves({"a": (np.zeros(3), np.zeros(2))}, tmp_path / "x.png", "x", "y", "t")
    with pytest.raises(ValueError, match="companions names series that are not plotted"):
        plot_curves(series, tmp_path / "x.png", "x", "y", "t", companions={"triplet unseen": "ce"})


def test_a_companion_takes_its_partners_colour_not_a_namesakes(tmp_path):
    # "triplet (n=3) unseen" starts with "triplet " but accompanies "triplet (n=3)" (C1 orange).
    epochs = np.arange(1, 6)
    series = {"triplet": (epochs, 0.2 + 0.0 * epochs), "triplet (n=3)": (epochs, 0.5 + 0.0 * epochs),
              "triplet (n=3) unseen": (epochs, 0.8 + 0.0 * epochs)}
    path = plot_curves(series, tmp_path / "pair.png", "epoch", "R@1", "t",
                       companions={"triplet (n=3) unseen": "triplet (n=3)"})
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)

    def drawn(colour):
        return int((np.abs(pixels - colour).sum(axis=1) < 30).sum())

    blue, orange = drawn((31, 119, 180)), drawn((255, 127, 14))   # C0: "triplet", C1: the pair
    assert drawn((44, 160, 44)) == 0 and orange > 1.5 * blue, (blue, orange)


def test_convergence_bands_shade_the_spread_in_the_line_colour(tmp_path):
    epochs = np.arange(1, 6)
    series = {"triplet (n=3)": (epochs, 0.1 * epochs)}

    def light_blue_pixels(spread):
        path = plot_curves(series, tmp_path / "band.png", "epoch", "R@1", "t", spread=spread)
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
        # C0 blue at alpha 0.15 over white: about (221, 233, 244)
        return int((np.abs(pixels - (221, 233, 244)).sum(axis=1) < 12).sum())

    banded, plain = light_blue_pixels({"triplet (n=3)": np.full(5, 0.1)}), light_blue_pixels(None)
    assert banded > 2000 and banded > 10 * plain     # plain: only the anti-aliased edges of the line
    with pytest.raises(ValueError, match="not plotted"):
        plot_curves(series, tmp_path / "x.png", "x", "y", "t", spread={"ce": np.zeros(5)})
    with pytest.raises(ValueError, match="shape"):
        plot_curves(series, tmp_path / "x.png", "x", "y", "t", spread={"triplet (n=3)": np.zeros(4)})


@pytest.mark.parametrize("channels", [None, 3])
def test_retrieval_grid_frames_results_by_class(tmp_path, channels):
    rng = np.random.default_rng(1)
    shape = (2, 16, 16) if channels is None else (2, 16, 16, channels)
    queries = rng.integers(0, 256, shape, dtype=np.uint8)
    retrieved = rng.integers(0, 256, (2, 3) + shape[1:], dtype=np.uint8)
    labels = ["car", "bus"]
    retrieved_labels = [["car", "bus", "car"], ["car", "car", "bus"]]
    border, gap = 3, 8
    path = retrieval_grid(queries, retrieved, labels, retrieved_labels, tmp_path / "grid.png",
                          tile=None, border=border, gap=gap)
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    cell = 16 + 2 * border
    assert pixels.shape == (2 * cell + 3 * gap, 4 * cell + 6 * gap, 3)

    def frame_colour(row, column):  # top-left pixel of a tile's frame
        top = gap + row * (cell + gap)
        left = gap + column * (cell + gap) + (gap if column else 0)
        return tuple(pixels[top, left])

    assert frame_colour(0, 0) == QUERY_COLOUR
    expected = [[SAME_CLASS_COLOUR, OTHER_CLASS_COLOUR, SAME_CLASS_COLOUR],
                [OTHER_CLASS_COLOUR, OTHER_CLASS_COLOUR, SAME_CLASS_COLOUR]]
    for row in range(2):
        for rank in range(3):
            assert frame_colour(row, rank + 1) == expected[row][rank]


def test_retrieval_grid_resizes_tiles_and_checks_inputs(tmp_path):
    queries = np.zeros((1, 32, 32), dtype=np.uint8)
    retrieved = np.zeros((1, 2, 32, 32), dtype=np.uint8)
    path = retrieval_grid(queries, retrieved, [0], [[0, 1]], tmp_path / "g.png", tile=48)
    with Image.open(path) as image:
        assert image.size[1] == 48 + 2 * 3 + 2 * 8
    with pytest.raises(TypeError, match="uint8"):
        retrieval_grid(queries.astype(np.float32), retrieved, [0], [[0, 1]], tmp_path / "g.png")
    with pytest.raises(ValueError, match="1 query images, but 2 rows"):
        retrieval_grid(queries, np.zeros((2, 2, 32, 32), np.uint8), [0], [[0, 1]], tmp_path / "g.png")
