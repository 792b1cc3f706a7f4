"""Metadata filters for index search: class labels, lon/lat box, time range, scene ids.

A filter is evaluated on the index's metadata table (one row per indexed vector) and yields
the set of allowed ids; the searcher hands it to faiss as an id selector, so filtered search
on a Flat index is exact search over the allowed subset. Every condition that is set must
hold (AND); a row with a missing value for an active condition is excluded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# The metadata columns the filters read, named once in components.constants (ingest writes them).
from components.constants import LABEL, LATITUDE, LONGITUDE, SCENE_ID, TIME


def _as_set(values: Iterable[Any] | None, name: str) -> frozenset | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a collection of values (e.g. a set), not the single string {values!r}")
    return frozenset(values)


@dataclass(frozen=True)
class SearchFilter:
    """Conditions on metadata; None means "no condition".

    labels: allowed class labels. bbox: (min_lon, min_lat, max_lon, max_lat), inclusive; a
    box with min_lon > max_lon crosses the antimeridian. time_range: (start, end), inclusive,
    either bound may be None; datetimes/strings for a datetime column, numbers otherwise.
    scene_ids: allowed scene ids.
    """

    labels: Iterable[Any] | None = None
    bbox: tuple[float, float, float, float] | None = None
    time_range: tuple[Any, Any] | None = None
    scene_ids: Iterable[Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _as_set(self.labels, "labels"))
        object.__setattr__(self, "scene_ids", _as_set(self.scene_ids, "scene_ids"))
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise ValueError(f"bbox must be (min_lon, min_lat, max_lon, max_lat), got {self.bbox!r}")
            min_lon, min_lat, max_lon, max_lat = (float(v) for v in self.bbox)
            if not (-90.0 <= min_lat <= max_lat <= 90.0):
                raise ValueError(f"bbox latitudes must satisfy -90 <= min_lat <= max_lat <= 90, got {self.bbox!r}")
            if not (-180.0 <= min_lon <= 180.0 and -180.0 <= max_lon <= 180.0):
                raise ValueError(f"bbox longitudes must lie in [-180, 180], got {self.bbox!r}")
            object.__setattr__(self, "bbox", (min_lon, min_lat, max_lon, max_lat))
        if self.time_range is not None and len(self.time_range) != 2:
            raise ValueError(f"time_range must be (start, end), got {self.time_range!r}")

    @property
    def is_empty(self) -> bool:
        return self.labels is None and self.bbox is None and self.time_range is None and self.scene_ids is None

    def mask(self, metadata: pd.DataFrame) -> np.ndarray:
        """Boolean mask over the rows of `metadata` (True = allowed)."""
        allowed = np.ones(len(metadata), dtype=bool)
        if self.labels is not None:
            allowed &= _column(metadata, LABEL).isin(self.labels).to_numpy()
        if self.scene_ids is not None:
            allowed &= _column(metadata, SCENE_ID).isin(self.scene_ids).to_numpy()
        if self.bbox is not None:
            min_lon, min_lat, max_lon, max_lat = self.bbox
            lon = _column(metadata, LONGITUDE).to_numpy(dtype=float, na_value=np.nan)
            lat = _column(metadata, LATITUDE).to_numpy(dtype=float, na_value=np.nan)
            in_lat = (lat >= min_lat) & (lat <= max_lat)
            if min_lon <= max_lon:
                in_lon = (lon >= min_lon) & (lon <= max_lon)
            else:  # the box crosses the antimeridian
                in_lon = (lon >= min_lon) | (lon <= max_lon)
            allowed &= in_lat & in_lon
        if self.time_range is not None:
            allowed &= _in_time_range(_column(metadata, TIME), self.time_range)
        return allowed


def _column(metadata: pd.DataFrame, name: str) -> pd.Series:
    if name not in metadata.columns:
        raise ValueError(
            f"the filter needs metadata column {name!r}, but the index metadata has {sorted(metadata.columns)}"
        )
    return metadata[name]


def _in_time_range(times: pd.Series, time_range: tuple[Any, Any]) -> np.ndarray:
    start, end = time_range
    if pd.api.types.is_datetime64_any_dtype(times):
        timezone = getattr(times.dtype, "tz", None)

        def bound(value):
            stamp = pd.Timestamp(value)
            if timezone is not None and stamp.tzinfo is None:
                stamp = stamp.tz_localize(timezone)
            return stamp

        start = None if start is None else bound(start)
        end = None if end is None else bound(end)
    valid = times.notna().to_numpy()
    allowed = valid.copy()
    if start is not None:
        allowed &= (times >= start).to_numpy() & valid
    if end is not None:
        allowed &= (times <= end).to_numpy() & valid
    return allowed
