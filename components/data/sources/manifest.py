"""A CSV or Parquet table with `path,label` (and optional superclass, lon, lat, time, split, ...).

Metadata is validated here, at listing, like pixels are at decoding: `lon`/`lat` become floats
in range, `time` a UTC ISO-8601 string, `split` 'train' or 'test' (stored under
`C.SOURCE_SPLIT`), attribute columns finite floats. An empty cell is missing metadata (None); a
value that does not parse rejects its row as `bad_metadata`, naming the column, the value and
why. CSV columns with such meaning are read as text and parsed cell by cell, so one bad cell
never turns the good rows' numbers into strings.

Every rejection is attributed to the row that caused it: a path listed on several rows keeps
the sample key of its first acceptable row, every other row gets a key of its own (so its
rejection does not fall on the kept row), and repeats are rejected as `duplicate` (same
label) or, all of them, as `conflicting_labels` (different labels). Row numbers in the
details count data rows from 0 (the header excluded).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from components import constants as C
from components.data.records import (
    METADATA_PARSERS,
    SourceItem,
    is_missing,
    parse_fields,
    parse_number,
    parse_source_split,
    safe_key,
)
from components.data.sources.base import Source, SourceConfig
from components.data.sources.folder import read_file_bytes


class ManifestConfig(SourceConfig):
    source: Literal["manifest"] = "manifest"
    path: str                          # .csv or .parquet
    root: str | None = None            # base of relative image paths (default: the table's folder)
    path_column: str = "path"
    label_column: str = "label"
    superclass_column: str = "superclass"
    split_column: str | None = "split"        # the source's own train/test assignment; None: no such column
    attribute_columns: tuple[str, ...] = ()   # numeric columns used as continuous labels


def _plain(value: Any) -> Any:
    """Make a pandas cell JSON-friendly (timestamps as ISO strings, numpy scalars as Python)."""
    if is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


class ManifestSource(Source):
    name: ClassVar[str] = "manifest"
    Config: ClassVar[type[SourceConfig]] = ManifestConfig
    config: ManifestConfig   # what `Source.__init__` stores: this source's own config

    def parsers(self) -> dict[str, Any]:
        """Column -> parser for every column whose values are checked at listing."""
        cfg = self.config
        parsers = dict(METADATA_PARSERS)
        if cfg.split_column:
            parsers[cfg.split_column] = parse_source_split
        parsers.update({column: parse_number for column in cfg.attribute_columns})
        return parsers

    def read_table(self) -> pd.DataFrame:
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.path {str(path)!r} does not exist (source 'manifest' expects a CSV or Parquet table)")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            # Text for every checked column: pandas would infer one type per column, and one bad
            # cell would make every good cell of its column a string.
            as_text = [self.config.path_column, self.config.label_column, self.config.superclass_column, *self.parsers()]
            table = pd.read_csv(path, dtype={column: str for column in as_text})
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
        parsers = self.parsers()
        special = {cfg.path_column, cfg.label_column, cfg.superclass_column, *parsers}
        items, rows_of_path = [], defaultdict(list)
        for row_number, row in enumerate(table.to_dict(orient="records")):
            parsed, problems = parse_fields(row, parsers)
            metadata = {k: _plain(v) for k, v in row.items() if k not in special}
            metadata.update({k: v for k, v in parsed.items() if k in METADATA_PARSERS})
            if cfg.split_column and cfg.split_column in parsed:
                metadata[C.SOURCE_SPLIT] = parsed[cfg.split_column]
            raw_path = row[cfg.path_column]
            if is_missing(raw_path):
                items.append(SourceItem(
                    key=f"row-{row_number:08d}", label=None, locator={}, metadata=metadata,
                    reject_reason=C.REJECT_UNREADABLE, reject_detail=f"row {row_number}: empty {cfg.path_column!r}",
                ))
                continue
            path = Path(str(raw_path)).expanduser()
            label = row[cfg.label_column]
            item = SourceItem(
                key=safe_key(str(raw_path)),
                label=None if is_missing(label) else str(label),
                superclass=None if is_missing(row.get(cfg.superclass_column)) else str(row[cfg.superclass_column]),
                attributes={c: parsed[c] for c in cfg.attribute_columns if parsed.get(c) is not None},
                locator={"path": str(path if path.is_absolute() else base / path)},
                metadata={C.SOURCE: str(raw_path), **metadata},
            )
            if item.label is None:
                also = f"; also {'; '.join(problems)}" if problems else ""
                item.reject_reason = C.REJECT_MISSING_LABEL
                item.reject_detail = f"row {row_number}: empty {cfg.label_column!r}{also}"
            elif problems:
                item.reject_reason, item.reject_detail = C.REJECT_BAD_METADATA, f"row {row_number}: {'; '.join(problems)}"
            rows_of_path[item.key].append((row_number, len(items)))
            items.append(item)
        for rows in rows_of_path.values():
            if len(rows) > 1:
                self._attribute_repeats([(n, items[i]) for n, i in rows])
        return items

    def _attribute_repeats(self, rows: list[tuple[int, SourceItem]]) -> None:
        """One path on several rows: its first acceptable row keeps the key; the others get their
        own keys and, unless rejected for a reason of their own, a rejection naming the kept row."""
        column = self.config.path_column
        acceptable = [(n, item) for n, item in rows if item.reject_reason is None]
        keeper_number, keeper = (acceptable or rows)[0]
        for n, item in rows:
            if item is not keeper:
                item.key = safe_key(f"{item.metadata[C.SOURCE]}#row{n}")
        labels = sorted({item.label for _, item in acceptable if item.label is not None})
        if len(labels) > 1:
            numbers = [n for n, _ in acceptable]
            for n, item in acceptable:
                item.reject_reason = C.REJECT_CONFLICTING_LABELS
                item.reject_detail = f"row {n}: {column} {item.metadata[C.SOURCE]!r} is listed under {labels} on rows {numbers}"
            return
        for n, item in acceptable:
            if item is not keeper:
                item.reject_reason = C.REJECT_DUPLICATE
                item.reject_detail = f"row {n}: repeats {column} {item.metadata[C.SOURCE]!r} of row {keeper_number}"

    def load(self, item: SourceItem) -> bytes:
        return read_file_bytes(item.locator["path"])
