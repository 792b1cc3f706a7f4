"""The manifest source: CSV and Parquet tables, optional columns, missing labels recorded."""

from __future__ import annotations

import pandas as pd
import pytest

from components import constants as C
from components.data.sources.manifest import ManifestConfig, ManifestSource
from tests.data.images import png_bytes


@pytest.fixture
def table(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(i))
    return pd.DataFrame({
        "path": ["img/0.png", "img/1.png", "img/2.png", str(tmp_path / "img" / "3.png")],
        "label": ["sedan", "van", None, "van"],
        "superclass": ["car", "van", None, "van"],
        "lon": [10.5, 11.0, 12.0, 13.0],
        "lat": [45.0, 45.5, 46.0, 46.5],
        "time": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"]),
        "sensor": ["wv3", "wv3", "wv2", "pleiades"],
        "length_m": [4.5, 5.1, 4.0, 5.2],
    })


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_rows_become_items_with_metadata(tmp_path, table, suffix):
    path = tmp_path / f"chips.{suffix}"
    table.to_csv(path, index=False) if suffix == "csv" else table.to_parquet(path)
    source = ManifestSource(ManifestConfig(path=str(path), attribute_columns=("length_m",)))
    items = source.list_items()
    assert [i.label for i in items] == ["sedan", "van", None, "van"]
    assert items[2].reject_reason == C.REJECT_MISSING_LABEL
    first = items[0]
    assert first.superclass == "car" and first.attributes == {"length_m": 4.5}
    assert first.metadata["lon"] == 10.5 and first.metadata["sensor"] == "wv3"
    assert first.metadata["time"].startswith("2024-01-01")
    assert source.load(first) == png_bytes(0)
    assert source.load(items[3]) == png_bytes(3)          # absolute paths are kept


def test_missing_columns_are_named(tmp_path, table):
    path = tmp_path / "chips.csv"
    table.drop(columns=["label"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="label"):
        ManifestSource(ManifestConfig(path=str(path))).list_items()
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ManifestSource(ManifestConfig(path=str(tmp_path / "nope.csv"))).list_items()
