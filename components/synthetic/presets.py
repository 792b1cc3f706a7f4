"""Dataset presets and the item list: what to render, cheap to enumerate without rendering.

The presets mirror the two overhead-vehicle sets of the literature (32x32 grayscale, ~8.3k
images; 101x101 grayscale, ~62.8k images) plus a tiny one for tests. Classes have a long-ish
tail of sizes (log-normal, clipped to [min, max] per class, scaled to the exact total).

Calibration. Rendered realistically (sibling variants a few tens of centimetres apart, every
chip in a parking lot or on a road with neighbours), the 32x32 set is far harder than the real
one it stands in for: a small CNN trained on its seen classes stays near raw pixels on the
unseen ones. Two knobs set the difficulty: `SyntheticSpec.separation` (how far sibling
variants depart from their platform) and the `NuisanceConfig` (above all `clutter_odds`, the
share of chips with scene context and neighbours). `small` is calibrated with them; the
realistic, hard version stays available as `small_hard`.

`synthetic_items` lists every image as a small picklable record (key, label, superclass,
attributes, model index, instance seed, ...). A distributed pipeline lists items on the
driver and renders them in workers with `render_item` (or `render_chip`): an item carries
everything its render needs, so workers share no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ._hashing import mix64, unit_float
from .catalog import vehicle_catalog, vehicle_model
from .render import FULL_NUISANCE, NuisanceConfig, render_chip

_SALT_COUNTS = 0xC0DE
_SALT_INSTANCE_SEED = 0x5EED
_SALT_GSD = 0x65D
_MAX_SEED = (1 << 63) - 1
# Calibration of `small` (measured with a small CNN, see the README's Results).
SEPARATION_SMALL = 3.0
CLUTTER_ODDS_SMALL = 0.0


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines a synthetic dataset; a config overrides it field by field."""

    name: str
    num_classes: int
    image_size: int
    num_images: int                       # exact total over all classes
    min_per_class: int
    max_per_class: int
    gsd_range_m: tuple[float, float]      # metres per pixel, drawn uniformly per image
    channels: int = 1
    tail_sigma: float = 0.8               # spread of log class sizes (0: balanced classes)
    seed: int = 0                         # class sizes, instance seeds, GSDs
    catalog_seed: int = 0                 # which vehicle models the classes are
    separation: float = 1.0               # how far sibling variants differ (1: realistic, ~0.5 px at 32x32)
    jpeg_quality: int | None = None       # None: lossless; else JPEG round trip at this quality
    nuisance: NuisanceConfig = field(default=FULL_NUISANCE)

    def __post_init__(self) -> None:
        if isinstance(self.nuisance, dict):   # allow configs to give the nuisance as a mapping
            object.__setattr__(self, "nuisance", _nuisance_from_mapping(self.nuisance))
        object.__setattr__(self, "gsd_range_m", tuple(float(v) for v in self.gsd_range_m))
        _validate_spec(self)

    def replace(self, **overrides: Any) -> SyntheticSpec:
        """A copy with some fields changed; unknown field names are a ValueError."""
        valid = spec_field_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown SyntheticSpec field(s) {unknown}; valid fields: {list(valid)}")
        return replace(self, **overrides)


def spec_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(SyntheticSpec))


def _nuisance_from_mapping(mapping: dict) -> NuisanceConfig:
    valid = [f.name for f in fields(NuisanceConfig)]
    unknown = sorted(set(mapping) - set(valid))
    if unknown:
        raise ValueError(f"unknown nuisance field(s) {unknown}; valid fields: {valid}")
    return NuisanceConfig(**mapping)


def _validate_spec(spec: SyntheticSpec) -> None:
    for name in ("num_classes", "image_size", "num_images", "min_per_class", "max_per_class"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"SyntheticSpec.{name} must be a positive int, got {value!r}")
    if spec.min_per_class > spec.max_per_class:
        raise ValueError(f"SyntheticSpec.min_per_class ({spec.min_per_class}) exceeds "
                         f"max_per_class ({spec.max_per_class})")
    low, high = spec.num_classes * spec.min_per_class, spec.num_classes * spec.max_per_class
    if not low <= spec.num_images <= high:
        raise ValueError(f"SyntheticSpec.num_images={spec.num_images} is impossible with {spec.num_classes} "
                         f"classes of {spec.min_per_class}..{spec.max_per_class} images (need {low}..{high})")
    if spec.channels not in (1, 3):
        raise ValueError(f"SyntheticSpec.channels must be 1 or 3, got {spec.channels!r}")
    gsd = spec.gsd_range_m
    if len(gsd) != 2 or not all(math.isfinite(v) and v > 0 for v in gsd) or gsd[0] > gsd[1]:
        raise ValueError(f"SyntheticSpec.gsd_range_m must be (low, high) with 0 < low <= high, got {gsd!r}")
    if isinstance(spec.separation, bool) or not isinstance(spec.separation, (int, float)) \
            or not 0 < spec.separation <= 20:
        raise ValueError(f"SyntheticSpec.separation must be a number in (0, 20], got {spec.separation!r}")
    if not (math.isfinite(spec.tail_sigma) and spec.tail_sigma >= 0):
        raise ValueError(f"SyntheticSpec.tail_sigma must be >= 0, got {spec.tail_sigma!r}")
    for name in ("seed", "catalog_seed"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"SyntheticSpec.{name} must be a non-negative int, got {value!r}")
    if spec.jpeg_quality is not None and not (isinstance(spec.jpeg_quality, int) and 1 <= spec.jpeg_quality <= 95):
        raise ValueError(f"SyntheticSpec.jpeg_quality must be None or an int in [1, 95], got {spec.jpeg_quality!r}")


# The calibrated nuisance of `small` (see the module docstring): each vehicle alone on plain
# asphalt (no parking lots, roads, neighbours or trees: the scene context is what made the
# realistic set unlearnable for a small CNN), no cast shadows, light repaints and centring
# jitter; heading, ground-sample distance, sensor blur, noise and illumination vary as in the
# full set. Turn context back on with `clutter_odds` (e.g. 0.25: a quarter of the chips).
CALIBRATED_NUISANCE = NuisanceConfig(clutter=True, clutter_odds=CLUTTER_ODDS_SMALL, shadows=False,
                                     repaint_odds=0.1, position_jitter=0.05)

PRESETS: dict[str, SyntheticSpec] = {
    # 32x32 grayscale, ~8.3k images: ~0.3 m imagery, a car spans ~15 px. Calibrated to be hard
    # but learnable like the real 32x32 set (sibling variants 3x further apart than in reality,
    # no scene context); the measured baselines are in the README (Results).
    "small": SyntheticSpec(name="small", num_classes=200, image_size=32, num_images=8300,
                           min_per_class=8, max_per_class=120, gsd_range_m=(0.25, 0.33),
                           separation=SEPARATION_SMALL, nuisance=CALIBRATED_NUISANCE),
    # The same classes at realistic spacing (sibling cars ~half a pixel apart) under full
    # clutter: far harder than the real set; a small CNN stays near raw pixels on it.
    "small_hard": SyntheticSpec(name="small_hard", num_classes=200, image_size=32, num_images=8300,
                                min_per_class=8, max_per_class=120, gsd_range_m=(0.25, 0.33)),
    # 101x101 grayscale, ~62.8k images: ~0.1 m aerial imagery, a car spans ~45 px (sibling
    # cars ~1.5 px apart). Not calibrated yet: full nuisance, realistic spacing.
    "large": SyntheticSpec(name="large", num_classes=320, image_size=101, num_images=62800,
                           min_per_class=20, max_per_class=700, gsd_range_m=(0.085, 0.115)),
    # For fast tests: a few hundred small chips.
    "tiny": SyntheticSpec(name="tiny", num_classes=30, image_size=32, num_images=360,
                          min_per_class=6, max_per_class=20, tail_sigma=0.5, gsd_range_m=(0.25, 0.33)),
}


def get_preset(name: str, **overrides: Any) -> SyntheticSpec:
    """A preset by name, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def images_per_class(spec: SyntheticSpec) -> list[int]:
    """Deterministic class sizes: log-normal shares, clipped to [min, max], summing to num_images.

    A scale factor is found by bisection so that the clipped, scaled shares add up to the
    total; the rounding remainder goes to the classes with the largest fractional parts.
    """
    rng = np.random.default_rng([spec.seed, _SALT_COUNTS])
    shares = rng.lognormal(0.0, spec.tail_sigma, spec.num_classes)
    low, high = float(spec.min_per_class), float(spec.max_per_class)

    def total(scale: float) -> float:
        return float(np.clip(shares * scale, low, high).sum())

    lo_scale, hi_scale = 0.0, high / shares.min()
    for _ in range(200):
        mid = 0.5 * (lo_scale + hi_scale)
        lo_scale, hi_scale = (mid, hi_scale) if total(mid) < spec.num_images else (lo_scale, mid)
    exact = np.clip(shares * hi_scale, low, high)
    counts = np.floor(exact).astype(np.int64)
    remainder = spec.num_images - int(counts.sum())
    room = counts < spec.max_per_class
    order = [i for i in np.argsort(-(exact - counts), kind="stable") if room[i]]
    for i in order[:max(0, remainder)]:
        counts[i] += 1
    return [int(c) for c in counts]


@dataclass(frozen=True)
class SyntheticItem:
    """One image to render: identity, labels and everything `render_item` needs."""

    key: str                      # "{label}/{instance:05d}", stable and unique
    label: str                    # fine-grained class (vehicle model name)
    superclass: str
    attributes: dict[str, float]  # continuous labels: length_m, width_m
    model_index: int
    instance_seed: int
    image_size: int
    channels: int
    gsd_m: float
    catalog_seed: int
    jpeg_quality: int | None
    nuisance: NuisanceConfig
    separation: float = 1.0

    def __hash__(self) -> int:   # the attributes dict is not hashable; the key is unique
        return hash(self.key)


def _resolve_spec(preset_or_spec: str | SyntheticSpec, seed: int | None) -> SyntheticSpec:
    if isinstance(preset_or_spec, str):
        spec = get_preset(preset_or_spec)
    elif isinstance(preset_or_spec, SyntheticSpec):
        spec = preset_or_spec
    else:
        raise TypeError(f"expected a preset name {sorted(PRESETS)} or a SyntheticSpec, "
                        f"got {type(preset_or_spec).__name__}")
    return spec if seed is None else spec.replace(seed=seed)


def synthetic_items(preset_or_spec: str | SyntheticSpec, seed: int | None = None) -> list[SyntheticItem]:
    """Every image of a synthetic dataset, class by class, without rendering anything.

    ``seed`` (when given) overrides the spec's seed: the same classes, other instances.
    """
    spec = _resolve_spec(preset_or_spec, seed)
    models = vehicle_catalog(spec.num_classes, spec.catalog_seed, spec.separation)
    low_gsd, high_gsd = spec.gsd_range_m
    items = []
    for model, count in zip(models, images_per_class(spec)):
        attributes = model.attributes
        for instance in range(count):
            h = mix64(spec.seed, model.index, instance, _SALT_INSTANCE_SEED)
            gsd = low_gsd + (high_gsd - low_gsd) * unit_float(mix64(h, _SALT_GSD))
            items.append(SyntheticItem(
                key=f"{model.name}/{instance:05d}", label=model.name, superclass=model.superclass,
                attributes=dict(attributes), model_index=model.index, instance_seed=h & _MAX_SEED,
                image_size=spec.image_size, channels=spec.channels, gsd_m=gsd,
                catalog_seed=spec.catalog_seed, jpeg_quality=spec.jpeg_quality, nuisance=spec.nuisance,
                separation=spec.separation))
    return items


def render_item(item: SyntheticItem) -> np.ndarray:
    """Render one listed item (uint8, H x W or H x W x 3); identical in any process."""
    model = vehicle_model(item.model_index, item.catalog_seed, item.separation)
    if model.name != item.label:
        raise ValueError(f"item {item.key!r} names class {item.label!r} but catalogue {item.catalog_seed} "
                         f"has {model.name!r} at index {item.model_index}")
    return render_chip(model, item.instance_seed, item.image_size, item.gsd_m, item.channels,
                       jpeg_quality=item.jpeg_quality, nuisance=item.nuisance)
