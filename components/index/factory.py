"""FAISS index types from factory strings, id mapping and per-search parameters.

Every index uses the inner-product metric on L2-normalised vectors (the builder and the
searcher normalise), so scores are cosine similarities and ranking by score equals ranking
by Euclidean distance (|a - b|^2 = 2 - 2 a.b).

Index types (faiss factory strings) this project uses and tests:
  Flat                exact search
  IVF{nlist},Flat     inverted lists, exact distances inside the probed lists (search: nprobe)
  IVF{nlist},SQ8      inverted lists, 8-bit scalar-quantised vectors (search: nprobe)
  IVF{nlist},PQ{m}    inverted lists, product-quantised vectors; dim must be divisible by m
  HNSW{M}             graph index (search: efSearch)
Other strings faiss parses are accepted as they are.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

SUPPORTED_EXAMPLES = "Flat, IVF{nlist},Flat, IVF{nlist},SQ8, IVF{nlist},PQ{m}, HNSW{M}"
METRIC_NAME = "inner_product"


def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty (untrained) inner-product index; ValueError naming a string faiss rejects."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(
            f"index factory string must be a non-empty string such as {SUPPORTED_EXAMPLES}, got {factory!r}"
        )
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"index dimension must be a positive int, got {dim!r}")
    if "IDMap" in factory:
        raise ValueError(f"index factory string {factory!r}: leave out IDMap, ids are mapped by the builder")
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise ValueError(
            f"index factory string {factory!r} is not valid for dim={dim} ({reason}); "
            f"expected one of {SUPPORTED_EXAMPLES}"
        ) from exc


def with_id_map(index: faiss.Index) -> faiss.Index:
    """IVF indexes store external ids themselves; others get an IndexIDMap2 wrapper."""
    if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        return index
    return faiss.IndexIDMap2(index)  # the Python wrapper keeps the inner index alive


def _core(index: faiss.Index) -> Any:
    """The index under an IDMap wrapper, downcast to its concrete type."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index


def index_family(index: faiss.Index) -> str:
    """'ivf', 'hnsw', 'flat' or 'other' (what decides the search parameters)."""
    core = _core(index)
    if isinstance(core, faiss.IndexIVF):
        return "ivf"
    if isinstance(core, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(core, faiss.IndexFlat):
        return "flat"
    return "other"


def search_parameters(
    index: faiss.Index,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    selector: faiss.IDSelector | None = None,
) -> faiss.SearchParameters | None:
    """Per-call search parameters: nprobe for IVF, efSearch for HNSW (ignored by other
    types), and an optional id selector (ids are the external ids). None if nothing is set."""
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    family, core = index_family(index), _core(index)
    # A parameters object replaces the index's own settings, so unset values copy them.
    if family == "ivf":
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe) if nprobe is not None else int(core.nprobe)
    elif family == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search) if ef_search is not None else int(core.hnsw.efSearch)
    elif selector is not None:
        params = faiss.SearchParameters()
    else:
        return None
    if selector is not None:
        params.sel = selector
    return params
