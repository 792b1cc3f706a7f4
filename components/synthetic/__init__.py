"""Procedurally rendered overhead vehicle chips: a stand-in for overhead fine-grained vehicle sets.

No overhead-vehicle dataset can be downloaded where chipmatch is tested, so this source renders
one: classes are fine-grained vehicle models (`vehicle_catalog`), each image is one instance
seen from above with realistic nuisance (heading, scale, sun and shadows, parking lots and
roads, neighbours, trees, blur, sensor noise) by `render_chip`. `PRESETS` mirror the two sets
of the literature (32x32 / ~8.3k and 101x101 / ~62.8k grayscale images); `synthetic_items`
lists a dataset without rendering it, `render_item` renders one listed item anywhere.

    >>> from components.synthetic import synthetic_items, render_item
    >>> items = synthetic_items("tiny")
    >>> chip = render_item(items[0])          # uint8 (32, 32)

Modules: `catalog` (classes), `geometry` (plan-view polygons), `scene` (ground, markings,
neighbours, trees), `textures` (noise banks), `render` (the chip), `presets` (datasets).
Nothing runs at import; noise banks are built on first use.
"""

from .catalog import SUPERCLASSES, VehicleModel, vehicle_catalog, vehicle_model
from .presets import (
    PRESETS,
    SyntheticItem,
    SyntheticSpec,
    get_preset,
    images_per_class,
    render_item,
    synthetic_items,
)
from .render import (
    FULL_NUISANCE,
    ChipMeta,
    NuisanceConfig,
    default_gsd_m,
    render_chip,
    render_chip_with_meta,
)

__all__ = [
    "FULL_NUISANCE",
    "PRESETS",
    "SUPERCLASSES",
    "ChipMeta",
    "NuisanceConfig",
    "SyntheticItem",
    "SyntheticSpec",
    "VehicleModel",
    "default_gsd_m",
    "get_preset",
    "images_per_class",
    "render_chip",
    "render_chip_with_meta",
    "render_item",
    "synthetic_items",
    "vehicle_catalog",
    "vehicle_model",
]
