"""Multi-band chips (e.g. RGB + near-infrared GeoTIFFs) keep every band through shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from components import constants as C
from components.data.decode import decode_chip, encode_chip, normalise
from components.data.ingest import ImageSpec, ingest
from components.data.reader import load_split
from components.data.records import Rejection
from components.data.sources.geotiff import GeoTiffConfig, GeoTiffSource
from components.data.splits import SplitSpec
from components.data.versions import open_version
from components.models import build_model
from components.storage import Store


def test_chip_codec_round_trips_any_band_count():
    rng = np.random.default_rng(0)
    for shape in [(8, 8), (8, 8, 3), (8, 8, 4), (8, 8, 7)]:
        chip = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(decode_chip(encode_chip(chip)), chip)
    assert normalise(rng.integers(0, 256, (9, 9, 5), dtype=np.uint8), 16, 4).shape == (16, 16, 4)
    with pytest.raises(Rejection) as info:
        normalise(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8), None, 4)
    assert info.value.reason == C.REJECT_WRONG_BANDS


def test_four_band_geotiff_chips_through_ingest_and_reader(tmp_path, ray_session):
    bands = np.random.default_rng(1).integers(0, 256, (4, 80, 80), dtype=np.uint8)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", height=80, width=80, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000, 4_600_000, 0.5, 0.5)) as dataset:
        dataset.write(bands)
    points = [(10 + 7 * i, 12 + 6 * i) for i in range(8)]
    features = [{"type": "Feature", "properties": {"class": f"c{i % 4}"},
                 "geometry": {"type": "Point", "coordinates": [500_000 + (col + 0.5) * 0.5, 4_600_000 - (row + 0.5) * 0.5]}}
                for i, (row, col) in enumerate(points)]
    (tmp_path / "scene.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    source = GeoTiffSource(GeoTiffConfig(scenes=str(tmp_path), chip_size=8, annotation_crs="scene", name="rgbn"))
    result = ingest(source, Store(str(tmp_path / "store")), ImageSpec(size=None, channels=4), SplitSpec(seen_fraction=0.5), 10)
    assert result.manifest["image"] == {"size": 8, "channels": 4, "format": C.WDS_ARRAY}
    version = open_version(result.manifest_uri)
    chips = {key: image for split in C.SPLITS for key, image in zip(*(lambda a: (a.keys, a.images))(load_split(version, split)))}
    assert len(chips) == 8
    for i, (row, col) in enumerate(points):
        expected = np.moveaxis(bands[:, row - 4:row + 4, col - 4:col + 4], 0, -1)
        assert np.array_equal(chips[f"scene/{i:06d}"], expected)
    model = build_model("small_cnn", embedding_dim=16, in_channels=4, image_size=8)
    import torch

    batch = torch.from_numpy(np.stack(list(chips.values()))).permute(0, 3, 1, 2).float() / 255
    assert model(batch).shape == (8, 16)
