"""FAISS indexing: a sharded index build with a manifest, and filtered k-NN search over it.

What this package owns:
- building an index directory from embeddings and a metadata table (`build`): one index
  trained once on a seeded sample, shards copied from it (built in parallel through a
  caller's `map_shards`, e.g. Ray tasks), the id -> key/metadata Parquet table, and
  `index.json` (`manifest`) with every file's sha256 and a fingerprint of the inputs, so a
  re-run on the same inputs does no work and changes no file;
- index types as faiss factory strings and their search parameters (`factory`);
- searching all shards as one faiss index (`search`: shards merged by faiss, or
  `faiss.IndexShards` for graph indexes; faiss's GPU build where it sees a GPU);
- metadata filters (labels, lon/lat box, time range, scene ids) turned into faiss id
  selectors (`filters`).

What it may import: faiss, numpy, pandas, pyarrow (torch only to accept tensors as input),
and from chipmatch only `components.constants`, `components.storage`, `components.errors`
and `components.lazy` (the lazy exports below). It must not import `components.training`,
`components.evaluation`, `components.models` or `pipelines`: it works on arrays, so the
index stage and search compose it with the embedding code, never the other way round
(tests/index/test_sharding.py checks this). `components.index.embedding` predates the rule
and is moving to `components.inference` (issue 8); `config` holds the typed `index` section.

Public API (imported lazily, so importing the package does not load faiss):
    build_index, build_shard, train_index, training_sample   (components.index.build)
    IndexSearcher, merge_top_k                                (components.index.search)
    SearchFilter                                              (components.index.filters)
    IndexManifest, ShardEntry                                 (components.index.manifest)
"""

from __future__ import annotations

from typing import Any

from components.lazy import lazy_attribute

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
    return lazy_attribute(__name__, _EXPORTS, name)
