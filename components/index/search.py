"""Search a sharded index: every shard is searched, the per-shard top-k lists are merged.

Merge rule (also the tie-break): descending score (inner product of normalised vectors), then
ascending id. Because each shard holds its vectors in ascending id order and faiss prefers
earlier vectors on ties, a sharded Flat index returns exactly what one unsharded Flat index
returns, ids and order included.

Filters (`SearchFilter`: labels, lon/lat box, time range, scene ids) become a faiss id
selector passed with the search parameters, so a filtered Flat search is an exact search
over the allowed subset; approximate indexes search their usual structure restricted to it.
An index type that rejects selectors is searched with growing over-fetch and filtered after.

Backends: faiss on CPU; faiss on GPU when a GPU build of faiss (the `gpu` extra) sees a GPU;
otherwise, for Flat indexes on a CUDA machine, a torch matrix product on the GPU (the same
ranking rule; scores may differ from faiss's CPU scores in the last float32 bits).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.index.build import as_vectors
from components.index.factory import index_family, search_parameters
from components.index.filters import SearchFilter
from components.index.manifest import ID_COLUMN, INDEX_MANIFEST_FILENAME, IndexManifest
from components.storage import Store, sha256_bytes

RANK = "rank"
SCORE = "score"
BACKENDS = ("auto", "faiss", "torch")
_TORCH_QUERY_CHUNK = 1024  # queries per GPU matrix product


def _faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of concatenated shard results by (score desc, id asc); -1 ids last."""
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


@dataclass
class _TorchShard:
    vectors: Any   # (n, D) float32 tensor on the device, rows in ascending id order
    ids: Any       # (n,) int64 tensor


class IndexSearcher:
    """All shards of one index plus its metadata table, ready to answer queries."""

    def __init__(self, manifest: IndexManifest, shards: Sequence[faiss.Index], metadata: pd.DataFrame,
                 device: str = "auto", backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.manifest = manifest
        self.metadata = metadata.reset_index(drop=True)
        self.shards = list(shards)
        self.family = index_family(self.shards[0])
        ids = self.metadata[ID_COLUMN].to_numpy()
        self._row_of_id = None if np.array_equal(ids, np.arange(len(ids))) else pd.Index(ids)
        self._torch_shards: list[_TorchShard] | None = None
        self.backend, self.device = self._choose_backend(backend, device)
        if self.backend == "torch":
            self._torch_shards = [self._to_torch(shard) for shard in self.shards]
        elif self.device == "cuda":
            self._gpu_resources = faiss.StandardGpuResources()  # must outlive the GPU indexes
            self.shards = [self._to_faiss_gpu(shard) for shard in self.shards]

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, uri: str, *, device: str = "auto", backend: str = "auto", verify: bool = True) -> "IndexSearcher":
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
        return cls(manifest, shards, metadata, device=device, backend=backend)

    def _choose_backend(self, backend: str, device: str) -> tuple[str, str]:
        gpu_faiss = _faiss_has_gpu() and self.family in ("flat", "ivf")
        gpu_torch = _torch_cuda_available() and self.family == "flat"
        if backend == "torch":
            if self.family != "flat":
                raise ValueError(f"backend 'torch' searches Flat indexes only, this index is {self.manifest.factory!r}")
            if device == "cuda" and not gpu_torch:
                raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU")
            return "torch", "cuda" if (device != "cpu" and gpu_torch) else "cpu"
        if device == "cpu":
            return "faiss", "cpu"
        if gpu_faiss:
            return "faiss", "cuda"
        if gpu_torch and backend == "auto":
            return "torch", "cuda"
        if device == "auto":
            return "faiss", "cpu"
        raise ValueError(
            f"device 'cuda' was requested for {self.manifest.factory!r}, but there is no faiss GPU build and "
            "the torch fallback covers Flat indexes only"
        )

    def _to_faiss_gpu(self, shard: faiss.Index) -> faiss.Index:
        try:
            return faiss.index_cpu_to_gpu(self._gpu_resources, 0, shard)
        except RuntimeError as exc:  # an index type the GPU build cannot hold: stay on CPU
            warnings.warn(f"faiss could not move a {self.manifest.factory!r} shard to the GPU ({exc}); "
                          "searching it on CPU", RuntimeWarning, stacklevel=3)
            return shard

    def _to_torch(self, shard: faiss.Index) -> _TorchShard:
        import torch

        wrapper = faiss.downcast_index(shard)
        flat = faiss.downcast_index(wrapper.index)
        vectors = flat.reconstruct_n(0, flat.ntotal)
        ids = faiss.vector_to_array(wrapper.id_map).astype(np.int64)
        order = np.argsort(ids, kind="stable")  # columns in ascending id order: ties by id
        device = torch.device(self.device if self.device == "cuda" else "cpu")
        return _TorchShard(torch.from_numpy(np.ascontiguousarray(vectors[order])).to(device),
                           torch.from_numpy(ids[order]).to(device))

    # -- search -------------------------------------------------------------------------
    @property
    def num_vectors(self) -> int:
        return int(self.manifest.num_vectors)

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
        vectors = as_vectors(queries, "queries", normalize=self.manifest.normalized)
        if vectors.shape[1] != self.manifest.dim:
            raise ValueError(f"queries have dimension {vectors.shape[1]}, the index has {self.manifest.dim}")
        allowed = None
        if search_filter is not None and not search_filter.is_empty:
            allowed = self.allowed_ids(search_filter)
        nprobe = nprobe if nprobe is not None else self.manifest.search_defaults.get("nprobe")
        ef_search = ef_search if ef_search is not None else self.manifest.search_defaults.get("efSearch")
        if self.backend == "torch":
            parts = [self._search_torch(shard, vectors, k, allowed) for shard in self._torch_shards]
        else:
            parts = [self._search_faiss(shard, vectors, k, allowed, nprobe, ef_search) for shard in self.shards]
        scores = np.concatenate([part[0] for part in parts], axis=1)
        ids = np.concatenate([part[1] for part in parts], axis=1)
        scores, ids = merge_top_k(scores, ids, k)
        if scores.shape[1] < k:  # fewer vectors than k in total
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), ids

    def search(self, queries: Any, k: int = 10, **options: Any) -> list[pd.DataFrame]:
        """One DataFrame per query: rank, id, score and the metadata columns (key, label, ...),
        best first; fewer than k rows when the filter leaves fewer items."""
        scores, ids = self.search_arrays(queries, k, **options)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            valid = row_ids >= 0
            found = row_ids[valid]
            rows = found if self._row_of_id is None else self._row_of_id.get_indexer(found)
            table = self.metadata.iloc[rows].reset_index(drop=True)
            table.insert(0, SCORE, row_scores[valid])
            table.insert(0, RANK, np.arange(1, found.shape[0] + 1))
            id_column = table.pop(ID_COLUMN)
            table.insert(1, ID_COLUMN, id_column)
            results.append(table)
        return results

    # -- backends -----------------------------------------------------------------------
    def _selector(self, allowed: np.ndarray):
        """A faiss id selector for sorted `allowed` ids, and the buffer it reads (keep alive)."""
        limit = int(allowed[-1]) + 1 if allowed.size else 1
        if limit <= 64 * max(self.num_vectors, 1):  # dense ids: a bitmap is the fastest test
            mask = np.zeros(limit, dtype=bool)
            mask[allowed] = True
            bitmap = np.packbits(mask, bitorder="little")
            # faiss takes the bitmap's length in bytes (ids beyond it are not members).
            return faiss.IDSelectorBitmap(bitmap.shape[0], faiss.swig_ptr(bitmap)), bitmap
        buffer = np.ascontiguousarray(allowed, dtype=np.int64)
        return faiss.IDSelectorBatch(buffer.shape[0], faiss.swig_ptr(buffer)), buffer

    def _search_faiss(self, shard, vectors, k, allowed, nprobe, ef_search):
        if allowed is not None and allowed.size == 0:
            return np.full((vectors.shape[0], 0), -np.inf, np.float32), np.full((vectors.shape[0], 0), -1, np.int64)
        fetch = min(k, max(shard.ntotal, 1))
        if allowed is None:
            params = search_parameters(shard, nprobe=nprobe, ef_search=ef_search)
            return shard.search(vectors, fetch, params=params)
        selector, buffer = self._selector(allowed)
        params = search_parameters(shard, nprobe=nprobe, ef_search=ef_search, selector=selector)
        try:
            return shard.search(vectors, fetch, params=params)  # `buffer` outlives the search
        except RuntimeError:  # this index type (or its GPU version) rejects id selectors
            return self._search_over_fetching(shard, vectors, k, allowed, nprobe, ef_search)

    def _search_over_fetching(self, shard, vectors, k, allowed, nprobe, ef_search):
        """Fetch more results until k allowed ones are found (or the shard is exhausted)."""
        params = search_parameters(shard, nprobe=nprobe, ef_search=ef_search)
        fetch = min(max(4 * k, 64), shard.ntotal)
        while True:
            scores, ids = shard.search(vectors, fetch, params=params)
            keep = np.isin(ids, allowed) & (ids >= 0)
            if keep.sum(axis=1).min() >= k or fetch >= shard.ntotal:
                break
            fetch = min(4 * fetch, shard.ntotal)
        scores = np.where(keep, scores, -np.inf)
        ids = np.where(keep, ids, -1)
        return merge_top_k(scores, ids, k)

    def _search_torch(self, shard: _TorchShard, vectors: np.ndarray, k: int, allowed):
        import torch

        fetch = min(k, shard.ids.shape[0])
        columns_allowed = None
        if allowed is not None:
            columns_allowed = torch.from_numpy(np.isin(shard.ids.cpu().numpy(), allowed)).to(shard.ids.device)
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # TF32 would change scores and ranks
        try:
            all_scores, all_ids = [], []
            for begin in range(0, vectors.shape[0], _TORCH_QUERY_CHUNK):
                chunk = torch.from_numpy(vectors[begin:begin + _TORCH_QUERY_CHUNK]).to(shard.vectors.device)
                scores = chunk @ shard.vectors.T
                if columns_allowed is not None:
                    scores.masked_fill_(~columns_allowed, -torch.inf)
                top = _top_k_ties_by_column(scores, fetch)
                all_scores.append(torch.gather(scores, 1, top).cpu().numpy())
                found = shard.ids[top].cpu().numpy()
                all_ids.append(np.where(np.isneginf(all_scores[-1]), -1, found))
        finally:
            torch.set_float32_matmul_precision(previous)
        return np.concatenate(all_scores), np.concatenate(all_ids)


def _top_k_ties_by_column(scores, k: int):
    """Column indices of the k best scores per row, ties broken by lower column (= lower id)."""
    import torch

    top = torch.topk(scores, k, dim=1).indices
    kth = torch.gather(scores, 1, top[:, -1:])
    # topk's choice among equal scores is unspecified: rows whose k-th score is tied with an
    # item it left out are redone with a stable full sort (rare with real embeddings).
    ambiguous = (scores >= kth).sum(dim=1) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero(as_tuple=True)[0]
        exact = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
        top[rows] = exact
    return top
