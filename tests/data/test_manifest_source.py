"""The manifest source: CSV and Parquet tables, optional columns, missing labels recorded;
metadata validated at listing (lon/lat/time/split/attributes) and every rejection attributed
to the row that caused it. Expectations are written out by hand."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from components import constants as C
from components.data.records import parse_fields, parse_time, safe_key
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


# What a new user writes: one cell of each kind of mistake, and a path repeated without a label.
NEW_USER_CSV = """\
path,label,lon,lat,time,split,sensor
img/0.png,sedan,10.05,45.0,2024-05-01T12:00:00Z,train,wv3
img/1.png,van,notanumber,45.5,2024-05-01,TEST,wv3
img/2.png,van,11.0,999,2024-05-01T14:00:00+02:00,test,wv2
img/3.png,sedan,,46.0,not-a-date,train,wv2
img/4.png,bus,12.5,,,,pleiades
img/0.png,,10.05,45.0,,,wv3
img/5.png,bus,-12.25,-46,2024-05-02 08:30:15.5,Test,wv3
img/6.png,bus,12.0,46.0,2024-05-02T00:00:00Z,validation,wv3
img/7.png,van,181,-91,,,wv3
"""


@pytest.fixture
def new_user_items(tmp_path):
    path = tmp_path / "chips.csv"
    path.write_text(NEW_USER_CSV)
    return ManifestSource(ManifestConfig(path=str(path))).list_items()


def test_good_rows_keep_typed_normalised_metadata(new_user_items):
    good = {i.metadata[C.SOURCE]: i for i in new_user_items if i.reject_reason is None}
    assert sorted(good) == ["img/0.png", "img/4.png", "img/5.png"]
    row0, row4, row6 = good["img/0.png"], good["img/4.png"], good["img/5.png"]
    assert {k: row0.metadata[k] for k in ("lon", "lat", "time", C.SOURCE_SPLIT, "sensor")} == {
        "lon": 10.05, "lat": 45.0, "time": "2024-05-01T12:00:00Z", C.SOURCE_SPLIT: "train", "sensor": "wv3"}
    assert type(row0.metadata["lon"]) is float and type(row0.metadata["lat"]) is float   # not the text '10.05'
    assert {k: row4.metadata[k] for k in ("lon", "lat", "time", C.SOURCE_SPLIT)} == {
        "lon": 12.5, "lat": None, "time": None, C.SOURCE_SPLIT: None}                      # empty = missing
    assert {k: row6.metadata[k] for k in ("lon", "lat", "time", C.SOURCE_SPLIT)} == {
        "lon": -12.25, "lat": -46.0, "time": "2024-05-02T08:30:15.500000Z", C.SOURCE_SPLIT: "test"}
    assert "split" not in row0.metadata                                  # only under C.SOURCE_SPLIT
    assert row0.key == safe_key("img/0.png") and row0.label == "sedan"  # the labelled original stays


def test_bad_rows_are_rejected_with_column_value_and_reason(new_user_items):
    by_row = {int(i.reject_detail.split(":")[0].split()[1]): i for i in new_user_items if i.reject_reason}
    assert {n: i.reject_reason for n, i in by_row.items()} == {
        1: C.REJECT_BAD_METADATA, 2: C.REJECT_BAD_METADATA, 3: C.REJECT_BAD_METADATA,
        5: C.REJECT_MISSING_LABEL, 7: C.REJECT_BAD_METADATA, 8: C.REJECT_BAD_METADATA}
    assert by_row[1].reject_detail == "row 1: column 'lon' = 'notanumber': not a number"
    assert by_row[2].reject_detail == "row 2: column 'lat' = '999': latitude outside [-90, 90]"
    assert by_row[3].reject_detail == ("row 3: column 'time' = 'not-a-date': not an ISO-8601 time"
                                       " (e.g. 2024-05-01T12:00:00Z)")
    assert by_row[5].reject_detail == "row 5: empty 'label'"
    assert by_row[7].reject_detail == "row 7: column 'split' = 'validation': not one of ['train', 'test']"
    assert by_row[8].reject_detail == ("row 8: column 'lon' = '181': longitude outside [-180, 180];"
                                       " column 'lat' = '-91': latitude outside [-90, 90]")
    # The unlabelled repeat of img/0.png is rejected on a key of its own, not the original's.
    keys = [i.key for i in new_user_items]
    assert len(set(keys)) == len(keys)
    assert by_row[5].key != safe_key("img/0.png") and by_row[5].metadata[C.SOURCE] == "img/0.png"


def write_csv(tmp_path, rows, header="path,label,lon"):
    path = tmp_path / "t.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return ManifestSource(ManifestConfig(path=str(path))).list_items()


def test_a_path_on_several_rows_is_attributed_row_by_row(tmp_path):
    same = write_csv(tmp_path, ["a.png,car,1", "a.png,car,2", "b.png,bus,3"])
    assert [i.reject_reason for i in same] == [None, C.REJECT_DUPLICATE, None]
    assert (same[0].key, same[2].key) == (safe_key("a.png"), safe_key("b.png")) and same[1].key != same[0].key
    assert same[1].reject_detail == "row 1: repeats path 'a.png' of row 0"
    conflicting = write_csv(tmp_path, ["a.png,car,1", "b.png,bus,3", "a.png,van,1"])
    assert [i.reject_reason for i in conflicting] == [C.REJECT_CONFLICTING_LABELS, None, C.REJECT_CONFLICTING_LABELS]
    assert conflicting[0].reject_detail == "row 0: path 'a.png' is listed under ['car', 'van'] on rows [0, 2]"
    # A bad first row does not take the path's key from the good row after it.
    bad_first = write_csv(tmp_path, ["a.png,car,oops", "a.png,car,1"])
    assert [i.reject_reason for i in bad_first] == [C.REJECT_BAD_METADATA, None]
    assert bad_first[1].key == safe_key("a.png") and bad_first[0].key != bad_first[1].key


def test_one_bad_cell_does_not_change_the_types_of_other_columns_or_rows(tmp_path):
    items = write_csv(tmp_path, ["a.png,car,1.5,4.5,7", "b.png,car,x,5.0,8"], header="path,label,lon,length_m,code")
    assert items[0].metadata["lon"] == 1.5 and items[0].metadata["code"] == 7
    path = tmp_path / "t.csv"
    attributes = ManifestSource(ManifestConfig(path=str(path), attribute_columns=("length_m",))).list_items()
    assert attributes[0].attributes == {"length_m": 4.5} and type(attributes[0].attributes["length_m"]) is float
    path.write_text("path,label,length_m\na.png,car,4.5\nb.png,car,long\n")
    attributes = ManifestSource(ManifestConfig(path=str(path), attribute_columns=("length_m",))).list_items()
    assert attributes[0].attributes == {"length_m": 4.5}
    assert (attributes[1].reject_reason, attributes[1].reject_detail) == (
        C.REJECT_BAD_METADATA, "row 1: column 'length_m' = 'long': not a number")


def test_parquet_values_are_checked_like_csv_text(tmp_path):
    frame = pd.DataFrame({
        "path": ["a.png", "b.png", "c.png", "d.png"], "label": ["car"] * 4,
        "lon": [1.0, float("nan"), float("inf"), 2.0],
        "time": pd.to_datetime(["2024-05-01T14:00:00+02:00", None, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"], utc=True),
        "split": ["train", None, "TRAIN", "dev"],
    })
    frame.to_parquet(tmp_path / "t.parquet")
    items = ManifestSource(ManifestConfig(path=str(tmp_path / "t.parquet"))).list_items()
    assert items[0].reject_reason is None and items[1].reject_reason is None
    assert (items[0].metadata["lon"], items[0].metadata["time"], items[0].metadata[C.SOURCE_SPLIT]) == (
        1.0, "2024-05-01T12:00:00Z", "train")
    assert (items[1].metadata["lon"], items[1].metadata["time"], items[1].metadata[C.SOURCE_SPLIT]) == (None, None, None)
    assert items[2].reject_detail == "row 2: column 'lon' = inf: not a finite number"
    assert items[3].reject_detail == "row 3: column 'split' = 'dev': not one of ['train', 'test']"


def test_split_column_can_be_switched_off(tmp_path):
    (tmp_path / "t.csv").write_text("path,label,split\na.png,car,fold-3\n")
    items = ManifestSource(ManifestConfig(path=str(tmp_path / "t.csv"), split_column=None)).list_items()
    assert items[0].reject_reason is None and items[0].metadata["split"] == "fold-3"
    assert C.SOURCE_SPLIT not in items[0].metadata


@pytest.mark.parametrize("value,expected", [
    ("2024-05-01", "2024-05-01T00:00:00Z"),                       # a date, no zone: taken as UTC
    ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00Z"),
    ("20240501T120000Z", "2024-05-01T12:00:00Z"),                 # ISO-8601 basic format
    (" 2024-05-01T12:00:00.25Z ", "2024-05-01T12:00:00.250000Z"),
    (dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5))), "2024-05-01T17:00:00Z"),
    (dt.date(2024, 5, 1), "2024-05-01T00:00:00Z"),
    (pd.Timestamp("2024-05-01 12:00"), "2024-05-01T12:00:00Z"),
])
def test_times_are_normalised_to_utc(value, expected):
    assert parse_time(value) == expected


@pytest.mark.parametrize("values,problem", [
    ({"time": "May 1 2024"}, "column 'time' = 'May 1 2024': not an ISO-8601 time"),
    ({"time": 1714564800}, "column 'time' = 1714564800: not an ISO-8601 time"),
    ({"lon": True}, "column 'lon' = True: not a number"),
    ({"lat": "90.5"}, "column 'lat' = '90.5': latitude outside [-90, 90]"),
    ({"lon": "-180.0001"}, "column 'lon' = '-180.0001': longitude outside [-180, 180]"),
])
def test_bad_values_name_the_problem(values, problem):
    parsed, problems = parse_fields(values)
    assert parsed == {} and len(problems) == 1 and problems[0].startswith(problem)


def test_bounds_and_blanks_are_accepted():
    assert parse_fields({"lon": "-180", "lat": 90, "time": "  "}) == ({"lon": -180.0, "lat": 90.0, "time": None}, [])


@pytest.mark.usefixtures("ray_session")
def test_ingest_rejects_only_the_rows_at_fault(tmp_path):
    from components.data.ingest import ImageSpec, ingest
    from components.data.splits import SplitSpec
    from components.storage import Store

    (tmp_path / "img").mkdir()
    for i in range(8):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(i))
    (tmp_path / "chips.csv").write_text(NEW_USER_CSV)
    source = ManifestSource(ManifestConfig(path=str(tmp_path / "chips.csv"), name="chips"))
    result = ingest(source, Store(str(tmp_path / "store")), ImageSpec(size=16, channels=1), SplitSpec(seed=0), 20)
    rejected = sorted((r[C.SOURCE], r["reason"]) for r in result.manifest["rejections"])
    assert rejected == [("img/0.png", C.REJECT_MISSING_LABEL), ("img/1.png", C.REJECT_BAD_METADATA),
                        ("img/2.png", C.REJECT_BAD_METADATA), ("img/3.png", C.REJECT_BAD_METADATA),
                        ("img/6.png", C.REJECT_BAD_METADATA), ("img/7.png", C.REJECT_BAD_METADATA)]
    assert result.manifest["summary"]["accepted"] == 3        # img/0.png (labelled), img/4.png, img/5.png
