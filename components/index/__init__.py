"""FAISS indexing: sharded build, manifest, filtered search (and embedding a split: `embedding`).

Public API (imported lazily, so `components.index.embedding` users do not load faiss):
    build_index, build_shard, train_index, training_sample   (components.index.build)
    IndexSearcher, merge_top_k                                (components.index.search)
    SearchFilter                                              (components.index.filters)
    IndexManifest, ShardEntry                                 (components.index.manifest)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_index": "components.index.build",
    "build_shard": "components.index.build",
    "train_index": "components.index.build",
    "training_sample": "components.index.build",
    "IndexSearcher": "components.index.search",
    "merge_top_k": "components.index.search",
    "SearchFilter": "components.index.filters",
    "IndexManifest": "components.index.manifest",
    "ShardEntry": "components.index.manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'components.index' has no attribute {name!r}")
