"""The class catalogue: fine-grained vehicle models seen from above.

A class is a *vehicle model*. Models are grouped in superclasses (sedan, suv, bus, ...) and,
inside a superclass, in *platforms*: a platform fixes the overall proportions (hood length,
windshield rake, cabin length, ...), and each model built on it is a variant that differs
subtly (a few tens of centimetres in length, the windshield a little further back, a sunroof
or roof rails, another usual paint). That is what makes retrieval fine-grained: the nearest
wrong class is the sibling variant, and only small geometric cues separate them.

Class ``i`` depends only on ``(i, seed)`` and the classes before it, so the catalogue for 300
classes extends the one for 200 (prefix consistency): superclasses follow a golden-ratio
low-discrepancy sequence (their proportions hold in every prefix), platforms and variants are
hashed from the index.

``separation`` scales how far sibling variants depart from their platform (length steps,
width, part fractions): 1.0 is the realistic spacing (sibling cars a few tens of centimetres
apart, about half a pixel at 0.3 m), larger values make the fine-grained task easier without
changing what the classes are. It is the calibration knob of the presets (see `presets`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from ._hashing import mix64, unit_float

# Salts keep the random streams of different decisions independent.
_SALT_SUPERCLASS = 0x51
_SALT_PLATFORM_PICK = 0x52
_SALT_PLATFORM_PARAMS = 0x53
_SALT_VARIANT = 0x54

# Variant length offsets within a platform, in units of the superclass's length step: the
# first variant is the platform itself, later ones alternate longer / shorter.
_LENGTH_STEPS = (0.0, 1.0, -0.9, 2.0, -1.8, 0.5, -0.4, 1.5, -1.3, 2.6)


@dataclass(frozen=True)
class _SuperclassSpec:
    """Realistic ranges of one superclass (metres; fractions are of the overall length)."""

    weight: float                      # share of the catalogue
    platforms: int                     # distinct base designs
    length_m: tuple[float, float]
    width_m: tuple[float, float]
    height_m: tuple[float, float]
    hood_frac: tuple[float, float]     # front bumper to windshield base
    windshield_frac: tuple[float, float]
    roof_frac: tuple[float, float]
    rear_window_frac: tuple[float, float]
    bed_frac: tuple[float, float]      # pickup bed / truck box, measured from the rear
    cabin_inset_m: tuple[float, float]  # greenhouse inset from the body side
    corner_radius_m: tuple[float, float]
    length_step_m: float               # spacing of sibling variants' lengths
    roof_features: tuple[str, ...]     # options; a platform picks its usual one


SUPERCLASS_SPECS: dict[str, _SuperclassSpec] = {
    "sedan": _SuperclassSpec(
        0.22, 10, (4.30, 5.10), (1.72, 1.90), (1.40, 1.50), (0.25, 0.31), (0.15, 0.19),
        (0.24, 0.30), (0.11, 0.15), (0.0, 0.0), (0.16, 0.24), (0.35, 0.60), 0.14,
        ("none", "none", "sunroof", "panoramic")),
    "hatchback": _SuperclassSpec(
        0.15, 7, (3.60, 4.35), (1.62, 1.80), (1.45, 1.58), (0.22, 0.28), (0.17, 0.21),
        (0.32, 0.40), (0.10, 0.15), (0.0, 0.0), (0.15, 0.22), (0.40, 0.65), 0.12,
        ("none", "none", "sunroof", "panoramic", "rails")),
    "wagon": _SuperclassSpec(
        0.10, 5, (4.50, 5.00), (1.78, 1.90), (1.45, 1.55), (0.24, 0.29), (0.15, 0.18),
        (0.40, 0.46), (0.05, 0.08), (0.0, 0.0), (0.15, 0.22), (0.35, 0.55), 0.13,
        ("rails", "none", "crossbars", "cargo_box", "sunroof")),
    "suv": _SuperclassSpec(
        0.18, 8, (4.30, 5.10), (1.80, 2.00), (1.65, 1.85), (0.22, 0.28), (0.13, 0.17),
        (0.40, 0.48), (0.06, 0.10), (0.0, 0.0), (0.14, 0.20), (0.30, 0.50), 0.15,
        ("rails", "none", "crossbars", "sunroof", "panoramic", "cargo_box")),
    "van": _SuperclassSpec(
        0.10, 5, (4.80, 6.00), (1.90, 2.05), (2.00, 2.60), (0.06, 0.14), (0.10, 0.14),
        (0.62, 0.72), (0.00, 0.02), (0.0, 0.0), (0.06, 0.12), (0.20, 0.40), 0.22,
        ("none", "vents", "ladder_rack", "high_roof")),
    "pickup": _SuperclassSpec(
        0.10, 5, (5.00, 5.90), (1.85, 2.05), (1.75, 1.95), (0.22, 0.27), (0.11, 0.14),
        (0.13, 0.26), (0.02, 0.04), (0.30, 0.40), (0.14, 0.20), (0.25, 0.45), 0.18,
        ("none", "none", "crossbars", "sunroof")),
    "box_truck": _SuperclassSpec(
        0.08, 4, (6.50, 10.0), (2.30, 2.55), (3.00, 3.60), (0.03, 0.09), (0.05, 0.07),
        (0.10, 0.16), (0.0, 0.0), (0.62, 0.75), (0.05, 0.10), (0.15, 0.30), 0.35,
        ("none", "deflector", "reefer")),
    "bus": _SuperclassSpec(
        0.07, 3, (10.5, 13.5), (2.50, 2.55), (3.00, 3.30), (0.0, 0.0), (0.02, 0.03),
        (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.25, 0.40), 0.45,
        ("ac_rear", "ac_center", "ac_front", "ac_double")),
}
SUPERCLASSES: tuple[str, ...] = tuple(SUPERCLASS_SPECS)

# Paints as display-level RGB in [0, 1] with their market share: white, silver, grey and black
# dominate, so many models share a tone and tone alone cannot identify a class.
PAINTS: dict[str, tuple[tuple[float, float, float], float]] = {
    "white": ((0.90, 0.90, 0.88), 0.24),
    "silver": ((0.70, 0.71, 0.72), 0.17),
    "grey": ((0.46, 0.47, 0.48), 0.13),
    "black": ((0.10, 0.10, 0.11), 0.18),
    "dark_blue": ((0.12, 0.16, 0.30), 0.06),
    "blue": ((0.22, 0.34, 0.60), 0.04),
    "red": ((0.64, 0.12, 0.10), 0.08),
    "dark_red": ((0.38, 0.08, 0.09), 0.03),
    "green": ((0.17, 0.32, 0.21), 0.02),
    "beige": ((0.74, 0.68, 0.54), 0.03),
    "yellow": ((0.88, 0.74, 0.20), 0.01),
    "brown": ((0.36, 0.26, 0.18), 0.01),
}
# Truck boxes and bus roofs are mostly white or bare aluminium.
SECONDARY_PAINTS: dict[str, tuple[tuple[float, float, float], float]] = {
    "white": ((0.92, 0.92, 0.90), 0.55),
    "aluminium": ((0.74, 0.75, 0.77), 0.25),
    "light_grey": ((0.62, 0.63, 0.64), 0.10),
    "yellow": ((0.88, 0.76, 0.26), 0.05),
    "blue": ((0.25, 0.38, 0.62), 0.05),
}
BED_STYLES = ("open", "liner", "tonneau", "cargo")


@dataclass(frozen=True)
class VehicleModel:
    """One fine-grained class: a vehicle model with its plan-view geometry and usual paint.

    Lengths are metres; ``*_frac`` are fractions of ``length_m`` along the vehicle axis
    (hood, windshield, roof and rear window from the front; ``bed_frac`` from the rear).
    """

    name: str
    index: int
    superclass: str
    platform: int
    length_m: float
    width_m: float
    height_m: float
    hood_frac: float
    windshield_frac: float
    roof_frac: float
    rear_window_frac: float
    bed_frac: float
    bed_style: str
    cabin_inset_m: float
    corner_radius_m: float
    roof_shape: str            # "rounded" | "flat"
    roof_feature: str
    stripe: str                # "none" | "center" | "twin"
    paint: str
    paint_rgb: tuple[float, float, float]
    tone: float                # luminance of the usual paint
    secondary_rgb: tuple[float, float, float]  # truck box / bus roof / roof box colour
    rib_spacing_m: float       # box-truck roof ribs (0: smooth)
    unit_count: int            # bus roof hatches

    @property
    def attributes(self) -> dict[str, float]:
        """Continuous labels (for log-ratio loss and attribute regression)."""
        return {"length_m": self.length_m, "width_m": self.width_m}


def luminance(rgb: tuple[float, float, float]) -> float:
    """Rec. 601 luma, the grey level a panchromatic sensor roughly records."""
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _weighted_pick(table: dict, u: float) -> str:
    total = sum(weight for _, weight in table.values())
    threshold = u * total
    for name, (_, weight) in table.items():
        threshold -= weight
        if threshold < 0:
            return name
    return name  # u == 1.0 guard (float rounding)


def _superclass_of(index: int, seed: int) -> str:
    """Golden-ratio sequence through the cumulative superclass weights (stratified prefixes)."""
    offset = unit_float(mix64(seed, _SALT_SUPERCLASS))
    u = (index * 0.6180339887498949 + offset) % 1.0
    weights = {name: (None, spec.weight) for name, spec in SUPERCLASS_SPECS.items()}
    return _weighted_pick(weights, u)


def _platform_of(index: int, seed: int, superclass: str) -> int:
    return mix64(seed, index, _SALT_PLATFORM_PICK) % SUPERCLASS_SPECS[superclass].platforms


def _between(rng: random.Random, bounds: tuple[float, float]) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * rng.random()


@lru_cache(maxsize=512)
def _platform_params(seed: int, superclass: str, platform: int) -> dict:
    """The base design every variant of one platform starts from."""
    spec = SUPERCLASS_SPECS[superclass]
    rng = random.Random(mix64(seed, SUPERCLASSES.index(superclass), platform, _SALT_PLATFORM_PARAMS))
    return {
        "length_m": _between(rng, spec.length_m),
        "width_m": _between(rng, spec.width_m),
        "height_m": _between(rng, spec.height_m),
        "hood_frac": _between(rng, spec.hood_frac),
        "windshield_frac": _between(rng, spec.windshield_frac),
        "roof_frac": _between(rng, spec.roof_frac),
        "rear_window_frac": _between(rng, spec.rear_window_frac),
        "bed_frac": _between(rng, spec.bed_frac),
        "cabin_inset_m": _between(rng, spec.cabin_inset_m),
        "corner_radius_m": _between(rng, spec.corner_radius_m),
        "roof_shape": "rounded" if rng.random() < 0.6 else "flat",
        "roof_feature": spec.roof_features[int(rng.random() * len(spec.roof_features))],
        "bed_style": BED_STYLES[int(rng.random() * len(BED_STYLES))],
        "rib_spacing_m": 0.0 if rng.random() < 0.3 else 0.45 + 0.6 * rng.random(),
        "unit_count": 1 + int(rng.random() * 3),
        "cab_length_m": 2.1 + 0.5 * rng.random(),   # box trucks: cab-over to short-nosed
    }


def _make_model(index: int, seed: int, superclass: str, platform: int, variant: int,
                separation: float = 1.0) -> VehicleModel:
    """Variant ``variant`` of a platform: small, systematic departures from the base design,
    scaled by ``separation``."""
    spec = SUPERCLASS_SPECS[superclass]
    base = _platform_params(seed, superclass, platform)
    rng = random.Random(mix64(seed, index, _SALT_VARIANT))
    step = _LENGTH_STEPS[variant % len(_LENGTH_STEPS)] + 2.8 * (variant // len(_LENGTH_STEPS))
    length = base["length_m"] + separation * spec.length_step_m * (step + rng.uniform(-0.15, 0.15))
    roof_feature = base["roof_feature"]
    if variant > 0 and rng.random() < 0.55:
        roof_feature = spec.roof_features[int(rng.random() * len(spec.roof_features))]
    paint = _weighted_pick(PAINTS, rng.random())
    stripe_draw = rng.random()
    # Fractions: a few centimetres of windshield / hood shift is the typical facelift cue.
    fraction_jitter = 0.012 * separation
    fractions = {key: max(0.0, base[key] + rng.uniform(-fraction_jitter, fraction_jitter)) if base[key] > 0 else 0.0
                 for key in ("hood_frac", "windshield_frac", "roof_frac", "rear_window_frac", "bed_frac")}
    _fit_along_length(fractions, superclass, length, base["cab_length_m"])
    return VehicleModel(
        name=f"{superclass}_{index:03d}",
        index=index,
        superclass=superclass,
        platform=platform,
        length_m=round(length, 3),
        width_m=round(base["width_m"] + separation * rng.uniform(-0.04, 0.04), 3),
        height_m=round(base["height_m"] + separation * rng.uniform(-0.05, 0.05), 3),
        cabin_inset_m=(max(0.02, base["cabin_inset_m"] + separation * rng.uniform(-0.02, 0.02))
                       if base["cabin_inset_m"] else 0.0),
        corner_radius_m=base["corner_radius_m"],
        roof_shape=base["roof_shape"],
        roof_feature=roof_feature,
        stripe="none" if stripe_draw > 0.08 else ("center" if stripe_draw < 0.05 else "twin"),
        paint=paint,
        paint_rgb=PAINTS[paint][0],
        tone=round(luminance(PAINTS[paint][0]), 4),
        secondary_rgb=SECONDARY_PAINTS[_weighted_pick(SECONDARY_PAINTS, rng.random())][0],
        bed_style=base["bed_style"] if rng.random() < 0.6 else BED_STYLES[int(rng.random() * 4)],
        rib_spacing_m=base["rib_spacing_m"] * (1.0 + rng.uniform(-0.15, 0.15)),
        unit_count=base["unit_count"] if rng.random() < 0.6 else 1 + int(rng.random() * 3),
        **fractions,
    )


def _fit_along_length(fractions: dict[str, float], superclass: str, length: float, cab_length_m: float) -> None:
    """Keep the parts inside the body: a truck's box is what its cab leaves; elsewhere the
    roof gives way when hood + glass + roof (+ pickup bed) would exceed the length."""
    if superclass == "box_truck":
        fractions["bed_frac"] = (length - cab_length_m - 0.18) / length
        return
    budget = 0.97 - fractions["bed_frac"]
    parts = ("hood_frac", "windshield_frac", "roof_frac", "rear_window_frac")
    excess = sum(fractions[key] for key in parts) - budget
    if excess > 0:
        fractions["roof_frac"] = max(0.08, fractions["roof_frac"] - excess)


@lru_cache(maxsize=64)
def _catalog_tuple(num_classes: int, seed: int, separation: float = 1.0) -> tuple[VehicleModel, ...]:
    variants_seen: dict[tuple[str, int], int] = {}
    models = []
    for index in range(num_classes):
        superclass = _superclass_of(index, seed)
        platform = _platform_of(index, seed, superclass)
        variant = variants_seen.get((superclass, platform), 0)
        variants_seen[(superclass, platform)] = variant + 1
        models.append(_make_model(index, seed, superclass, platform, variant, separation))
    return tuple(models)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_separation(separation) -> float:
    if isinstance(separation, bool) or not isinstance(separation, (int, float)) or not 0 < separation <= 20:
        raise ValueError(f"separation must be a number in (0, 20], got {separation!r}")
    return float(separation)


def vehicle_catalog(num_classes: int, seed: int = 0, separation: float = 1.0) -> list[VehicleModel]:
    """The first ``num_classes`` vehicle models of the catalogue ``seed`` (deterministic).

    Prefix-consistent: ``vehicle_catalog(300, s)[:200] == vehicle_catalog(200, s)``.
    """
    _check_int("num_classes", num_classes, 1)
    _check_int("seed", seed, 0)
    return list(_catalog_tuple(num_classes, seed, _check_separation(separation)))


def vehicle_model(index: int, seed: int = 0, separation: float = 1.0) -> VehicleModel:
    """Class ``index`` of catalogue ``seed``, without the caller building the whole list."""
    _check_int("index", index, 0)
    _check_int("seed", seed, 0)
    separation = _check_separation(separation)
    # Round the catalogue length up so that workers rendering many classes share one entry.
    length = 256
    while length <= index:
        length *= 2
    return _catalog_tuple(length, seed, separation)[index]
