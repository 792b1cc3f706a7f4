"""The index manifest: what was built, from what, and which files hold it.

Layout of an index directory (any URI the storage layer opens: a local path, s3://, gs://):

    index.json                      this manifest, written last
    shard-00000-of-00004.faiss      one faiss index per shard (faiss.serialize_index bytes)
    ...
    metadata.parquet                one row per vector: id, key, label, lon, lat, time, ...

A reader that finds index.json can trust every file it lists (counts and sha256 included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

INDEX_SCHEMA_VERSION = 1
# File names and metadata columns of an index directory: its format is the index package's own;
# readers (search, components.release) import them from here.
INDEX_MANIFEST_FILENAME = "index.json"
INDEX_METADATA_FILENAME = "metadata.parquet"
ID_COLUMN = "id"


def shard_filename(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}.faiss"


@dataclass(frozen=True)
class ShardEntry:
    file: str       # relative to the index directory
    count: int      # vectors in the shard
    sha256: str     # of the serialized index bytes


@dataclass(frozen=True)
class IndexManifest:
    factory: str                      # faiss factory string, e.g. "IVF1024,SQ8"
    metric: str                       # always "inner_product" (on normalised vectors)
    normalized: bool                  # vectors and queries are L2-normalised
    dim: int
    num_vectors: int
    shards: tuple[ShardEntry, ...]
    metadata_file: str
    metadata_sha256: str
    inputs_sha256: str                # fingerprint of everything the build read
    model_run_id: str | None = None
    dataset_version: str | None = None
    train_size: int = 0               # vectors the index was trained on (0: no training)
    seed: int = 0                     # seed of the training sample
    search_defaults: dict[str, int] = field(default_factory=dict)  # nprobe / efSearch
    schema_version: int = INDEX_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shards"] = [asdict(shard) for shard in self.shards]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "index manifest") -> "IndexManifest":
        if not isinstance(data, dict):
            raise ValueError(f"{source} must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != INDEX_SCHEMA_VERSION:
            raise ValueError(f"{source} has schema_version {version!r}; this code reads {INDEX_SCHEMA_VERSION}")
        known = set(cls.__dataclass_fields__)
        missing = sorted(name for name in ("factory", "dim", "shards", "metadata_file") if name not in data)
        if missing:
            raise ValueError(f"{source} lacks the fields {missing}")
        values = {name: value for name, value in data.items() if name in known}
        values["shards"] = tuple(ShardEntry(**shard) for shard in data["shards"])
        return cls(**values)
