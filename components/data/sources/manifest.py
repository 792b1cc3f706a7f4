"""A CSV or Parquet table with `path,label` (and optional superclass, lon, lat, time, ...)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from components import constants as C
from components.data.records import SourceItem, safe_key
from components.data.sources.base import Source, SourceConfig
from components.data.sources.folder import read_file_bytes

# Optional columns with a meaning of their own; every other column is carried as metadata.
GEO_TIME_COLUMNS = ("lon", "lat", "time")


class ManifestConfig(SourceConfig):
    source: Literal["manifest"] = "manifest"
    path: str                          # .csv or .parquet
    root: str | None = None            # base of relative image paths (default: the table's folder)
    path_column: str = "path"
    label_column: str = "label"
    superclass_column: str = "superclass"
    attribute_columns: tuple[str, ...] = ()   # numeric columns used as continuous labels


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _plain(value: Any) -> Any:
    """Make a pandas cell JSON-friendly (timestamps as ISO strings, numpy scalars as Python)."""
    if _is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


class ManifestSource(Source):
    name: ClassVar[str] = "manifest"
    Config: ClassVar[type[SourceConfig]] = ManifestConfig

    def read_table(self) -> pd.DataFrame:
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.path {str(path)!r} does not exist (source 'manifest' expects a CSV or Parquet table)")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            table = pd.read_csv(path, dtype={self.config.path_column: str, self.config.label_column: str})
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise ValueError(f"data.path {str(path)!r}: unknown table format {suffix!r}; expected .csv or .parquet")
        required = [self.config.path_column, self.config.label_column]
        missing = [c for c in required if c not in table.columns]
        if missing:
            raise ValueError(f"data.path {str(path)!r} lacks column(s) {missing}; it has {list(table.columns)}")
        return table

    def list_items(self) -> list[SourceItem]:
        table = self.read_table()
        cfg = self.config
        base = Path(cfg.root).expanduser() if cfg.root else Path(cfg.path).expanduser().resolve().parent
        special = {cfg.path_column, cfg.label_column, cfg.superclass_column, *cfg.attribute_columns}
        items = []
        for row_number, row in enumerate(table.to_dict(orient="records")):
            raw_path = row[cfg.path_column]
            metadata = {k: _plain(v) for k, v in row.items() if k not in special}
            if _is_missing(raw_path):
                items.append(SourceItem(
                    key=f"row-{row_number:08d}", label=None, locator={}, metadata=metadata,
                    reject_reason=C.REJECT_UNREADABLE, reject_detail=f"row {row_number}: empty {cfg.path_column!r}",
                ))
                continue
            path = Path(str(raw_path)).expanduser()
            full = path if path.is_absolute() else base / path
            label = row[cfg.label_column]
            item = SourceItem(
                key=safe_key(str(raw_path)),
                label=None if _is_missing(label) else str(label),
                superclass=None if _is_missing(row.get(cfg.superclass_column)) else str(row[cfg.superclass_column]),
                attributes={c: float(row[c]) for c in cfg.attribute_columns if not _is_missing(row.get(c))},
                locator={"path": str(full)},
                metadata={C.SOURCE: str(raw_path), **metadata},
            )
            if item.label is None:
                item.reject_reason, item.reject_detail = C.REJECT_MISSING_LABEL, f"row {row_number}: empty {cfg.label_column!r}"
            items.append(item)
        return items

    def load(self, item: SourceItem) -> bytes:
        return read_file_bytes(item.locator["path"])
