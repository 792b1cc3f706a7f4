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

The IVF layer of an index (under an IDMap or a pre-transform such as PCA) is found with
faiss's own `try_extract_index_ivf`.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

SUPPORTED_EXAMPLES = "Flat, IVF{nlist},Flat, IVF{nlist},SQ8, IVF{nlist},PQ{m}, HNSW{M}"
METRIC_NAME = "inner_product"
FAMILIES = ("ivf", "hnsw", "flat", "other")


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


def _without_id_map(index: faiss.Index) -> Any:
    """The index under an IDMap wrapper (the builder's own), downcast to its concrete type."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index


def index_family(index: faiss.Index) -> str:
    """'ivf', 'hnsw', 'flat' or 'other' (what decides the search parameters)."""
    inner = _without_id_map(index)
    if isinstance(inner, faiss.IndexRefine):
        return "other"  # takes IndexRefineSearchParameters, not the IVF ones of its base index
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return "other"


def index_search_settings(index: faiss.Index) -> dict[str, int]:
    """The search settings stored in the index itself: {'nprobe': n} for IVF,
    {'efSearch': n} for HNSW, {} otherwise (the fallback when a search sets none)."""
    family = index_family(index)
    if family == "ivf":
        return {"nprobe": int(faiss.extract_index_ivf(index).nprobe)}
    if family == "hnsw":
        return {"efSearch": int(_without_id_map(index).hnsw.efSearch)}
    return {}


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def search_parameters(
    family: str,
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    selector: faiss.IDSelector | None = None,
) -> faiss.SearchParameters | None:
    """Per-call search parameters for an index of `family` (see `index_family`): nprobe for
    IVF, efSearch for HNSW (ignored by other families), and an optional id selector (ids
    are the external ids). None if nothing is set.

    A parameters object replaces the index's own settings, so callers pass the values they
    want (`index_search_settings` gives the index's own)."""
    if family not in FAMILIES:
        raise ValueError(f"index family must be one of {FAMILIES}, got {family!r}")
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is not None:
            _positive(name, value)
    # IVF and HNSW indexes reject the plain SearchParameters type, so a selector alone
    # still needs their own type, with the setting it would otherwise reset.
    if family == "ivf" and (nprobe is not None or selector is not None):
        if nprobe is None:
            raise ValueError("an IVF search with an id selector needs nprobe (see index_search_settings)")
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe)
    elif family == "hnsw" and (ef_search is not None or selector is not None):
        if ef_search is None:
            raise ValueError("an HNSW search with an id selector needs ef_search (see index_search_settings)")
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search)
    elif selector is not None:
        params = faiss.SearchParameters()
    else:
        return None
    if selector is not None:
        params.sel = selector
    return params
