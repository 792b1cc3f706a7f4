"""Plan-view geometry of a vehicle model: the polygons a nadir sensor sees, in metres.

Local frame: x along the vehicle axis (front = +x), y to the vehicle's right, origin at the
centre of the footprint. Every polygon has a *role* ("edge", "top", "glass", ...) that the
renderer turns into a colour per instance (paint varies per instance, geometry does not), so
the geometry is built once per model and cached. All polygons of a vehicle are stored in one
vertex array so that placing a vehicle in the image is a single matrix product.

What makes a car look like a car from above, and what this draws:
  * the body outline with rounded corners, the darker curved shoulders around a flat top;
  * the greenhouse: windshield, side and rear glass (dark) around the painted roof;
  * small cues that differ between models: lamps, mirrors, sunroof, roof rails or bars,
    a pickup's bed, a truck's box with roof ribs, a bus's air-conditioning units and hatches.
Shadow casters record which outline to extrude, between which fractions of the height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .catalog import VehicleModel

# Quarter-circle samples for rounded corners: 4 points per corner is smooth once supersampled.
_ARC = np.linspace(0.0, math.pi / 2, 4)
_ARC_COS, _ARC_SIN = np.cos(_ARC), np.sin(_ARC)
_DETAIL_ROLES = frozenset({"lamp_front", "lamp_rear", "mirror"})


@dataclass(frozen=True)
class VehicleParts:
    """All polygons of one vehicle model, in draw order, plus its shadow casters."""

    vertices: np.ndarray                         # (N, 2) metres, local frame
    polygons: tuple[tuple[int, int, str], ...]   # (start, stop, role) rows of `vertices`
    coarse_polygons: tuple[tuple[int, int, str], ...]  # without small details (for neighbours)
    lit: np.ndarray                              # (N,) bool: upper surfaces nudged towards the sun
    shadows: tuple[tuple[int, int], ...]         # outlines that cast a shadow
    shadow_low: np.ndarray                       # (N,) per vertex: the extrusion's bottom and top,
    shadow_high: np.ndarray                      #   as fractions of the vehicle height
    contact: tuple[int, int]                     # rows of a slightly enlarged footprint
    height_m: float


class _Builder:
    """Accumulates polygons; keeps the bookkeeping out of the shape code."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._lit: list[bool] = []
        self._polygons: list[tuple[int, int, str]] = []
        self._shadows: list[tuple[int, int, float, float]] = []
        self._count = 0

    def add(self, points: np.ndarray, role: str, lit: bool = False) -> tuple[int, int]:
        points = np.asarray(points, dtype=np.float64)
        span = (self._count, self._count + len(points))
        self._chunks.append(points)
        self._lit.extend([lit] * len(points))
        self._polygons.append((span[0], span[1], role))
        self._count = span[1]
        return span

    def cast(self, span: tuple[int, int], low: float, high: float) -> None:
        """This outline casts a shadow as if extruded from `low` to `high` x vehicle height."""
        self._shadows.append((span[0], span[1], low, high))

    def build(self, height_m: float) -> VehicleParts:
        # Contact shadow: the ground right under the body is dark whatever the sun does.
        footprint_start, footprint_stop, _ = self._polygons[0]
        contact = np.concatenate(self._chunks)[footprint_start:footprint_stop] * 1.05
        vertices = np.concatenate([*self._chunks, contact])
        count = len(vertices)
        lit = np.array(self._lit + [False] * len(contact), dtype=bool)
        low, high = np.zeros(count), np.zeros(count)
        for start, stop, lo, hi in self._shadows:
            low[start:stop], high[start:stop] = lo, hi
        for array in (vertices, lit, low, high):
            array.setflags(write=False)
        polygons = tuple(self._polygons)
        return VehicleParts(
            vertices=vertices, polygons=polygons,
            coarse_polygons=tuple(p for p in polygons if p[2] not in _DETAIL_ROLES), lit=lit,
            shadows=tuple((start, stop) for start, stop, _, _ in self._shadows),
            shadow_low=low, shadow_high=high, contact=(self._count, count), height_m=height_m)


def rounded_box(x0: float, x1: float, half_rear: float, half_front: float,
                radius_rear: float, radius_front: float) -> np.ndarray:
    """A plan-view box from x0 (rear) to x1 (front) with rounded corners (16 vertices)."""
    length = x1 - x0
    r_front = max(0.0, min(radius_front, half_front * 0.95, length * 0.45))
    r_rear = max(0.0, min(radius_rear, half_rear * 0.95, length * 0.45))
    corners = (
        (x1 - r_front, half_front - r_front, r_front, 0),      # front right, 0..90 deg
        (x0 + r_rear, half_rear - r_rear, r_rear, 1),          # rear right, 90..180
        (x0 + r_rear, -half_rear + r_rear, r_rear, 2),         # rear left, 180..270
        (x1 - r_front, -half_front + r_front, r_front, 3),     # front left, 270..360
    )
    points = []
    for cx, cy, r, quadrant in corners:
        # Rotate the quarter arc by quadrant * 90 degrees.
        cos_q, sin_q = [(1, 0), (0, 1), (-1, 0), (0, -1)][quadrant]
        xs = cx + r * (_ARC_COS * cos_q - _ARC_SIN * sin_q)
        ys = cy + r * (_ARC_COS * sin_q + _ARC_SIN * cos_q)
        points.append(np.stack([xs, ys], axis=1))
    return np.concatenate(points)


def rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _body(b: _Builder, x0: float, x1: float, half_w: float, radius: float, taper: float,
          edge_role: str, top_role: str, shoulder_m: float, shadow_top: float) -> None:
    """Outline in the shoulder colour, a half-lit band, then the flat upper surface.

    The curved flanks of a body face away from the sensor and look darker; two steps of
    shading read as a rounded body once blurred.
    """
    outline = b.add(rounded_box(x0, x1, half_w, half_w * taper, radius * 0.7, radius), edge_role)
    b.cast(outline, 0.0, shadow_top)
    for inset, role in ((shoulder_m * 0.5, edge_role + "_mid"), (shoulder_m, top_role)):
        b.add(rounded_box(x0 + inset * 0.6, x1 - inset * 0.6, half_w - inset, half_w * taper - inset,
                          max(0.0, radius * 0.7 - inset * 0.5), max(0.0, radius - inset * 0.5)),
              role, lit=True)


def _greenhouse(b: _Builder, m: VehicleModel, x_rear_glass: float, x_roof_rear: float,
                x_roof_front: float, x_windshield: float, half_w: float, side_glass_m: float) -> float:
    """Glass ring (windshield, side and rear windows) and the roof on it; returns roof half width."""
    half_g = half_w - m.cabin_inset_m
    ring = np.array([
        (x_rear_glass, -half_g * 0.93), (x_roof_rear, -half_g), (x_roof_front, -half_g),
        (x_windshield, -half_g * 0.95), (x_windshield, half_g * 0.95), (x_roof_front, half_g),
        (x_roof_rear, half_g), (x_rear_glass, half_g * 0.93),
    ])
    span = b.add(ring, "glass")
    b.cast(span, 0.5, 1.0)
    half_roof = half_g - side_glass_m
    radius = 0.28 if m.roof_shape == "rounded" else 0.08
    b.add(rounded_box(x_roof_rear, x_roof_front, half_roof, half_roof, radius, radius), "roof", lit=True)
    return half_roof


def _lamps(b: _Builder, x_rear: float, x_front: float, half_w: float, taper: float, size_m: float) -> None:
    hf = half_w * taper
    for side in (-1.0, 1.0):
        b.add(rect(x_front - 0.16, x_front - 0.03, side * (hf - 0.14), side * (hf - 0.14 - size_m)), "lamp_front")
        b.add(rect(x_rear + 0.03, x_rear + 0.12, side * (half_w - 0.10), side * (half_w - 0.10 - size_m * 0.8)),
              "lamp_rear")


def _mirrors(b: _Builder, x: float, half_w: float, reach_m: float = 0.17) -> None:
    for side in (-1.0, 1.0):
        b.add(rect(x - 0.26, x - 0.06, side * (half_w - 0.04), side * (half_w + reach_m)), "mirror")


def _stripes(b: _Builder, m: VehicleModel, x0: float, x1: float) -> None:
    if m.stripe == "center":
        b.add(rect(x0, x1, -0.14, 0.14), "stripe")
    elif m.stripe == "twin":
        for y in (-0.22, 0.10):
            b.add(rect(x0, x1, y, y + 0.12), "stripe")


def _roof_feature(b: _Builder, feature: str, x0: float, x1: float, half_roof: float) -> None:
    """Things mounted on a car or van roof spanning x0..x1 (rear..front)."""
    mid = 0.5 * (x0 + x1)
    if feature == "sunroof":
        b.add(rect(x1 - 0.95, x1 - 0.2, -0.36, 0.36), "glass")
    elif feature == "panoramic":
        b.add(rounded_box(x0 + 0.12, x1 - 0.1, half_roof - 0.09, half_roof - 0.09, 0.12, 0.12), "glass")
    elif feature in ("rails", "ladder_rack"):
        for side in (-1.0, 1.0):
            b.add(rect(x0 + 0.05, x1 - 0.12, side * (half_roof - 0.02), side * (half_roof - 0.09)), "trim")
        if feature == "ladder_rack":
            for x in np.linspace(x0 + 0.3, x1 - 0.4, 4):
                b.add(rect(x - 0.04, x + 0.04, -half_roof + 0.02, half_roof - 0.02), "trim")
    elif feature == "crossbars":
        for x in (mid - 0.45, mid + 0.4):
            b.add(rect(x - 0.04, x + 0.04, -half_roof - 0.04, half_roof + 0.04), "trim")
    elif feature == "cargo_box":
        length = min(1.9, x1 - x0 - 0.1)
        b.add(rounded_box(mid - length / 2, mid + length / 2, 0.42, 0.38, 0.3, 0.35), "cargo", lit=True)
    elif feature == "vents":
        for x in (x1 - 0.7, mid - 0.6):
            b.add(rect(x - 0.22, x + 0.22, -0.22, 0.22), "unit")
    elif feature == "high_roof":
        b.add(rounded_box(x0 + 0.2, x1 - 0.35, half_roof - 0.08, half_roof - 0.12, 0.1, 0.35), "roof_panel",
              lit=True)


def _car(m: VehicleModel) -> VehicleParts:
    """Sedans, hatchbacks, wagons, SUVs, vans and pickups share one layout front to rear."""
    b = _Builder()
    length, half_w = m.length_m, m.width_m / 2
    x_rear, x_front = -length / 2, length / 2
    taper = 0.93 if m.superclass != "van" else 0.97
    tall = m.superclass in ("van",)
    _body(b, x_rear, x_front, half_w, m.corner_radius_m, taper, "edge", "top",
          shoulder_m=0.14 if not tall else 0.09, shadow_top=0.9 if tall else 0.55)
    _lamps(b, x_rear, x_front, half_w, taper, 0.30 + 0.25 * ((m.platform * 7) % 5) / 4)
    _stripes(b, m, x_rear + 0.12, x_front - 0.12)
    x_windshield = x_front - m.hood_frac * length
    x_roof_front = x_windshield - m.windshield_frac * length
    x_roof_rear = x_roof_front - m.roof_frac * length
    x_rear_glass = x_roof_rear - m.rear_window_frac * length
    if m.bed_frac > 0:
        x_rear_glass = max(x_rear_glass, _pickup_bed(b, m, x_rear, half_w) + 0.08)
        x_roof_rear = max(x_roof_rear, x_rear_glass + 0.02)
    side_glass = 0.05 if tall else 0.11
    half_roof = _greenhouse(b, m, x_rear_glass, x_roof_rear, x_roof_front, x_windshield, half_w, side_glass)
    _stripes(b, m, x_roof_rear + 0.05, x_roof_front - 0.05)
    _roof_feature(b, m.roof_feature, x_roof_rear, x_roof_front, half_roof)
    _mirrors(b, x_windshield, half_w)
    return b.build(m.height_m)


def _pickup_bed(b: _Builder, m: VehicleModel, x_rear: float, half_w: float) -> float:
    """Open cargo bed at the rear; returns the x of its front wall."""
    x_bed_front = x_rear + m.bed_frac * m.length_m
    b.add(rect(x_bed_front - 0.05, x_bed_front + 0.03, -half_w + 0.06, half_w - 0.06), "trim")
    floor = rounded_box(x_rear + 0.11, x_bed_front - 0.07, half_w - 0.11, half_w - 0.11, 0.05, 0.05)
    if m.bed_style == "tonneau":
        b.add(floor, "cargo")
        return x_bed_front
    b.add(floor, "bed" if m.bed_style != "liner" else "trim")
    if m.bed_style == "cargo":
        b.add(rect(x_rear + 0.3, x_rear + 0.9, -half_w + 0.25, 0.1), "cargo_light", lit=True)
        b.add(rect(x_bed_front - 0.8, x_bed_front - 0.25, -0.3, half_w - 0.2), "cargo_light", lit=True)
    return x_bed_front


def _box_truck(m: VehicleModel) -> VehicleParts:
    b = _Builder()
    length, half_w = m.length_m, m.width_m / 2
    x_rear, x_front = -length / 2, length / 2
    x_box_front = x_rear + m.bed_frac * length
    half_cab = half_w - 0.07
    x_cab_rear = x_box_front + 0.18
    _body(b, x_cab_rear, x_front, half_cab, m.corner_radius_m, 0.97, "edge", "top", 0.10, 0.8)
    _lamps(b, x_cab_rear, x_front, half_cab, 0.97, 0.3)
    x_windshield = x_front - m.hood_frac * length
    x_roof_front = x_windshield - m.windshield_frac * length
    b.add(rect(x_roof_front, x_windshield, -half_cab + 0.1, half_cab - 0.1), "glass")
    b.add(rounded_box(x_cab_rear + 0.08, x_roof_front, half_cab - 0.08, half_cab - 0.1, 0.1, 0.25), "roof",
          lit=True)
    if m.roof_feature == "deflector":
        b.add(np.array([(x_cab_rear + 0.1, -half_cab + 0.15), (x_roof_front - 0.3, -half_cab + 0.35),
                        (x_roof_front - 0.3, half_cab - 0.35), (x_cab_rear + 0.1, half_cab - 0.15)]),
              "cargo_light", lit=True)
    _mirrors(b, x_windshield + 0.1, half_cab, reach_m=0.28)
    box = b.add(rounded_box(x_rear, x_box_front, half_w, half_w, 0.06, 0.06), "box_edge")
    b.cast(box, 0.0, 1.0)
    b.add(rect(x_rear + 0.06, x_box_front - 0.06, -half_w + 0.07, half_w - 0.07), "box_top", lit=True)
    if m.rib_spacing_m > 0:
        for x in np.arange(x_rear + m.rib_spacing_m, x_box_front - 0.2, m.rib_spacing_m):
            b.add(rect(x - 0.025, x + 0.025, -half_w + 0.07, half_w - 0.07), "rib")
    if m.roof_feature == "reefer":
        b.add(rect(x_box_front - 0.75, x_box_front - 0.1, -0.75, 0.75), "unit", lit=True)
    return b.build(m.height_m)


def _bus(m: VehicleModel) -> VehicleParts:
    b = _Builder()
    length, half_w = m.length_m, m.width_m / 2
    x_rear, x_front = -length / 2, length / 2
    _body(b, x_rear, x_front, half_w, m.corner_radius_m, 0.98, "box_edge", "box_top", 0.12, 1.0)
    b.add(rect(x_front - 0.1 - m.windshield_frac * length, x_front - 0.08, -half_w + 0.12, half_w - 0.12),
          "glass")
    # Side window bands are just visible along the roof edges.
    for side in (-1.0, 1.0):
        b.add(rect(x_rear + 1.2, x_front - 0.6, side * (half_w - 0.06), side * (half_w - 0.16)), "glass")
    units = {"ac_rear": (-0.28,), "ac_center": (0.0,), "ac_front": (0.3,), "ac_double": (-0.2, 0.22)}
    for rel in units.get(m.roof_feature, (0.0,)):
        x = rel * length
        b.add(rounded_box(x - 1.3, x + 1.3, 0.85, 0.85, 0.2, 0.2), "unit", lit=True)
        for gx in (x - 0.6, x + 0.6):
            b.add(rect(gx - 0.3, gx + 0.3, -0.35, 0.35), "trim")
    for k in range(m.unit_count):
        x = x_front - 2.0 - k * (length - 4.5) / max(1, m.unit_count)
        b.add(rect(x - 0.45, x + 0.45, -0.4, 0.4), "hatch")
    b.add(rect(x_rear + 0.2, x_rear + 1.0, -0.8, 0.8), "trim")   # engine grille
    return b.build(m.height_m)


@lru_cache(maxsize=4096)
def vehicle_parts(model: VehicleModel) -> VehicleParts:
    """The cached plan-view polygons of ``model`` (geometry does not vary per instance)."""
    if model.superclass == "box_truck":
        return _box_truck(model)
    if model.superclass == "bus":
        return _bus(model)
    return _car(model)


def placement_matrix(heading_deg: float, px_per_m: float) -> np.ndarray:
    """2x2 matrix taking local (x forward, y right) metres to image (col, row) pixel offsets.

    Heading is a compass bearing: 0 = front towards the image top, clockwise positive.
    """
    h = math.radians(heading_deg)
    s, c = math.sin(h), math.cos(h)
    return px_per_m * np.array([[s, -c], [c, s]])
