"""Build a sharded FAISS index: train once on a sample, then one index per shard.

    trained = train_index(factory, vectors[training_sample(n, size, seed)])   # bytes
    shard   = build_shard(trained, vectors_of_shard, ids_of_shard)            # bytes, pure

`build_shard` is a plain function of (trained index bytes, vectors, ids), so a caller can run
the shards in parallel (Ray tasks) by passing `map_shards` to `build_index`. Vectors are
L2-normalised and searched by inner product (see `factory`). Every shard is a copy of the
one trained index (an IVF index's coarse quantizer is trained once and shared), holds a
contiguous id range and adds its vectors in ascending id order, so the searcher can merge
the shards with faiss into exactly the index an unsharded build makes (see `search`).

`build_index` writes the shard files, a metadata Parquet table and the manifest (last)
through `components.storage.Store`, so local paths and s3:// / gs:// URIs work, every file is
written atomically, and a re-run with the same inputs finds the manifest and does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.constants import KEY
from components.index.factory import METRIC_NAME, new_index, with_id_map
from components.index.manifest import (
    ID_COLUMN,
    INDEX_MANIFEST_FILENAME,
    INDEX_METADATA_FILENAME,
    IndexManifest,
    ShardEntry,
    shard_filename,
)
from components.storage import Store, reuse_when_complete, sha256_bytes

DEFAULT_TRAIN_SIZE = 100_000

ShardTask = tuple[bytes, np.ndarray, np.ndarray]


def as_vectors(vectors: Any, name: str = "vectors", normalize: bool = True) -> np.ndarray:
    """C-contiguous float32 (N, D) array with finite values, L2-normalised if asked."""
    try:
        import torch

        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy()
    except ImportError:  # torch is optional for the index
        pass
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-d (count x dim) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if normalize:
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        array = array / np.maximum(norms, np.float32(1e-12))
    return np.ascontiguousarray(array, dtype=np.float32)


def training_sample(num_vectors: int, size: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded random training sample (all rows if size >= count)."""
    if size < 1:
        raise ValueError(f"train_size must be a positive int, got {size}")
    if size >= num_vectors:
        return np.arange(num_vectors)
    return np.sort(np.random.default_rng(seed).choice(num_vectors, size=size, replace=False))


def train_index(factory: str, sample: np.ndarray) -> bytes:
    """Train an empty index (with its id mapping) on already normalised vectors; its bytes."""
    index = with_id_map(new_index(factory, sample.shape[1]))
    if not index.is_trained:
        try:
            index.train(sample)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1]
            raise ValueError(
                f"training index {factory!r} on {sample.shape[0]} vectors failed ({reason}); "
                "IVF{n} needs at least n training vectors (faiss advises 39 n)"
            ) from exc
    return faiss.serialize_index(index).tobytes()


def build_shard(trained_index: bytes, vectors: np.ndarray, ids: np.ndarray) -> bytes:
    """Add (already normalised) vectors with their int64 ids to a copy of the trained index."""
    index = faiss.deserialize_index(np.frombuffer(trained_index, dtype=np.uint8))
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (vectors.shape[0],):
        raise ValueError(f"ids must have one entry per vector ({vectors.shape[0]}), got shape {ids.shape}")
    order = np.argsort(ids, kind="stable")  # ascending ids: merged shards match an unsharded build
    index.add_with_ids(np.ascontiguousarray(vectors[order]), np.ascontiguousarray(ids[order]))
    return faiss.serialize_index(index).tobytes()


def shard_bounds(num_vectors: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal [begin, end) ranges; every shard gets at least one vector."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if num_shards > num_vectors:
        raise ValueError(f"num_shards ({num_shards}) exceeds the number of vectors ({num_vectors})")
    edges = np.linspace(0, num_vectors, num_shards + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(num_shards)]


def _metadata_table(metadata: pd.DataFrame, ids: np.ndarray) -> bytes:
    if not isinstance(metadata, pd.DataFrame):
        raise TypeError(f"metadata must be a pandas DataFrame with a {KEY!r} column, got {type(metadata).__name__}")
    if KEY not in metadata.columns:
        raise ValueError(f"metadata must have a {KEY!r} column (the sample key), got columns {list(metadata.columns)}")
    if ID_COLUMN in metadata.columns:
        raise ValueError(f"metadata must not have an {ID_COLUMN!r} column: ids are given separately")
    if len(metadata) != ids.shape[0]:
        raise ValueError(f"metadata has {len(metadata)} rows but there are {ids.shape[0]} vectors")
    table = metadata.reset_index(drop=True).copy()
    table.insert(0, ID_COLUMN, ids)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), buffer)
    return buffer.getvalue()


def _fingerprint(parts: Sequence[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _existing(store: Store, inputs_sha256: str) -> IndexManifest | None:
    """The manifest already in `store` if it was built from the same inputs and is complete
    (the manifest is the index's completion marker: `reuse_when_complete`)."""
    def complete(data: Any) -> bool:
        try:
            manifest = IndexManifest.from_dict(data)
        except (ValueError, TypeError):
            return False
        files = [shard.file for shard in manifest.shards] + [manifest.metadata_file]
        return manifest.inputs_sha256 == inputs_sha256 and all(store.exists(name) for name in files)

    try:
        data = reuse_when_complete(store, INDEX_MANIFEST_FILENAME, accept=complete)
    except ValueError:   # a manifest that is not JSON (written by hand, or by another tool): rebuild
        return None
    return None if data is None else IndexManifest.from_dict(data)


def _run_sequentially(function: Callable[..., bytes], tasks: list[ShardTask]) -> list[bytes]:
    return [function(*task) for task in tasks]


def build_index(
    vectors: Any,
    metadata: pd.DataFrame,
    out_uri: str,
    *,
    factory: str,
    num_shards: int = 1,
    ids: Any = None,
    train_size: int = DEFAULT_TRAIN_SIZE,
    seed: int = 0,
    model_run_id: str | None = None,
    dataset_version: str | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    normalize: bool = True,
    map_shards: Callable[[Callable[..., bytes], list[ShardTask]], list[bytes]] | None = None,
) -> IndexManifest:
    """Train, build every shard and write the index directory at `out_uri`; the manifest.

    vectors: (N, D) embeddings. metadata: one row per vector with a 'key' column and any of
    'label', 'lon', 'lat', 'time', 'scene_id' (what search filters read), plus anything else.
    ids: int64 ids (default 0..N-1), unique. train_size / seed: the training sample.
    nprobe / ef_search: default search parameters recorded in the manifest.
    map_shards(build_shard, tasks) -> shard bytes: how shards are built (default: in turn);
    e.g. Ray: lambda f, tasks: ray.get([ray.remote(f).remote(*t) for t in tasks]).
    """
    data = as_vectors(vectors, normalize=normalize)
    count, dim = data.shape
    id_array = np.arange(count, dtype=np.int64) if ids is None else np.asarray(ids)
    if id_array.shape != (count,) or not np.issubdtype(id_array.dtype, np.integer):
        raise ValueError(
            f"ids must be {count} integers (one per vector), got shape {id_array.shape} dtype {id_array.dtype}"
        )
    id_array = id_array.astype(np.int64)
    if id_array.min() < 0 or np.unique(id_array).shape[0] != count:
        raise ValueError("ids must be unique non-negative integers")
    bounds = shard_bounds(count, num_shards)
    # Fail fast on a bad factory string (ValueError naming it), before any work.
    needs_training = not new_index(factory, dim).is_trained
    metadata_bytes = _metadata_table(metadata, id_array)
    search_defaults = {name: int(value) for name, value in (("nprobe", nprobe), ("efSearch", ef_search))
                       if value is not None}
    settings = json.dumps({
        "factory": factory, "num_shards": num_shards, "train_size": train_size, "seed": seed,
        "normalize": normalize, "model_run_id": model_run_id, "dataset_version": dataset_version,
        "search_defaults": search_defaults,
    }, sort_keys=True).encode()
    inputs_sha256 = _fingerprint([settings, data.tobytes(), id_array.tobytes(), metadata_bytes])

    store = Store(out_uri)
    existing = _existing(store, inputs_sha256)
    if existing is not None:
        return existing  # same inputs: no work, no file touched

    sample = training_sample(count, train_size, seed) if needs_training else np.arange(0)
    trained = train_index(factory, data[sample])
    order = np.argsort(id_array, kind="stable")  # shards hold contiguous id ranges
    tasks = [(trained, data[order[begin:end]], id_array[order[begin:end]]) for begin, end in bounds]
    built = (map_shards or _run_sequentially)(build_shard, tasks)
    if len(built) != len(tasks):
        raise ValueError(f"map_shards returned {len(built)} shards for {len(tasks)} tasks")

    entries = []
    for shard, (payload, (begin, end)) in enumerate(zip(built, bounds)):
        name = shard_filename(shard, num_shards)
        store.write_bytes(name, payload)
        entries.append(ShardEntry(file=name, count=end - begin, sha256=sha256_bytes(payload)))
    store.write_bytes(INDEX_METADATA_FILENAME, metadata_bytes)
    manifest = IndexManifest(
        factory=factory, metric=METRIC_NAME, normalized=normalize, dim=dim, num_vectors=count,
        shards=tuple(entries), metadata_file=INDEX_METADATA_FILENAME,
        metadata_sha256=sha256_bytes(metadata_bytes), inputs_sha256=inputs_sha256,
        model_run_id=model_run_id, dataset_version=dataset_version,
        train_size=int(sample.shape[0]), seed=seed,
        search_defaults=search_defaults,
    )
    store.write_json(INDEX_MANIFEST_FILENAME, manifest.to_dict())  # last: the index is complete
    return manifest
