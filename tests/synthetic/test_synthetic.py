"""Tests of the synthetic overhead-vehicle source (components.synthetic).

Fast (< 30 s on a shared 2-core machine): renders are ~1 ms each. The difficulty test prints
its 1-NN figures and the bench test prints render times (run with -s to see them).
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from components.synthetic import (
    PRESETS,
    SUPERCLASSES,
    NuisanceConfig,
    SyntheticSpec,
    get_preset,
    images_per_class,
    render_chip,
    render_chip_with_meta,
    render_item,
    synthetic_items,
    vehicle_catalog,
    vehicle_model,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CLEAN = NuisanceConfig.none()


def _bright_model(superclass: str = "sedan"):
    """A model of this superclass with a light paint (easy to segment from dark asphalt)."""
    return next(m for m in vehicle_catalog(60) if m.superclass == superclass and m.tone > 0.5)


def _vehicle_mask(chip: np.ndarray) -> np.ndarray:
    """Pixels that differ clearly from the (plain, clean) ground."""
    return np.abs(chip.astype(np.float32) - np.median(chip)) > 20


def _principal_axis_deg(mask: np.ndarray) -> float:
    """Orientation (degrees mod 180, image columns = 0, rows = 90) of a blob's long axis."""
    rows, cols = np.nonzero(mask)
    cov = np.cov(np.stack([cols, rows]).astype(np.float64))
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    col, row = eigenvectors[:, np.argmax(eigenvalues)]
    return math.degrees(math.atan2(row, col)) % 180.0


def _axis_gap_deg(a: float, b: float) -> float:
    gap = abs(a - b) % 180.0
    return min(gap, 180.0 - gap)


# --- determinism ---------------------------------------------------------------------------

def test_same_inputs_give_identical_bytes_and_other_seeds_differ():
    model = vehicle_model(3)
    first = render_chip(model, 11, 101)
    assert first.tobytes() == render_chip(model, 11, 101).tobytes()
    assert first.tobytes() != render_chip(model, 12, 101).tobytes()
    assert first.tobytes() != render_chip(vehicle_model(4), 11, 101).tobytes()


def test_render_is_identical_in_a_fresh_process_and_import_has_no_side_effects():
    item = synthetic_items("tiny")[5]
    script = (
        "import hashlib\n"
        "from components.synthetic import textures, synthetic_items, render_item\n"
        "assert textures.noise_bank.cache_info().currsize == 0, 'noise bank built at import'\n"
        "print(hashlib.sha256(render_item(synthetic_items('tiny')[5]).tobytes()).hexdigest())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == hashlib.sha256(render_item(item).tobytes()).hexdigest()


# --- catalogue -----------------------------------------------------------------------------

def test_catalogue_is_prefix_consistent_and_deterministic():
    assert vehicle_catalog(300, seed=0)[:200] == vehicle_catalog(200, seed=0)
    assert vehicle_catalog(50, seed=7) == vehicle_catalog(50, seed=7)
    assert vehicle_catalog(50, seed=7) != vehicle_catalog(50, seed=8)
    catalog = vehicle_catalog(600)
    assert all(vehicle_model(i) == catalog[i] for i in (0, 17, 255, 256, 599))


def test_catalogue_names_superclasses_and_attributes_are_realistic():
    catalog = vehicle_catalog(400)
    names = [m.name for m in catalog]
    assert len(set(names)) == len(names)
    assert all(m.name == f"{m.superclass}_{m.index:03d}" for m in catalog)
    assert set(m.superclass for m in catalog) == set(SUPERCLASSES)
    # Every superclass holds a fair share even in a short prefix (stratified assignment).
    assert set(m.superclass for m in catalog[:40]) == set(SUPERCLASSES)
    plausible = {  # (length, width) in metres, generous bounds around real vehicles
        "sedan": ((3.9, 5.6), (1.6, 2.0)), "hatchback": ((3.2, 4.8), (1.5, 1.9)),
        "wagon": ((4.1, 5.5), (1.7, 2.0)), "suv": ((3.8, 5.7), (1.7, 2.1)),
        "van": ((4.2, 6.8), (1.8, 2.15)), "pickup": ((4.5, 6.6), (1.75, 2.15)),
        "box_truck": ((5.5, 12.0), (2.2, 2.65)), "bus": ((9.0, 15.5), (2.4, 2.65)),
    }
    for m in catalog:
        (l_lo, l_hi), (w_lo, w_hi) = plausible[m.superclass]
        assert l_lo <= m.length_m <= l_hi, m
        assert w_lo <= m.width_m <= w_hi, m
        assert m.attributes == {"length_m": m.length_m, "width_m": m.width_m}
        assert 0.0 <= m.tone <= 1.0
        assert m.hood_frac + m.windshield_frac + m.roof_frac + m.rear_window_frac < 1.0


def test_tone_is_shared_and_siblings_differ_subtly():
    catalog = vehicle_catalog(200)
    paints = Counter(m.paint for m in catalog)
    assert paints.most_common(1)[0][1] >= 20   # many models share the usual paints
    siblings = {}
    for m in catalog:
        siblings.setdefault((m.superclass, m.platform), []).append(m)
    families = [group for group in siblings.values() if len(group) >= 2]
    assert len(families) >= 20
    for group in families:
        lengths = sorted(m.length_m for m in group)
        # Same platform: a few tens of centimetres apart (a bus or a truck a little more) ...
        assert lengths[-1] - lengths[0] < (3.0 if group[0].superclass in ("bus", "box_truck") else 1.6)
        # ... but never identical classes.
        assert len({(m.length_m, m.windshield_frac, m.roof_feature) for m in group}) == len(group)


# --- rendering -----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 101])
def test_sizes_dtypes_and_rgb(size):
    model = vehicle_model(1)
    gray = render_chip(model, 0, size)
    assert gray.shape == (size, size) and gray.dtype == np.uint8
    rgb = render_chip(model, 0, size, channels=3)
    assert rgb.shape == (size, size, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[..., 0], rgb[..., 2])   # real colour, not grey copies
    assert 10 < gray.mean() < 245 and gray.std() > 5       # neither blank nor saturated
    jpeg = render_chip(model, 0, size, jpeg_quality=60)
    assert jpeg.shape == gray.shape and not np.array_equal(jpeg, gray)


def test_principal_axis_follows_the_heading_and_headings_vary():
    model = _bright_model("sedan")
    headings = []
    for seed in range(12):
        chip, meta = render_chip_with_meta(model, seed, 101, gsd_m=0.08, nuisance=CLEAN)
        axis = _principal_axis_deg(_vehicle_mask(chip))
        # Compass heading h points along image (sin h, -cos h), i.e. axis angle h - 90 mod 180.
        assert _axis_gap_deg(axis, meta.heading_deg - 90.0) < 12.0, (seed, axis, meta.heading_deg)
        headings.append(axis)
    assert len({int(h // 30) for h in headings}) >= 4      # spread over most of the half circle


def test_vehicle_size_in_pixels_follows_length_over_gsd():
    model = _bright_model("suv")
    area_coarse = _vehicle_mask(render_chip(model, 0, 101, gsd_m=0.10, nuisance=CLEAN)).sum()
    area_fine = _vehicle_mask(render_chip(model, 0, 101, gsd_m=0.05, nuisance=CLEAN)).sum()
    assert 3.3 < area_fine / area_coarse < 4.7                # halving the GSD quadruples the area
    length_px = math.sqrt(area_fine * model.length_m / model.width_m)
    assert abs(length_px - model.length_m / 0.05) < 0.2 * model.length_m / 0.05


def test_nuisance_changes_the_scene_but_not_the_identity_inputs():
    model = vehicle_model(2)
    metas = [render_chip_with_meta(model, seed, 101)[1] for seed in range(40)]
    assert len({m.scene for m in metas}) >= 2
    assert any(m.neighbours for m in metas) and any(m.occluded for m in metas)
    assert all(0.0 <= m.heading_deg < 360.0 and 25.0 <= m.sun_elevation_deg <= 70.0 for m in metas)


def test_bad_inputs_name_the_offending_value():
    model = vehicle_model(0)
    with pytest.raises(ValueError, match="size"):
        render_chip(model, 0, 4)
    with pytest.raises(ValueError, match="channels"):
        render_chip(model, 0, 32, channels=2)
    with pytest.raises(ValueError, match="gsd_m"):
        render_chip(model, 0, 32, gsd_m=-0.1)
    with pytest.raises(ValueError, match="instance_seed"):
        render_chip(model, -1, 32)
    with pytest.raises(TypeError, match="VehicleModel"):
        render_chip("sedan_000", 0, 32)
    with pytest.raises(ValueError, match="num_classes"):
        vehicle_catalog(0)
    with pytest.raises(ValueError, match="repaint_odds"):
        NuisanceConfig(repaint_odds=1.5)


# --- presets and items ---------------------------------------------------------------------

def test_presets_mirror_the_literature():
    small, large, tiny = PRESETS["small"], PRESETS["large"], PRESETS["tiny"]
    assert (small.image_size, small.channels, small.num_images) == (32, 1, 8300)
    assert (large.image_size, large.channels, large.num_images) == (101, 1, 62800)
    assert 200 <= small.num_classes <= 400 and 200 <= large.num_classes <= 400
    assert tiny.num_images < 1000 and tiny.num_classes == 30


@pytest.mark.parametrize("name", ["small", "large", "tiny"])
def test_class_sizes_have_a_tail_within_bounds(name):
    spec = PRESETS[name]
    counts = images_per_class(spec)
    assert counts == images_per_class(spec)
    assert len(counts) == spec.num_classes and sum(counts) == spec.num_images
    assert min(counts) >= spec.min_per_class and max(counts) <= spec.max_per_class
    assert max(counts) >= 2 * min(counts)   # long-ish tail, not balanced


def test_items_are_listed_without_rendering_and_render_anywhere():
    items = synthetic_items("large")
    assert len(items) == 62800
    assert len({item.key for item in items}) == len(items)
    first = items[0]
    assert first.key == f"{first.label}/00000" and first.attributes.keys() == {"length_m", "width_m"}
    low, high = PRESETS["large"].gsd_range_m
    assert all(low <= item.gsd_m <= high for item in items[:500])
    model = vehicle_model(first.model_index)
    assert (model.name, model.superclass) == (first.label, first.superclass)
    chip = render_item(first)
    assert chip.shape == (101, 101)
    assert np.array_equal(chip, render_chip(model, first.instance_seed, 101, first.gsd_m))
    reseeded = synthetic_items("tiny", seed=5)
    tiny = synthetic_items("tiny")
    assert [i.label for i in reseeded] != [] and {i.label for i in reseeded} == {i.label for i in tiny}
    assert reseeded[0].instance_seed != tiny[0].instance_seed


def test_spec_overrides_field_by_field():
    spec = get_preset("tiny", image_size=64, channels=3, nuisance={"occlusion_odds": 0.0})
    assert isinstance(spec, SyntheticSpec) and spec.image_size == 64 and spec.channels == 3
    assert spec.nuisance.occlusion_odds == 0.0
    assert render_item(synthetic_items(spec)[0]).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="image_sise"):
        get_preset("tiny", image_sise=64)
    with pytest.raises(ValueError, match="huge"):
        get_preset("huge")
    with pytest.raises(ValueError, match="num_images"):
        get_preset("tiny", num_images=10)


# --- difficulty and speed ------------------------------------------------------------------

def test_raw_pixel_1nn_on_tiny_is_far_above_chance_yet_far_from_perfect(capsys):
    items = synthetic_items("tiny")
    features = np.stack([render_item(item) for item in items]).reshape(len(items), -1).astype(np.float64)
    labels = np.array([item.model_index for item in items])
    features -= features.mean(axis=1, keepdims=True)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)   # leave-one-out
    accuracy = float((labels[similarity.argmax(axis=1)] == labels).mean())
    chance = 1.0 / PRESETS["tiny"].num_classes
    with capsys.disabled():
        print(f"\n[difficulty] tiny raw-pixel leave-one-out 1-NN accuracy {accuracy:.3f} "
              f"(chance {chance:.3f}, {accuracy / chance:.1f}x)")
    assert accuracy >= 2.5 * chance
    assert accuracy <= 0.5


def test_bench_render_time_per_chip(capsys):
    """Bench-style print, no timed assertion: times on a shared machine mean little."""
    catalog = vehicle_catalog(50)
    lines = []
    for size, count in ((32, 200), (101, 200)):
        for model in catalog:   # build the noise banks and cached geometry outside the timing
            render_chip(model, 0, size)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(count):
            render_chip(catalog[i % 50], i, size)
        cpu_ms = (time.process_time() - cpu) / count * 1e3
        wall_ms = (time.perf_counter() - wall) / count * 1e3
        lines.append(f"{size}x{size}: {cpu_ms:.2f} ms CPU, {wall_ms:.2f} ms wall per chip")
    with capsys.disabled():
        print("\n[bench] render_chip " + "; ".join(lines))


# --- calibration knobs ---------------------------------------------------------------------

def test_separation_scales_how_far_siblings_depart_from_their_platform():
    realistic, wider, widest = (vehicle_catalog(120, separation=s) for s in (1.0, 2.0, 3.0))
    for a, b, c in zip(realistic, wider, widest):
        assert (a.name, a.superclass, a.platform, a.paint) == (b.name, b.superclass, b.platform, b.paint)
        # Departures are linear in the separation: equal steps from 1 to 2 and from 2 to 3
        # (lengths are rounded to the millimetre; the roof may give way on long variants).
        assert abs((c.length_m - b.length_m) - (b.length_m - a.length_m)) <= 2e-3
    spread = {s: np.mean([abs(x.length_m - y.length_m) for x, y in zip(cat, cat[1:])
                          if (x.superclass, x.platform) == (y.superclass, y.platform)] or [0.0])
              for s, cat in ((1.0, realistic), (3.0, widest))}
    assert vehicle_catalog(120) == realistic            # the default is the realistic catalogue
    with pytest.raises(ValueError, match="separation"):
        vehicle_catalog(10, separation=0)
    with pytest.raises(ValueError, match="separation"):
        get_preset("tiny", separation=-1.0)
    assert spread[3.0] >= spread[1.0]


def test_clutter_odds_sets_the_share_of_chips_with_scene_context():
    model = vehicle_model(5)
    always = NuisanceConfig()
    assert always.clutter_odds == 1.0
    never = always.with_fields(clutter_odds=0.0)
    some = always.with_fields(clutter_odds=0.3)
    scenes = {name: [render_chip_with_meta(model, seed, 32, nuisance=n)[1].scene for seed in range(120)]
              for name, n in (("always", always), ("never", never), ("some", some))}
    assert "plain" not in scenes["always"]
    assert set(scenes["never"]) == {"plain"}
    plain_share = scenes["some"].count("plain") / 120
    assert 0.55 <= plain_share <= 0.85            # about 70 % plain ground
    with pytest.raises(ValueError, match="clutter_odds"):
        NuisanceConfig(clutter_odds=1.5)
    with pytest.raises(ValueError, match="valid fields"):
        always.with_fields(clutter_oddz=0.5)


def test_small_is_the_calibrated_preset_and_small_hard_the_realistic_one():
    small, hard = PRESETS["small"], PRESETS["small_hard"]
    assert (small.num_classes, small.num_images, small.image_size) == (hard.num_classes, hard.num_images, hard.image_size)
    assert [m.name for m in vehicle_catalog(small.num_classes, separation=small.separation)] == \
        [m.name for m in vehicle_catalog(hard.num_classes)]      # the same classes
    assert small.separation > hard.separation == 1.0
    assert small.nuisance.clutter_odds < hard.nuisance.clutter_odds == 1.0
    assert hard.nuisance == NuisanceConfig()                     # the full, realistic nuisance


def test_synthetic_source_exposes_the_knobs_and_names_a_bad_one():
    from components.data.sources.synthetic_cars import SyntheticCarsConfig, SyntheticCarsSource

    config = SyntheticCarsConfig(preset="tiny", separation=2.5, nuisance={"clutter_odds": 0.5})
    source = SyntheticCarsSource(config)
    items = source.list_items()
    assert len(items) == PRESETS["tiny"].num_images
    assert source.load(items[0]).shape == (32, 32)
    with pytest.raises(ValueError, match="clutter_oddz"):
        SyntheticCarsConfig(preset="tiny", nuisance={"clutter_oddz": 0.5})
