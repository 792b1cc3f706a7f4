"""What sources list and what the ingest stage carries between its steps.

A source lists `SourceItem`s on the driver without reading pixels (cheap even for millions of
files); Ray workers then load and decode each item. Items travel through Ray Data as flat rows
whose nested fields are JSON strings, so Arrow never has to unify heterogeneous schemas.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from components.constants import LATITUDE, LONGITUDE, TIME


class Rejection(Exception):
    """An input that cannot become a sample, with a reason from `components.constants.REJECT_*`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class SourceItem:
    key: str                                   # unique, stable, tar-safe (see `safe_key`)
    label: str | None                          # fine-grained class name
    locator: dict[str, Any]                    # how the source finds the pixels (path, index, window)
    superclass: str | None = None
    attributes: dict[str, float] = field(default_factory=dict)   # continuous labels
    metadata: dict[str, Any] = field(default_factory=dict)       # carried through to the sample
    reject_reason: str | None = None           # set when listing already shows the item is bad
    reject_detail: str = ""


_UNSAFE = re.compile(r"[^A-Za-z0-9_/-]")


def safe_key(name: str) -> str:
    """A WebDataset-safe key for `name`, stable and collision-resistant.

    WebDataset splits a tar member name at the first '.' of its basename into key and
    suffix, so keys may not contain dots (or other characters that shells and URLs mangle).
    When `name` has to be changed, a short hash of the original keeps keys unique.
    """
    safe = _UNSAFE.sub("_", name.strip("/"))
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
    return safe


# --- metadata parsing ----------------------------------------------------------------------
# Metadata that search filters and split protocols read is checked at ingest, like pixels: a
# value that does not parse rejects its input (REJECT_BAD_METADATA), so a geo filter never
# compares text and one bad row never changes the type of the good rows' values.
def is_missing(value: Any) -> bool:
    """None, NaN, NaT or a blank string: metadata that is simply absent (kept as None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(value != value)          # NaN and NaT are the values unequal to themselves
    except (TypeError, ValueError):
        return False


def parse_number(value: Any) -> float:
    """A finite float from a number or numeric text; ValueError says why not."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError("not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _in_range(low: float, high: float, what: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = parse_number(value)
        if not low <= number <= high:
            raise ValueError(f"{what} outside [{low:g}, {high:g}]")
        return number
    return parse


parse_longitude = _in_range(-180.0, 180.0, "longitude")
parse_latitude = _in_range(-90.0, 90.0, "latitude")


def parse_time(value: Any) -> str:
    """ISO-8601 text or a datetime, normalised to UTC as '2024-05-01T12:00:00Z'.

    A time without a zone is taken as UTC (imagery metadata conventionally is). Fractional
    seconds are kept (to the microsecond) when present. Numbers are refused: an epoch count
    has no unit a reader could rely on.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    else:
        raise ValueError("not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z)")
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("outside the range of representable times") from None
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# A source's own files (Fashion-MNIST's train/test files, a manifest's `split` column), stored
# under C.SOURCE_SPLIT; not the pipeline's split names, which ingest assigns.
SOURCE_SPLITS = ("train", "test")


def parse_source_split(value: Any) -> str:
    """A source's own train/test assignment (case-insensitive), as 'train' or 'test'."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in SOURCE_SPLITS:
        raise ValueError(f"not one of {list(SOURCE_SPLITS)}")
    return text


METADATA_PARSERS: dict[str, Callable[[Any], Any]] = {
    LONGITUDE: parse_longitude, LATITUDE: parse_latitude, TIME: parse_time,
}


def parse_fields(values: Mapping[str, Any], parsers: Mapping[str, Callable[[Any], Any]] = METADATA_PARSERS
                 ) -> tuple[dict[str, Any], list[str]]:
    """Parse every field of `values` that has a parser; missing values become None.

    Returns the parsed fields and one problem per bad field ("column 'lon' = 'x': not a
    number"), so a rejection names the column, the value and the reason, all of them at once.
    """
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    for name, parse in parsers.items():
        if name not in values:
            continue
        value = values[name]
        if is_missing(value):
            parsed[name] = None
            continue
        try:
            parsed[name] = parse(value)
        except ValueError as why:
            shown = value.item() if hasattr(value, "item") and not isinstance(value, str) else value
            problems.append(f"column {name!r} = {shown!r}: {why}")
    return parsed, problems
