"""Render one overhead chip of a vehicle model with per-instance nuisance.

Pipeline (S = size x supersampling factor):
  1. Draw the scene's flat colours (ground, markings, stains) and every shadow (vehicles and
     tree, swept from the sun direction) with PIL at S x S.
  2. One numpy pass: ground = tone x (1 + amplitude x texture) x (1 - shadow).
  3. Draw the neighbours, then the main vehicle (polygons from `geometry`), then tree canopy.
  4. Box-downsample to size x size (antialiasing), blur (optics / defocus / motion).
  5. Tone curve (exposure, haze, gamma), illumination gradient, sensor noise (read + shot),
     rounding to uint8, optional JPEG round trip.

Everything random comes from one ``random.Random`` seeded by a hash of (model, instance seed,
size), so a chip is reproducible anywhere; noise and textures are crops of fixed banks.
"""

from __future__ import annotations

import io
import math
import numbers
import random
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import textures
from ._hashing import mix64, text_key
from .catalog import VehicleModel, luminance
from .geometry import placement_matrix, vehicle_parts
from .scene import Placement, compose_scene, ink, random_paint, scale

_SALT_INSTANCE = 0x1A57
# Ground metres across a chip when the caller gives no GSD: ~10 m shows one car with its
# neighbours, as in chips cut around detections in 0.1-0.3 m imagery.
DEFAULT_FIELD_OF_VIEW_M = 10.0
MIN_SIZE, MAX_SIZE = 8, 1024


@dataclass(frozen=True)
class NuisanceConfig:
    """Which per-instance nuisances to apply (all on by default; `none()` for clean renders)."""

    clutter: bool = True            # scene context (parking lots, roads, markings, neighbours, trees); off: plain asphalt
    clutter_odds: float = 1.0       # with clutter on: chance that a chip has scene context (else plain asphalt)
    neighbour_odds: float = 0.55    # chance that each neighbouring slot holds a vehicle
    occlusion_odds: float = 0.15    # chance of a tree crown over part of the chip
    shadows: bool = True
    position_jitter: float = 0.08   # max centre offset, fraction of the chip side, per axis
    scale_jitter: float = 0.12      # max relative GSD change (only when gsd_m is not given)
    repaint_odds: float = 0.2       # chance an instance wears another paint than the model's usual
    blur: bool = True
    noise: bool = True
    illumination: bool = True       # exposure / haze / gamma / gradient

    def __post_init__(self) -> None:
        for name in ("clutter_odds", "neighbour_odds", "occlusion_odds", "repaint_odds"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NuisanceConfig.{name} must be in [0, 1], got {value!r}")
        for name in ("position_jitter", "scale_jitter"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise ValueError(f"NuisanceConfig.{name} must be in [0, 0.5), got {value!r}")

    def with_fields(self, **changes: Any) -> NuisanceConfig:
        """A copy with some fields changed; unknown names are a ValueError listing the valid ones."""
        valid = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ValueError(f"unknown nuisance field(s) {unknown}; valid fields: {valid}")
        return replace(self, **changes)

    @classmethod
    def none(cls) -> NuisanceConfig:
        """No clutter, neighbours, occlusion, shadows, jitter, blur, noise or lighting changes."""
        return cls(clutter=False, neighbour_odds=0.0, occlusion_odds=0.0, shadows=False,
                   position_jitter=0.0, scale_jitter=0.0, repaint_odds=0.0, blur=False,
                   noise=False, illumination=False)


FULL_NUISANCE = NuisanceConfig()


@dataclass(frozen=True)
class ChipMeta:
    """What was drawn (for tests, debugging and augmentation-aware evaluation)."""

    heading_deg: float                 # compass bearing of the vehicle's front, image up = 0
    gsd_m: float                       # metres per output pixel
    centre_px: tuple[float, float]     # (col, row) of the vehicle centre in the output chip
    sun_azimuth_deg: float
    sun_elevation_deg: float
    scene: str
    neighbours: int
    occluded: bool


def default_gsd_m(size: int) -> float:
    """Ground sample distance that shows DEFAULT_FIELD_OF_VIEW_M across a chip of `size` px."""
    return DEFAULT_FIELD_OF_VIEW_M / size


def supersampling(size: int) -> int:
    """Draw at >= 128 px and at least 2x, so polygon edges antialias when box-downsampled."""
    return max(2, math.ceil(128 / size))


@lru_cache(maxsize=4096)
def _model_key(model: VehicleModel) -> int:
    return text_key(repr(model))


def _check_inputs(model, instance_seed, size, gsd_m, channels, jpeg_quality) -> None:
    if not isinstance(model, VehicleModel):
        raise TypeError(f"model must be a VehicleModel, got {type(model).__name__}")
    if isinstance(instance_seed, bool) or not isinstance(instance_seed, (int, np.integer)) or instance_seed < 0:
        raise ValueError(f"instance_seed must be a non-negative int, got {instance_seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if gsd_m is not None and not (isinstance(gsd_m, numbers.Real) and math.isfinite(gsd_m) and float(gsd_m) > 0):
        raise ValueError(f"gsd_m must be a positive number of metres per pixel or None, got {gsd_m!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if jpeg_quality is not None and not (isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 95):
        raise ValueError(f"jpeg_quality must be an int in [1, 95] or None, got {jpeg_quality!r}")


def _compass(bearing_deg: float) -> np.ndarray:
    """Unit (col, row) image vector of a compass bearing (0 = up, clockwise)."""
    b = math.radians(bearing_deg)
    return np.array([math.sin(b), -math.cos(b)])


# How each polygon role is coloured: (base, factor) scales the instance's paint or the model's
# secondary colour (shading of curved flanks, roof catching more light); a tuple is fixed.
_ROLE_RECIPES: dict[str, tuple[Any, ...]] = {
    "edge": ("paint", 0.60), "edge_mid": ("paint", 0.82), "top": ("paint", 1.0),
    "roof": ("paint", 1.05), "roof_panel": ("paint", 1.1), "mirror": ("paint", 0.8), "bed": ("paint", 0.42),
    "box_edge": ("secondary", 0.68), "box_edge_mid": ("secondary", 0.85), "box_top": ("secondary", 1.0),
    "rib": ("secondary", 0.85),
    "trim": (0.09, 0.09, 0.10), "lamp_front": (0.80, 0.80, 0.78), "lamp_rear": (0.45, 0.08, 0.08),
    "cargo": (0.15, 0.15, 0.16), "cargo_light": (0.62, 0.56, 0.44), "unit": (0.68, 0.69, 0.70),
    "hatch": (0.40, 0.41, 0.42),
}
_LIGHT_STRIPE, _DARK_STRIPE = (0.92, 0.92, 0.90), (0.08, 0.08, 0.09)


@lru_cache(maxsize=64)
def _fixed_ink(mode: str, rgb: tuple[float, float, float]):
    return ink(mode, rgb)


def _vehicle_inks(mode: str, paint, secondary, sky: float) -> dict:
    """Per-instance PIL fill of every polygon role (glass shows a dark cabin or the sky)."""
    if mode == "L":   # fast path: one luminance per base colour, then scale
        bases = {"paint": 255.0 * luminance(paint), "secondary": 255.0 * luminance(secondary)}
        inks = {role: (min(255, int(bases[recipe[0]] * recipe[1] + 0.5)) if isinstance(recipe[0], str)
                       else _fixed_ink(mode, recipe))
                for role, recipe in _ROLE_RECIPES.items()}
    else:
        colours = {"paint": paint, "secondary": secondary}
        inks = {role: (ink(mode, scale(colours[recipe[0]], recipe[1])) if isinstance(recipe[0], str)
                       else _fixed_ink(mode, recipe))
                for role, recipe in _ROLE_RECIPES.items()}
    inks["glass"] = ink(mode, (sky * 0.9, sky * 0.95, sky * 1.12))
    inks["stripe"] = _fixed_ink(mode, _LIGHT_STRIPE if luminance(paint) < 0.45 else _DARK_STRIPE)
    return inks


def _placed_vertices(placement: Placement, px_per_m: float) -> np.ndarray:
    matrix = placement_matrix(placement.heading_deg, px_per_m)
    return vehicle_parts(placement.model).vertices @ matrix + np.asarray(placement.centre)


def _draw_vehicle(draw: ImageDraw.ImageDraw, mode: str, placement: Placement, points: np.ndarray,
                  sun_shift_px: np.ndarray, sky: float, detailed: bool) -> None:
    parts = vehicle_parts(placement.model)
    points = points.copy()
    points[parts.lit] += sun_shift_px   # upper surfaces shifted sunwards: the far flank looks wider and darker
    flat = points.ravel().tolist()
    inks = _vehicle_inks(mode, placement.paint_rgb, placement.model.secondary_rgb, sky)
    for start, stop, role in (parts.polygons if detailed else parts.coarse_polygons):
        draw.polygon(flat[2 * start:2 * stop], fill=inks[role])


def _draw_vehicle_shadow(draw: ImageDraw.ImageDraw, placement: Placement, points: np.ndarray,
                         shadow_px_per_m: np.ndarray, darkness: int) -> None:
    """Contact shadow, then each caster outline extruded between its two heights.

    The shadow of a convex outline extruded from height a to b is the outline at both shadow
    offsets plus the band joining them, whose corners are the outline's extreme points across
    the shadow direction: three polygons fill the exact swept shape.
    """
    parts = vehicle_parts(placement.model)
    reach = shadow_px_per_m * parts.height_m
    near = (points + parts.shadow_low[:, None] * reach).ravel().tolist()
    far = (points + parts.shadow_high[:, None] * reach).ravel().tolist()
    across = (points @ np.array([reach[1], -reach[0]])).tolist()
    start, stop = parts.contact
    draw.polygon(near[2 * start:2 * stop], fill=min(255, darkness + 45))
    for start, stop in parts.shadows:
        draw.polygon(near[2 * start:2 * stop], fill=darkness)
        draw.polygon(far[2 * start:2 * stop], fill=darkness)
        span = across[start:stop]
        i = 2 * (start + span.index(max(span)))
        j = 2 * (start + span.index(min(span)))
        draw.polygon(near[i:i + 2] + near[j:j + 2] + far[j:j + 2] + far[i:i + 2], fill=darkness)


def _disc_box(col: float, row: float, radius: float) -> tuple[float, float, float, float]:
    return (col - radius, row - radius, col + radius, row + radius)


def _textured_ground(scene, shadow_mask: Image.Image | None, channels: int, rng: random.Random) -> Image.Image:
    """tone x (1 + amplitude x texture) x (1 - shadow), in one vectorised, in-place pass."""
    side = scene.tone.size[0]
    factor = np.multiply(textures.crop("ground", side, side, rng), scene.amplitude, dtype=np.float32)
    factor += 1.0
    if shadow_mask is not None:
        shade = np.asarray(shadow_mask, dtype=np.float32)
        shade *= -1.0 / 255.0
        shade += 1.0
        factor *= shade
    ground = np.asarray(scene.tone, dtype=np.float32)
    ground *= factor[..., None] if channels == 3 else factor
    np.clip(ground, 0.0, 255.0, out=ground)
    return Image.fromarray(ground.astype(np.uint8), mode="L" if channels == 1 else "RGB")


def _add_canopy(image: Image.Image, trees, rng: random.Random) -> None:
    side = image.size[0]
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    for discs, _ in trees:
        for col, row, radius in discs:
            draw.ellipse(_disc_box(col, row, radius), fill=255)
    tile_side = max(textures.TILE, side)
    foliage = textures.foliage_image(image.mode, tile_side)
    left, top = int(rng.random() * (tile_side - side + 1)), int(rng.random() * (tile_side - side + 1))
    image.paste(foliage.crop((left, top, left + side, top + side)), (0, 0), mask)


def _optics(image: Image.Image, rng: random.Random) -> Image.Image:
    """Sensor PSF always, sometimes defocus, sometimes platform motion (3x3 line kernel)."""
    radius = rng.uniform(0.25, 0.6) + (rng.uniform(0.2, 0.6) if rng.random() < 0.1 else 0.0)
    image = image.filter(ImageFilter.GaussianBlur(radius))
    if rng.random() < 0.08:
        kernels = ((0, 0, 0, 1, 1, 1, 0, 0, 0), (0, 1, 0, 0, 1, 0, 0, 1, 0),
                   (1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 1, 0, 1, 0, 1, 0, 0))
        image = image.filter(ImageFilter.Kernel((3, 3), kernels[int(rng.random() * 4)], scale=3))
    return image


def _photometry(small: Image.Image, rng: random.Random, nuisance: NuisanceConfig, channels: int) -> np.ndarray:
    """Tone curve, illumination gradient and sensor noise; returns float32 digital numbers."""
    levels = np.arange(256, dtype=np.float32) / 255.0
    if nuisance.illumination:
        gamma, gain, haze = rng.uniform(0.85, 1.2), rng.uniform(0.85, 1.12), rng.uniform(-0.02, 0.06)
        lut = 255.0 * (gain * levels ** gamma + haze)
    else:
        lut = 255.0 * levels
    image = lut.astype(np.float32)[np.asarray(small)]
    size = image.shape[0]
    extra = (slice(None), slice(None), None) if channels == 3 else (slice(None), slice(None))
    if nuisance.illumination:
        cols, rows = textures.centred_grid(size)
        tilt = rng.uniform(0.0, 0.16)
        direction = rng.uniform(0, 2 * math.pi)
        gradient = 1.0 + tilt * (math.cos(direction) * cols + math.sin(direction) * rows)
        image *= gradient[extra]
    if nuisance.noise:
        read_sigma, shot_gain = rng.uniform(1.0, 4.0), rng.uniform(0.03, 0.25)
        sigma = np.sqrt(read_sigma ** 2 + shot_gain * np.maximum(image, 0.0))
        if channels == 3:
            noise = np.stack([textures.crop("gauss", size, size, rng) for _ in range(3)], axis=-1)
        else:
            noise = textures.crop("gauss", size, size, rng)
        image += noise * sigma
    return image


def _shadow_mask(side: int, vehicles: list[Placement], placed: list[np.ndarray], trees,
                 shadow_px_per_m: np.ndarray, darkness: int) -> Image.Image:
    """How much each ground pixel is darkened (0-255): vehicle shadows, then tree shadows."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for placement, points in zip(vehicles, placed):
        _draw_vehicle_shadow(draw, placement, points, shadow_px_per_m, darkness)
    for discs, height in trees:
        dx, dy = shadow_px_per_m * height
        for col, row, radius in discs:
            draw.ellipse(_disc_box(col + dx, row + dy, radius), fill=darkness)
    return mask


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("L" if pixels.ndim == 2 else "RGB"))


def render_chip_with_meta(model: VehicleModel, instance_seed: int, size: int, gsd_m: float | None = None,
                          channels: int = 1, *, jpeg_quality: int | None = None,
                          nuisance: NuisanceConfig = FULL_NUISANCE) -> tuple[np.ndarray, ChipMeta]:
    """Like `render_chip`, also returning what was drawn (heading, GSD, sun, scene, ...)."""
    _check_inputs(model, instance_seed, size, gsd_m, channels, jpeg_quality)
    size, instance_seed = int(size), int(instance_seed)
    rng = random.Random(mix64(_model_key(model), instance_seed, size, _SALT_INSTANCE))
    factor = supersampling(size)
    side = size * factor
    mode = "L" if channels == 1 else "RGB"
    if gsd_m is None:
        gsd_m = default_gsd_m(size) * (1.0 + nuisance.scale_jitter * (2.0 * rng.random() - 1.0))
    px_per_m = factor / gsd_m
    heading = 360.0 * rng.random()
    jitter = nuisance.position_jitter * side
    centre = (side / 2 + jitter * (2 * rng.random() - 1), side / 2 + jitter * (2 * rng.random() - 1))
    sun_azimuth, sun_elevation = 360.0 * rng.random(), rng.uniform(25.0, 70.0)
    paint = model.paint_rgb if rng.random() >= nuisance.repaint_odds else random_paint(rng)
    paint = scale(paint, rng.uniform(0.93, 1.06))
    main = Placement(model, centre, heading, paint)

    # clutter_odds < 1 draws one more number; at 1 the stream (and every existing dataset) is unchanged.
    clutter = nuisance.clutter and (nuisance.clutter_odds >= 1.0 or rng.random() < nuisance.clutter_odds)
    scene = compose_scene(rng, mode, side, model, heading, centre, placement_matrix(heading, px_per_m),
                          px_per_m, clutter, nuisance.neighbour_odds, nuisance.occlusion_odds)
    vehicles = [*scene.neighbours, main]
    placed = [_placed_vertices(placement, px_per_m) for placement in vehicles]
    shadow_mask = None
    if nuisance.shadows:
        away = _compass(sun_azimuth + 180.0) * (px_per_m / math.tan(math.radians(sun_elevation)))
        shadow_mask = _shadow_mask(side, vehicles, placed, scene.trees, away, int(255 * rng.uniform(0.38, 0.58)))
    image = _textured_ground(scene, shadow_mask, channels, rng)
    draw = ImageDraw.Draw(image)
    sun_shift = _compass(sun_azimuth) * (0.05 * px_per_m)
    for placement, points in zip(vehicles, placed):
        _draw_vehicle(draw, mode, placement, points, sun_shift, rng.uniform(0.06, 0.17), placement is main)
    if scene.trees:
        _add_canopy(image, scene.trees, rng)

    small = image.reduce(factor)
    if nuisance.blur:
        small = _optics(small, rng)
    pixels = np.clip(_photometry(small, rng, nuisance, channels) + 0.5, 0.0, 255.0).astype(np.uint8)
    if jpeg_quality is not None:
        pixels = _jpeg_round_trip(pixels, jpeg_quality)
    # Supersampled pixel (i + 0.5) / factor - 0.5 is the output pixel coordinate (centres at integers).
    centre_px = ((centre[0] + 0.5) / factor - 0.5, (centre[1] + 0.5) / factor - 0.5)
    meta = ChipMeta(heading_deg=heading, gsd_m=gsd_m, centre_px=centre_px,
                    sun_azimuth_deg=sun_azimuth, sun_elevation_deg=sun_elevation, scene=scene.name,
                    neighbours=len(scene.neighbours), occluded=bool(scene.trees))
    return pixels, meta


def render_chip(model: VehicleModel, instance_seed: int, size: int, gsd_m: float | None = None,
                channels: int = 1, *, jpeg_quality: int | None = None,
                nuisance: NuisanceConfig = FULL_NUISANCE) -> np.ndarray:
    """An overhead chip of one instance of `model`: uint8, (size, size) or (size, size, 3).

    Deterministic for (model, instance_seed, size, gsd_m, channels, jpeg_quality, nuisance).
    ``gsd_m`` (metres per pixel) fixes the scale; when None it is drawn around
    `default_gsd_m(size)` with `nuisance.scale_jitter`.
    """
    return render_chip_with_meta(model, instance_seed, size, gsd_m, channels,
                                 jpeg_quality=jpeg_quality, nuisance=nuisance)[0]
