"""The ground around the vehicle: surfaces, markings, stains, neighbours and trees.

A scene is laid out in the *main vehicle's* frame (metres; x along its axis, y to its right),
because the clutter that matters is aligned with it: parking-stall lines run along a parked
car, lane markings along a driving one, neighbours sit in the next stall or lane. Colours are
display-level RGB in [0, 1] (what an 8-bit overhead product shows, not physical reflectance).

Output: a flat-colour *tone* image (surfaces and paint, drawn with PIL at the supersampled
resolution; the renderer multiplies in texture and shadows afterwards with numpy), the
neighbouring vehicles to draw, and tree canopies that will occlude part of the chip.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .catalog import PAINTS, VehicleModel, luminance, vehicle_catalog

RGB = tuple[float, float, float]

ASPHALT_NEW: RGB = (0.24, 0.25, 0.26)
ASPHALT_OLD: RGB = (0.46, 0.46, 0.45)
CONCRETE: RGB = (0.66, 0.65, 0.61)
GRASS: RGB = (0.26, 0.35, 0.16)
SOIL: RGB = (0.47, 0.41, 0.33)
WHITE_PAINT: RGB = (0.88, 0.88, 0.86)
YELLOW_PAINT: RGB = (0.86, 0.73, 0.22)

# Texture amplitude per surface, stored in an 8-bit map as amplitude * _AMP_SCALE.
_AMP_SCALE = 400.0
AMP_ASPHALT, AMP_CONCRETE, AMP_GRASS = 0.10, 0.06, 0.32

_NEIGHBOUR_POOL_SEED = 0x0A11CE
_SMALL_SUPERCLASSES = ("sedan", "hatchback", "wagon", "suv", "pickup", "van")
# Scene odds by superclass (parking stalls, road lane, concrete lot / yard).
_SCENE_WEIGHTS = {
    "bus": (0.0, 0.7, 0.3),
    "box_truck": (0.15, 0.5, 0.35),
    "van": (0.4, 0.35, 0.25),
    "pickup": (0.4, 0.35, 0.25),
}
_CAR_SCENE_WEIGHTS = (0.5, 0.3, 0.2)


def ink(mode: str, rgb: RGB) -> int | tuple[int, int, int]:
    """A PIL fill value for a display-level colour in image mode 'L' or 'RGB'."""
    if mode == "L":
        return _byte(luminance(rgb))
    return (_byte(rgb[0]), _byte(rgb[1]), _byte(rgb[2]))


def _byte(level: float) -> int:
    """A display level in [0, 1] as a 0-255 PIL value (rounded, clipped)."""
    return min(255, max(0, int(255.0 * level + 0.5)))


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def scale(a: RGB, k: float) -> RGB:
    return (min(1.0, a[0] * k), min(1.0, a[1] * k), min(1.0, a[2] * k))


def random_paint(rng: random.Random) -> RGB:
    threshold = rng.random() * sum(w for _, w in PAINTS.values())
    for rgb, weight in PAINTS.values():
        threshold -= weight
        if threshold < 0:
            return rgb
    return rgb


@lru_cache(maxsize=1)
def neighbour_pool() -> tuple[tuple[VehicleModel, ...], tuple[VehicleModel, ...]]:
    """(cars and light vehicles, any vehicle) from a catalogue no dataset uses for classes."""
    pool = vehicle_catalog(96, seed=_NEIGHBOUR_POOL_SEED)
    small = tuple(m for m in pool if m.superclass in _SMALL_SUPERCLASSES)
    return small, tuple(pool)


@dataclass
class Placement:
    """A vehicle to draw: where (supersampled pixels), which way, and in which paint."""

    model: VehicleModel
    centre: tuple[float, float]
    heading_deg: float
    paint_rgb: RGB


@dataclass
class Scene:
    name: str
    tone: Image.Image
    amplitude: np.ndarray | float          # texture amplitude, per pixel or for the whole chip
    neighbours: list[Placement] = field(default_factory=list)
    trees: list[tuple[list[tuple[float, float, float]], float]] = field(default_factory=list)


_UNIT_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                         np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], axis=1)


class _Canvas:
    """Collects polygons given in the main vehicle's frame (metres), then draws them all.

    Queuing lets one matrix product place every polygon of the scene (small numpy calls per
    polygon would cost more than drawing them).
    """

    def __init__(self, mode: str, size: int, base: RGB, amplitude: float,
                 centre: tuple[float, float], matrix: np.ndarray, px_per_m: float) -> None:
        self.mode, self.size, self.base, self.base_amplitude = mode, size, base, amplitude
        self.centre = np.asarray(centre)
        self.matrix = matrix
        self.px_per_m = px_per_m
        self.half_field_m = 0.75 * size / px_per_m   # beyond the chip's half-diagonal
        self._queue: list[tuple[np.ndarray, RGB, float | None]] = []

    def to_px(self, points_m: np.ndarray) -> np.ndarray:
        return points_m @ self.matrix + self.centre

    def polygon(self, points_m, rgb: RGB, amplitude: float | None = None) -> None:
        """Queue a surface or paint polygon; `amplitude` overrides the texture strength under it."""
        self._queue.append((np.asarray(points_m, dtype=np.float64), rgb, amplitude))

    def band_x(self, x0: float, x1: float, y: float, width: float, rgb: RGB) -> None:
        """A stripe of paint running along x at lateral offset y."""
        self.polygon(_rect(x0, x1, y - width / 2, y + width / 2), rgb)

    def band_y(self, y0: float, y1: float, x: float, width: float, rgb: RGB) -> None:
        self.polygon(_rect(x - width / 2, x + width / 2, y0, y1), rgb)

    def ellipse(self, x: float, y: float, rx: float, ry: float, rgb: RGB) -> None:
        self.polygon(_UNIT_CIRCLE * (rx, ry) + (x, y), rgb)

    def finish(self, name: str) -> Scene:
        tone = Image.new(self.mode, (self.size, self.size), ink(self.mode, self.base))
        amplitude: np.ndarray | float = self.base_amplitude
        if self._queue:
            draw = ImageDraw.Draw(tone)
            flat = self.to_px(np.concatenate([points for points, _, _ in self._queue])).ravel().tolist()
            amp_image, amp_draw, start = None, None, 0
            for points, rgb, amp in self._queue:
                stop = start + 2 * len(points)
                draw.polygon(flat[start:stop], fill=ink(self.mode, rgb))
                if amp is not None:
                    if amp_draw is None:
                        amp_image = Image.new("L", (self.size, self.size), int(self.base_amplitude * _AMP_SCALE))
                        amp_draw = ImageDraw.Draw(amp_image)
                    amp_draw.polygon(flat[start:stop], fill=min(255, int(amp * _AMP_SCALE)))
                start = stop
            if amp_image is not None:
                amplitude = np.asarray(amp_image, dtype=np.float32) * (1.0 / _AMP_SCALE)
        return Scene(name, tone, amplitude)


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _asphalt(rng: random.Random) -> RGB:
    return mix(ASPHALT_NEW, ASPHALT_OLD, rng.random())


def _line_paint(rng: random.Random, ground: RGB, yellow_odds: float) -> RGB:
    """Marking paint, worn towards the ground colour by a random amount."""
    paint = YELLOW_PAINT if rng.random() < yellow_odds else WHITE_PAINT
    return mix(paint, ground, 0.55 * rng.random() ** 2)


def _stains(canvas: _Canvas, rng: random.Random, ground: RGB, count: int) -> None:
    """Oil drips, tyre marks and patched asphalt: darker (sometimes lighter) irregular blobs."""
    reach = canvas.half_field_m
    for _ in range(count):
        x, y = rng.uniform(-reach, reach), rng.uniform(-reach, reach)
        shade = rng.uniform(0.72, 0.92) if rng.random() < 0.8 else rng.uniform(1.06, 1.15)
        canvas.ellipse(x, y, rng.uniform(0.2, 1.2), rng.uniform(0.15, 0.8), scale(ground, shade))


def _neighbour(rng: random.Random, canvas: _Canvas, pool: tuple[VehicleModel, ...],
               x_m: float, y_m: float, heading_deg: float) -> Placement:
    model = pool[int(rng.random() * len(pool))]
    col, row = canvas.to_px(np.array([[x_m, y_m]]))[0]
    return Placement(model, (float(col), float(row)), heading_deg % 360.0, random_paint(rng))


def parking_scene(canvas: _Canvas, rng: random.Random, main: VehicleModel, heading: float,
                  ground: RGB, neighbour_odds: float) -> Scene:
    """A car in a marked stall: stall lines along its sides, cars in the next stalls."""
    stall_width = rng.uniform(2.4, 2.9)
    depth = rng.uniform(4.9, 5.6)
    offset_y = rng.uniform(-0.3, 0.3)   # the car is rarely centred in its stall
    offset_x = rng.uniform(-0.45, 0.45)
    paint = _line_paint(rng, ground, yellow_odds=0.25)
    line_width = rng.uniform(0.10, 0.16)
    _stains(canvas, rng, ground, int(rng.random() * 4))
    for k in range(-3, 3):
        y_line = -offset_y + (k + 0.5) * stall_width
        canvas.band_x(offset_x - depth / 2, offset_x + depth / 2, y_line, line_width, paint)
    if rng.random() < 0.6:   # head line closing the row at the front or the rear
        x_end = offset_x + (depth / 2 if rng.random() < 0.5 else -depth / 2)
        canvas.band_y(-canvas.half_field_m, canvas.half_field_m, x_end, line_width, paint)
    small_pool, _ = neighbour_pool()
    neighbours = []
    for k in (-2, -1, 1, 2):
        y = -offset_y + k * stall_width + rng.uniform(-0.25, 0.25)
        if rng.random() < neighbour_odds:
            flip = 180.0 if rng.random() < 0.3 else 0.0
            x = offset_x + rng.uniform(-0.5, 0.5)
            neighbours.append(_neighbour(rng, canvas, small_pool, x, y, heading + flip + rng.uniform(-4, 4)))
        else:   # an empty stall shows its oil stain
            canvas.ellipse(offset_x + rng.uniform(-1.0, 1.0), y, rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5),
                           scale(ground, rng.uniform(0.7, 0.85)))
    scene = canvas.finish("parking")
    scene.neighbours = neighbours
    return scene


def road_scene(canvas: _Canvas, rng: random.Random, main: VehicleModel, heading: float,
               ground: RGB, neighbour_odds: float) -> Scene:
    """A vehicle in a lane: dashed / double centre line, edge line, curb and verge."""
    lane = rng.uniform(3.2, 3.8)
    offset_y = rng.uniform(-0.4, 0.4)
    reach = canvas.half_field_m
    left, right = -offset_y - lane / 2, -offset_y + lane / 2
    paint = _line_paint(rng, ground, yellow_odds=0.0)
    _stains(canvas, rng, ground, int(rng.random() * 3))
    if rng.random() < 0.3:   # double yellow centre line
        yellow = _line_paint(rng, ground, yellow_odds=1.0)
        for dy in (-0.1, 0.1):
            canvas.band_x(-reach, reach, left + dy, 0.1, yellow)
    else:
        period, dash, phase = rng.choice(((9.0, 3.0), (6.0, 3.0), (12.0, 4.0))) + (rng.uniform(0, 12),)
        for x0 in np.arange(-reach - phase % period, reach, period):
            canvas.band_x(x0, x0 + dash, left, 0.12, paint)
    if rng.random() < 0.55:   # edge line, curb, sidewalk and grass verge on the right
        canvas.band_x(-reach, reach, right - 0.3, 0.15, paint)
        curb = right + rng.uniform(0.2, 1.2)
        walk = curb + rng.uniform(1.5, 2.6)
        canvas.polygon(_rect(-reach, reach, curb, walk), scale(CONCRETE, rng.uniform(0.85, 1.05)), AMP_CONCRETE)
        canvas.band_x(-reach, reach, curb + 0.08, 0.16, scale(CONCRETE, 1.12))
        canvas.polygon(_rect(-reach, reach, walk, walk + 20.0), scale(GRASS, rng.uniform(0.8, 1.2)), AMP_GRASS)
    else:
        canvas.band_x(-reach, reach, right, 0.12, paint)
    _, any_pool = neighbour_pool()
    neighbours = []
    for direction in (-1.0, 1.0):   # queued ahead / behind in the same lane
        if rng.random() < neighbour_odds * 0.6:
            other = any_pool[int(rng.random() * len(any_pool))]
            gap = rng.uniform(1.2, 6.0)
            x = direction * (main.length_m / 2 + gap + other.length_m / 2)
            col, row = canvas.to_px(np.array([[x, rng.uniform(-0.3, 0.3)]]))[0]
            neighbours.append(Placement(other, (float(col), float(row)),
                                        (heading + rng.uniform(-3, 3)) % 360.0, random_paint(rng)))
    if rng.random() < neighbour_odds * 0.6:   # oncoming or overtaking traffic in the next lane
        flip = 180.0 if rng.random() < 0.6 else 0.0
        neighbours.append(_neighbour(rng, canvas, any_pool, rng.uniform(-5, 5), left - lane / 2 + rng.uniform(-0.3, 0.3),
                                     heading + flip + rng.uniform(-3, 3)))
    scene = canvas.finish("road")
    scene.neighbours = neighbours
    return scene


def lot_scene(canvas: _Canvas, rng: random.Random, main: VehicleModel, heading: float,
              ground: RGB, neighbour_odds: float) -> Scene:
    """A concrete apron or driveway: joint grid, stains, maybe a grass edge and a neighbour."""
    reach = canvas.half_field_m
    spacing = rng.uniform(3.0, 6.0)
    joint = scale(ground, rng.uniform(0.7, 0.85))
    phase_x, phase_y = rng.uniform(0, spacing), rng.uniform(0, spacing)
    _stains(canvas, rng, ground, 1 + int(rng.random() * 4))
    for x in np.arange(-reach - phase_x, reach, spacing):
        canvas.band_y(-reach, reach, x, 0.04, joint)
    for y in np.arange(-reach - phase_y, reach, spacing):
        canvas.band_x(-reach, reach, y, 0.04, joint)
    if rng.random() < 0.4:
        edge = rng.choice((-1.0, 1.0)) * rng.uniform(main.width_m / 2 + 0.8, reach)
        far = edge + np.sign(edge) * 30.0
        canvas.polygon(_rect(-reach, reach, min(edge, far), max(edge, far)), scale(GRASS, rng.uniform(0.8, 1.2)),
                       AMP_GRASS)
    small_pool, _ = neighbour_pool()
    neighbours = []
    if rng.random() < neighbour_odds * 0.5:
        side = rng.choice((-1.0, 1.0))
        y = side * (main.width_m / 2 + rng.uniform(1.6, 2.6))
        neighbours.append(_neighbour(rng, canvas, small_pool, rng.uniform(-1.5, 1.5), y,
                                     heading + rng.choice((0.0, 180.0)) + rng.uniform(-10, 10)))
    scene = canvas.finish("lot")
    scene.neighbours = neighbours
    return scene


def tree_canopies(rng: random.Random, canvas: _Canvas) -> list[tuple[list[tuple[float, float, float]], float]]:
    """One tree whose crown reaches into the chip: clustered discs (px) and its height (m)."""
    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(1.8, 4.5)
    cx, cy = distance * np.cos(angle), distance * np.sin(angle)
    discs = []
    for _ in range(4 + int(rng.random() * 4)):
        dx, dy = rng.uniform(-1.6, 1.6), rng.uniform(-1.6, 1.6)
        col, row = canvas.to_px(np.array([[cx + dx, cy + dy]]))[0]
        discs.append((float(col), float(row), rng.uniform(0.9, 2.2) * canvas.px_per_m))
    return [(discs, rng.uniform(5.0, 10.0))]


def compose_scene(rng: random.Random, mode: str, size: int, main: VehicleModel, heading: float,
                  centre: tuple[float, float], matrix: np.ndarray, px_per_m: float,
                  clutter: bool, neighbour_odds: float, tree_odds: float) -> Scene:
    """Pick a scene type for this vehicle and lay it out."""
    if not clutter:
        canvas = _Canvas(mode, size, ASPHALT_NEW, AMP_ASPHALT, centre, matrix, px_per_m)
        return canvas.finish("plain")
    weights = _SCENE_WEIGHTS.get(main.superclass, _CAR_SCENE_WEIGHTS)
    u = rng.random()
    if u < weights[0]:
        builder, ground, amp = parking_scene, _asphalt(rng), AMP_ASPHALT
    elif u < weights[0] + weights[1]:
        builder, ground, amp = road_scene, _asphalt(rng), AMP_ASPHALT
    else:
        builder, ground, amp = lot_scene, scale(CONCRETE, rng.uniform(0.82, 1.05)), AMP_CONCRETE
    canvas = _Canvas(mode, size, ground, amp, centre, matrix, px_per_m)
    scene = builder(canvas, rng, main, heading, ground, neighbour_odds)
    if rng.random() < tree_odds:
        scene.trees = tree_canopies(rng, canvas)
    return scene
