"""What sources list and what the ingest stage carries between its steps.

A source lists `SourceItem`s on the driver without reading pixels (cheap even for millions of
files); Ray workers then load and decode each item. Items travel through Ray Data as flat rows
whose nested fields are JSON strings, so Arrow never has to unify heterogeneous schemas.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any


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

    def to_row(self) -> dict[str, Any]:
        return {
            "key": self.key,
            # Empty strings, not None: a column of all-None strings comes back from Arrow as NaN.
            "label": self.label or "",
            "superclass": self.superclass or "",
            "locator": json.dumps(self.locator, sort_keys=True),
            "attributes": json.dumps(self.attributes, sort_keys=True),
            "metadata": json.dumps(self.metadata, sort_keys=True, default=str),
            "reject_reason": self.reject_reason or "",
            "reject_detail": self.reject_detail or "",
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SourceItem":
        return cls(
            key=row["key"],
            label=_text(row["label"]),
            superclass=_text(row["superclass"]),
            locator=json.loads(row["locator"]),
            attributes=json.loads(row["attributes"]),
            metadata=json.loads(row["metadata"]),
            reject_reason=_text(row["reject_reason"]),
            reject_detail=_text(row["reject_detail"]) or "",
        )


def _text(value: Any) -> str | None:
    """A string cell as written by `to_row` ("" and missing values mean None)."""
    return value if isinstance(value, str) and value else None


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
