"""GeoTIFF chips land at the annotated positions (scenes written here with rasterio)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp

from components import constants as C
from components.data.ingest import ImageSpec, ingest
from components.data.reader import load_split
from components.data.sources.geotiff import GeoTiffConfig, GeoTiffSource
from components.data.splits import SplitSpec
from components.data.versions import open_version
from components.storage import Store

UTM = "EPSG:32633"
GSD = 0.5
ORIGIN = (500_000.0, 4_600_000.0)


def write_scene(folder, name, height=120, width=160, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    transform = from_origin(*ORIGIN, GSD, GSD)
    with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", height=height, width=width, count=1,
                       dtype="uint8", crs=UTM, transform=transform) as dataset:
        dataset.write(pixels, 1)
    return pixels


def lonlat_of_pixel(row, col):
    """Centre of pixel (row, col), computed from the affine transform by hand."""
    x, y = ORIGIN[0] + (col + 0.5) * GSD, ORIGIN[1] - (row + 0.5) * GSD
    lon, lat = warp(UTM, "EPSG:4326", [x], [y])
    return lon[0], lat[0]


def point(row, col, label, **props):
    lon, lat = lonlat_of_pixel(row, col)
    return {"type": "Feature", "properties": {"class": label, **props},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}


def box(row0, col0, row1, col1, label):
    corners = [lonlat_of_pixel(r, c) for r, c in [(row0, col0), (row0, col1), (row1, col1), (row1, col0), (row0, col0)]]
    return {"type": "Feature", "properties": {"class": label},
            "geometry": {"type": "Polygon", "coordinates": [[list(c) for c in corners]]}}


@pytest.fixture
def scenes(tmp_path):
    pixels = write_scene(tmp_path, "scene_a")
    features = [point(30, 40, "sedan", note="kept"), point(60, 100, "van"), point(90, 20, "sedan"),
                point(3, 3, "van"),                 # chip would cross the border
                point(50, 50, None)]                # no class
    (tmp_path / "scene_a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return tmp_path, pixels


def test_chips_are_cut_at_the_annotated_pixels(scenes):
    folder, pixels = scenes
    source = GeoTiffSource(GeoTiffConfig(scenes=str(folder), chip_size=16))
    items = source.list_items()
    good = [i for i in items if i.reject_reason is None]
    assert [i.reject_reason for i in items if i.reject_reason] == [C.REJECT_OUT_OF_BOUNDS, C.REJECT_MISSING_LABEL]
    for item, (row, col) in zip(good, [(30, 40), (60, 100), (90, 20)]):
        chip = source.load(item)
        assert np.array_equal(chip, pixels[row - 8:row + 8, col - 8:col + 8])
        lon, lat = lonlat_of_pixel(row, col)
        assert item.metadata["lon"] == pytest.approx(lon, abs=1e-7)
        assert item.metadata["lat"] == pytest.approx(lat, abs=1e-7)
        assert item.metadata["window"] == {"col_off": col - 8, "row_off": row - 8, "width": 16, "height": 16}
        assert item.metadata["scene_id"] == "scene_a" and "32633" in item.metadata["crs"]
    assert good[0].metadata["note"] == "kept"


def test_box_mode_cuts_the_box_and_pad_mode_keeps_edge_chips(scenes):
    folder, pixels = scenes
    (folder / "scene_a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        box(20, 30, 40, 70, "bus"), point(3, 3, "van")]}))
    boxed = GeoTiffSource(GeoTiffConfig(scenes=str(folder), chip_mode="box", box_padding=0.0, edge="pad"))
    bus, edge = boxed.list_items()
    assert bus.reject_reason is None and edge.reject_reason is None
    chip = boxed.load(bus)
    # Box corners at pixel centres (20.5..40.5, 30.5..70.5): a 20×40 window from (20.5-0, ...).
    assert chip.shape == (20, 40)
    window = bus.locator["window"]
    assert np.array_equal(chip, pixels[window["row_off"]:window["row_off"] + 20, window["col_off"]:window["col_off"] + 40])
    assert edge.locator["window"]["width"] == 64                   # a point in box mode: chip_size
    fixed = GeoTiffSource(GeoTiffConfig(scenes=str(folder), chip_size=16, edge="pad"))
    padded = fixed.load(fixed.list_items()[1])
    assert padded.shape == (16, 16) and (padded[:4, :4] == 0).all()
    assert np.array_equal(padded[5:, 5:], pixels[:11, :11])


def test_geotiff_ingest_keeps_geo_metadata(scenes, tmp_path, ray_session):
    folder, _ = scenes
    source = GeoTiffSource(GeoTiffConfig(scenes=str(folder), chip_size=16, name="geo"))
    result = ingest(source, Store(str(tmp_path / "store")), ImageSpec(size=None, channels=1),
                    SplitSpec(seen_fraction=0.5), samples_per_shard=10)
    assert result.manifest["summary"]["accepted"] == 3
    version = open_version(result.manifest_uri)
    metas = [m for split in C.SPLITS for m in load_split(version, split).metas]
    assert {m["metadata"]["scene_id"] for m in metas} == {"scene_a"}
    assert all({"lon", "lat", "window", "crs"} <= set(m["metadata"]) for m in metas)
