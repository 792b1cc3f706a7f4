"""What a search request holds and what its answer looks like.

A request carries exactly one query: ``embedding`` (a list of floats, the index's dimension)
or ``image`` (base64 bytes of a PNG, JPEG or TIFF chip, embedded by the live generation's
model through the same decoding and embedding path as the indexed chips). Then ``k`` and
any of the metadata filters `components.index.SearchFilter` supports: ``labels``, ``bbox``
(min_lon, min_lat, max_lon, max_lat), ``time_from`` / ``time_to`` (ISO 8601 or numbers,
inclusive) and ``scene_ids``; and optionally ``nprobe`` / ``ef_search`` for IVF / HNSW.

Each result row: rank, id, score (inner product of the L2-normalised query and item, i.e.
cosine similarity), distance (squared Euclidean distance between the normalised vectors,
``2 - 2 * score``), key, label, and every other metadata column under ``metadata``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components import constants as C
from components.index import IndexSearcher, SearchFilter
from components.index.manifest import ID_COLUMN

MAX_K = 1000
MAX_DIM = 65_536
MAX_IMAGE_BYTES = 16 * 1024 * 1024
_TOP_LEVEL = ("rank", "id", "score", C.KEY, C.LABEL)


class QueryError(ValueError):
    """A request that cannot be answered as asked (HTTP 400 with this message)."""


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM)
    image: str | None = Field(None, min_length=1, description="base64 of a PNG, JPEG or TIFF chip")
    k: int = Field(10, ge=1, le=MAX_K)
    labels: list[str | int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    time_from: str | float | None = None
    time_to: str | float | None = None
    scene_ids: list[str | int] | None = None
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_query(self) -> "SearchRequest":
        if (self.embedding is None) == (self.image is None):
            raise ValueError("give exactly one of 'embedding' (a list of floats) or 'image' (base64 PNG/JPEG/TIFF)")
        return self


def search_filter(request: SearchRequest) -> SearchFilter:
    """The request's metadata conditions as a `SearchFilter` (QueryError on a bad value)."""
    time_range = None
    if request.time_from is not None or request.time_to is not None:
        time_range = (request.time_from, request.time_to)
    try:
        return SearchFilter(labels=request.labels, bbox=request.bbox, time_range=time_range,
                            scene_ids=request.scene_ids)
    except (TypeError, ValueError) as exc:
        raise QueryError(str(exc)) from None


def embed_image(encoded: str, model: Any, image: dict[str, Any] | None, tap: str = C.INDEX_TAP_DEFAULT) -> np.ndarray:
    """(1, D) embedding of a base64 chip, decoded and resized like ingest (`components.data.decode`)
    and embedded like the indexed chips (`components.inference`, the index's feature layer `tap`)."""
    from components.data.decode import decode_image, normalise
    from components.data.records import Rejection
    from components.inference import embed_query_chip

    if model is None or not image:
        raise QueryError("the live index was built without a model (no model_uri in its source.json): "
                         "query it with an 'embedding'")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise QueryError("'image' is not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise QueryError(f"'image' is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        chip = normalise(decode_image(data), image["size"], image["channels"])
    except Rejection as rejection:
        raise QueryError(f"'image' is not a usable chip: {rejection}") from None
    except Exception as exc:   # PIL raises several types for bytes it cannot read
        raise QueryError(f"'image' is not a readable PNG, JPEG or TIFF image ({type(exc).__name__})") from None
    return embed_query_chip(model, chip, tap)


def query_vector(request: SearchRequest, model: Any, image: dict[str, Any] | None, dim: int,
                 tap: str = C.INDEX_TAP_DEFAULT) -> np.ndarray:
    """The request's query as a (1, D) float32 array of the index's dimension."""
    if request.image is not None:
        vector = embed_image(request.image, model, image, tap)
    else:
        vector = np.asarray(request.embedding, dtype=np.float32)[None]
        if not np.isfinite(vector).all():
            raise QueryError("'embedding' contains NaN or infinite values")
    if vector.shape[1] != dim:
        raise QueryError(f"the query has dimension {vector.shape[1]}; the live index has dimension {dim}")
    if not np.any(vector):
        raise QueryError("the query embedding is all zeros: it has no direction to search along")
    return vector


def _json_value(value: Any) -> Any:
    """A metadata cell as JSON: numbers and strings as they are, times as ISO 8601, missing as null."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, (pd.Timestamp, datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(item) for item in value]
    return value


class ResultColumns:
    """The index's metadata as one contiguous Arrow array per column, made once per loaded
    generation: a request gathers its k rows by position in microseconds. (Building a pandas
    DataFrame per request, as `IndexSearcher.search` does, cost ~2 ms at 1 M rows: ten times
    the faiss search itself, on the core the HTTP proxy needs.)"""

    def __init__(self, searcher: IndexSearcher) -> None:
        table = pa.Table.from_pandas(searcher.metadata, preserve_index=False)
        self._searcher = searcher
        self._columns = {name: table.column(name).combine_chunks() for name in table.column_names
                         if name != ID_COLUMN}
        self._metadata_names = [name for name in self._columns if name not in _TOP_LEVEL]

    def rows(self, scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
        """One JSON object per result (module docstring) from `IndexSearcher.search_arrays`'
        scores and ids of one query (ids -1 past the last result are dropped); the distance
        only where the index normalises its vectors (otherwise it is not 2 - 2 score)."""
        valid = ids >= 0
        ids, scores = ids[valid], scores[valid]
        positions = pa.array(self._searcher.metadata_rows(ids), pa.int64())
        values = {name: column.take(positions).to_pylist() for name, column in self._columns.items()}
        normalized = self._searcher.manifest.normalized
        rows = []
        for i, (item, score) in enumerate(zip(ids.tolist(), scores.tolist())):
            row: dict[str, Any] = {"rank": i + 1, "id": item, "score": score,
                                   "distance": max(0.0, 2.0 - 2.0 * score) if normalized else None}
            for column in (C.KEY, C.LABEL):
                if column in values:
                    row[column] = _json_value(values[column][i])
            row["metadata"] = {name: _json_value(values[name][i]) for name in self._metadata_names}
            rows.append(row)
        return rows
