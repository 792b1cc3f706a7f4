"""Search a sharded index through faiss's own machinery; results by (score desc, id asc).

How the shards become one faiss index (`combine_shards`, at load time):
- Shards faiss can merge (Flat, IVF{n},Flat/SQ/PQ, SQ, PQ) are merged with faiss's
  `Index.merge_from`. `build_index` makes every shard from one trained index (IVF shards
  therefore share one coarse quantizer, trained once) and gives each a contiguous, ascending
  id range, so the merged index holds exactly what an unsharded build holds, in the same
  order: the same results bit for bit, one coarse quantization per query, and filters and
  per-call nprobe work as on any faiss index. (It is the in-memory form of
  faiss.contrib.ondisk.merge_ondisk, which serves the merged lists from disk instead.)
- Types faiss cannot merge (HNSW graphs, refine indexes) go into
  `faiss.IndexShards(d, threaded=False)`: faiss searches each shard and merges the top-k
  lists with its heap. Not threaded: on 2 cores the per-shard threads competed with faiss's
  OpenMP threads and slowed search down, and IndexIDMap rewrites the shared search
  parameters during a filtered search, which concurrent shard threads would race on.
- `faiss.IndexShardsIVF` (one coarse quantizer over IVF shards) is not used: faiss 1.15.1
  calls each shard's search_preassigned without the search parameters, so an id selector
  (a metadata filter) is silently ignored, and it rejects a call whose nprobe differs from
  the shards' own.

Ranking rule: descending score (inner product of normalised vectors), ties by ascending id.
faiss itself lists tied items by descending id, so the searcher re-orders each returned list;
results never depend on how the index was sharded. Which of several items tied at the k-th
place makes the list is faiss's choice.

Filters (`SearchFilter`: labels, lon/lat box, time range, scene ids) become a faiss id
selector passed with the search parameters, so a filtered Flat search is an exact search
over the allowed subset; approximate indexes search their usual structure restricted to it.
An index that rejects selectors (refine indexes, some GPU indexes) is searched with growing
over-fetch and filtered after.

Devices: faiss on CPU, or faiss's GPU build (the `gpu` extra) when it sees a GPU
(`faiss.get_num_gpus() > 0`) and the index is Flat or IVF. There is no other GPU path.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.index.build import as_vectors
from components.index.factory import index_family, index_search_settings, search_parameters
from components.index.filters import SearchFilter
from components.index.manifest import ID_COLUMN, INDEX_MANIFEST_FILENAME, IndexManifest
from components.storage import Store, sha256_bytes

RANK = "rank"
SCORE = "score"
DEVICES = ("auto", "cpu", "cuda")
MERGED = "merged"        # IndexSearcher.layout: one faiss index holding every shard
SHARDS = "IndexShards"   # IndexSearcher.layout: faiss.IndexShards over the shards
_NO_ID = np.iinfo(np.int64).max  # sort key of "no result" (-1): after every real id


def faiss_has_gpu() -> bool:
    """True where a GPU build of faiss is installed and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _ordered(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (score desc, id asc); -1 ids (no result) last, with score -inf."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(ids < 0, _NO_ID, ids), -scores.astype(np.float64)), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of result lists laid side by side (e.g. one block of columns per
    index), by (score desc, id asc); -1 ids (no result) last, with score -inf.

    faiss.ResultHeap selects the k best of each row. The heap keeps whichever of several
    items tied at the k-th place it met first, so a row where the k-th score ties with an
    item left out is re-ranked in full: the lowest ids win, whatever the column order."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    scores = np.ascontiguousarray(np.where(ids < 0, -np.inf, scores), dtype=np.float32)
    if scores.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(f"scores and ids must be 2-d arrays of one shape, got {scores.shape} and {ids.shape}")
    heap = faiss.ResultHeap(scores.shape[0], int(k), keep_max=True)
    heap.add_result(scores, ids)  # -inf never enters: the heap starts at -FLT_MAX
    heap.finalize()
    top_scores, top_ids = heap.D, heap.I
    # A row the heap could not fill kept every real item; otherwise count what ties the k-th.
    kth = np.where(top_ids[:, -1] < 0, np.inf, top_scores[:, -1])
    tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    if tied.size:
        exact_scores, exact_ids = _ordered(scores[tied], ids[tied])
        top_scores[tied], top_ids[tied] = exact_scores[:, :k], exact_ids[:, :k]
    return _ordered(top_scores, top_ids)


def _mergeable(shards: Sequence[faiss.Index]) -> bool:
    """faiss can merge the shards into one, and IVF shards share one coarse quantizer."""
    first = shards[0]
    try:
        for shard in shards[1:]:
            first.check_compatible_for_merge(shard)
    except RuntimeError:  # not implemented for this type (HNSW, refine), or incompatible
        return False
    ivf = faiss.try_extract_index_ivf(first)
    if ivf is None:
        return True
    # faiss checks sizes and types, not centroids; merged lists of different quantizers
    # would be probed by the wrong centroids. build_index trains once, so this holds.
    quantizer = faiss.serialize_index(ivf.quantizer)
    return all(np.array_equal(faiss.serialize_index(faiss.extract_index_ivf(shard).quantizer), quantizer)
               for shard in shards[1:])


def combine_shards(shards: Sequence[faiss.Index]) -> faiss.Index:
    """One faiss index answering for all shards (module doc). Takes ownership of `shards`:
    merging moves each shard's entries into the first, leaving the others empty."""
    shards = list(shards)
    if not shards:
        raise ValueError("an index needs at least one shard, got none")
    first = shards[0]
    if len(shards) == 1:
        return first
    if _mergeable(shards):
        for shard in shards[1:]:
            first.merge_from(shard, 0)  # add_id=0: the shards hold their external ids
        return first
    combined = faiss.IndexShards(first.d, False, False)  # threaded=False; ids are external, not successive
    for shard in shards:
        combined.add_shard(shard)  # the Python wrapper keeps the shard alive
    return combined


def _selector(allowed: np.ndarray, num_vectors: int):
    """A faiss id selector for sorted `allowed` ids, and the buffer it reads (keep alive)."""
    limit = int(allowed[-1]) + 1 if allowed.size else 1
    if limit <= 64 * max(num_vectors, 1):  # dense ids: a bitmap is the fastest test
        mask = np.zeros(limit, dtype=bool)
        mask[allowed] = True
        bitmap = np.packbits(mask, bitorder="little")
        # faiss takes the bitmap's length in bytes (ids beyond it are not members).
        return faiss.IDSelectorBitmap(bitmap.shape[0], faiss.swig_ptr(bitmap)), bitmap
    buffer = np.ascontiguousarray(allowed, dtype=np.int64)
    return faiss.IDSelectorBatch(buffer.shape[0], faiss.swig_ptr(buffer)), buffer


class IndexSearcher:
    """All shards of one index, as one faiss index, plus its metadata table."""

    def __init__(self, manifest: IndexManifest, shards: Sequence[faiss.Index], metadata: pd.DataFrame,
                 device: str = "auto") -> None:
        """`shards` are taken over (see `combine_shards`); `device`: 'auto', 'cpu' or 'cuda'."""
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        shards = list(shards)
        if not shards:
            raise ValueError(f"index {manifest.factory!r} has no shards")
        self.manifest = manifest
        self.metadata = metadata.reset_index(drop=True)
        ids = self.metadata[ID_COLUMN].to_numpy()
        self._row_of_id = None if np.array_equal(ids, np.arange(len(ids))) else pd.Index(ids)
        self.family = index_family(shards[0])
        # Search settings: a call's own > the manifest's defaults > the index's own.
        self._settings = {**index_search_settings(shards[0]), **manifest.search_defaults}
        self.index = combine_shards(shards)
        self.layout = SHARDS if isinstance(self.index, faiss.IndexShards) else MERGED
        self.device = self._choose_device(device)
        if self.device == "cuda":
            self._gpu_resources = faiss.StandardGpuResources()  # must outlive the GPU index
            self.index = self._to_gpu(self.index)

    @classmethod
    def load(cls, uri: str, *, device: str = "auto", verify: bool = True) -> "IndexSearcher":
        """Open the index directory at `uri` (local path or pyarrow URI) written by build_index."""
        store = Store(uri)
        if not store.exists(INDEX_MANIFEST_FILENAME):
            raise FileNotFoundError(f"{store.uri_of(INDEX_MANIFEST_FILENAME)} does not exist: not an index directory")
        manifest_uri = store.uri_of(INDEX_MANIFEST_FILENAME)
        manifest = IndexManifest.from_dict(store.read_json(INDEX_MANIFEST_FILENAME), manifest_uri)
        shards = []
        for entry in manifest.shards:
            payload = store.read_bytes(entry.file)
            if verify and sha256_bytes(payload) != entry.sha256:
                raise ValueError(
                    f"{store.uri_of(entry.file)}: sha256 differs from the manifest (corrupt or replaced file)"
                )
            shards.append(faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8)))
        table_bytes = store.read_bytes(manifest.metadata_file)
        if verify and sha256_bytes(table_bytes) != manifest.metadata_sha256:
            raise ValueError(f"{store.uri_of(manifest.metadata_file)}: sha256 differs from the manifest")
        metadata = pq.read_table(io.BytesIO(table_bytes)).to_pandas()
        return cls(manifest, shards, metadata, device=device)

    def _choose_device(self, device: str) -> str:
        if device == "cpu":
            return "cpu"
        gpu_type = self.family in ("flat", "ivf") and self.layout == MERGED
        if faiss_has_gpu() and gpu_type:
            return "cuda"
        if device == "auto":
            return "cpu"
        if not faiss_has_gpu():
            reason = "this faiss sees no GPU: install faiss's GPU build (the `gpu` extra) on a CUDA host"
        else:
            reason = "faiss's GPU indexes cover Flat and IVF types only"
        raise ValueError(f"device 'cuda' was requested for index {self.manifest.factory!r}, but {reason}; "
                         "or pass device='cpu'")

    def _to_gpu(self, index: faiss.Index) -> faiss.Index:
        try:
            return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        except RuntimeError as exc:  # a type the GPU build cannot hold: stay on CPU
            warnings.warn(f"faiss could not move index {self.manifest.factory!r} to the GPU ({exc}); "
                          "searching it on CPU", RuntimeWarning, stacklevel=3)
            self.device = "cpu"
            return index

    # -- search -------------------------------------------------------------------------
    @property
    def num_vectors(self) -> int:
        return int(self.manifest.num_vectors)

    def metadata_rows(self, ids: np.ndarray) -> np.ndarray:
        """Positions in `metadata` of (valid, >= 0) result ids."""
        return ids if self._row_of_id is None else self._row_of_id.get_indexer(ids)

    def allowed_ids(self, search_filter: SearchFilter) -> np.ndarray:
        """Sorted ids of the metadata rows the filter allows."""
        return np.sort(self.metadata[ID_COLUMN].to_numpy()[search_filter.mask(self.metadata)])

    def search_arrays(
        self,
        queries: Any,
        k: int = 10,
        *,
        search_filter: SearchFilter | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (Q, k); ids -1 and scores -inf where fewer than k results exist.

        queries: (Q, D) embeddings (normalised here). nprobe / ef_search override the
        manifest's defaults for IVF / HNSW indexes and are ignored by other types.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        vectors = as_vectors(queries, "queries", normalize=self.manifest.normalized)
        if vectors.shape[1] != self.manifest.dim:
            raise ValueError(f"queries have dimension {vectors.shape[1]}, the index has {self.manifest.dim}")
        if vectors.shape[0] == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        settings = {"nprobe": nprobe if nprobe is not None else self._settings.get("nprobe"),
                    "ef_search": ef_search if ef_search is not None else self._settings.get("efSearch")}
        if search_filter is None or search_filter.is_empty:
            params = search_parameters(self.family, **settings)
            return _ordered(*self.index.search(vectors, k, params=params))
        allowed = self.allowed_ids(search_filter)
        if allowed.size == 0:
            return np.full((vectors.shape[0], k), -np.inf, np.float32), np.full((vectors.shape[0], k), -1, np.int64)
        selector, buffer = _selector(allowed, self.num_vectors)
        params = search_parameters(self.family, selector=selector, **settings)
        try:
            found = self.index.search(vectors, k, params=params)  # `buffer` outlives the search
        except RuntimeError:  # this index type (or its GPU version) rejects id selectors
            return self._search_over_fetching(vectors, k, allowed, settings)
        return _ordered(*found)

    def _search_over_fetching(self, vectors: np.ndarray, k: int, allowed: np.ndarray,
                              settings: dict[str, int | None]) -> tuple[np.ndarray, np.ndarray]:
        """Fetch more results until k allowed ones are found (or the index is exhausted)."""
        params = search_parameters(self.family, **settings)
        total = max(int(self.index.ntotal), 1)
        fetch = min(max(4 * k, 64), total)
        while True:
            scores, ids = self.index.search(vectors, fetch, params=params)
            keep = np.isin(ids, allowed) & (ids >= 0)
            if keep.sum(axis=1).min() >= k or fetch >= total:
                break
            fetch = min(4 * fetch, total)
        return merge_top_k(np.where(keep, scores, -np.inf), np.where(keep, ids, -1), k)

    def search(self, queries: Any, k: int = 10, **options: Any) -> list[pd.DataFrame]:
        """One DataFrame per query: rank, id, score and the metadata columns (key, label, ...),
        best first; fewer than k rows when the filter leaves fewer items."""
        scores, ids = self.search_arrays(queries, k, **options)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            valid = row_ids >= 0
            found = row_ids[valid]
            table = self.metadata.iloc[self.metadata_rows(found)].reset_index(drop=True)
            table.insert(0, SCORE, row_scores[valid])
            table.insert(0, RANK, np.arange(1, found.shape[0] + 1))
            id_column = table.pop(ID_COLUMN)
            table.insert(1, ID_COLUMN, id_column)
            results.append(table)
        return results
