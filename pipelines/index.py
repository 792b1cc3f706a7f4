"""The index stage: embed a dataset version with a trained model (Ray Data actor pool) and
build a sharded FAISS index from a factory string (`conf/index/*.yaml`), shards in parallel.

The index folder holds faiss shards, `index.json` (model run, dataset version, factory,
per-shard sha256), a Parquet table id → sample key and metadata, and `source.json` (the
model bundle and dataset manifest URIs, and `tap`: the feature layer indexed, `index.tap`) so
`chipmatch search` and the search service embed query images with the same model and layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from components import constants as C
from components.data.versions import open_version
from components.errors import ConfigError, MissingDataError
from components.index.embedding import embed_split
from components.storage import Store
from components.storage.layout import INDEX_SOURCE_FILENAME
from components.tracking import RunLogger
from pipelines.config import Config
from pipelines.context import StageContext, stage_context
from pipelines.ray_session import cluster_has_gpus
from pipelines.runs import TrainedRun, trained_runs

# The metadata columns search filters read (named once, in components.constants).
GEO_TIME_FIELDS = (C.LONGITUDE, C.LATITUDE, C.TIME, C.SCENE_ID)


def choose_run(config: Config, runs: list[TrainedRun], metrics: dict[str, dict] | None = None) -> TrainedRun:
    """`index.run` by name, else the run with the best retrieval mAP (validation mAP if not evaluated)."""
    if not runs:
        raise MissingDataError("no trained runs for this config and dataset version: run `chipmatch train` first")
    if config.index.run:
        by_name = {run.name: run for run in runs}
        if config.index.run not in by_name:
            raise ConfigError(f"index.run={config.index.run!r} is not a trained run; trained runs: {sorted(by_name)}")
        return by_name[config.index.run]
    metrics = metrics or {}
    return max(runs, key=lambda r: metrics.get(r.name, {}).get(C.METRIC_MAP, r.metrics.get("best_val_mAP", -1.0)))


def metadata_table(embedded) -> pd.DataFrame:
    rows = []
    for key, meta, shard in zip(embedded.keys, embedded.metas, embedded.shards):
        extra = meta.get("metadata") or {}
        row = {"key": key, "label": meta[C.LABEL], "superclass": meta.get(C.SUPERCLASS), "split": meta[C.SPLIT],
               "role": meta.get(C.ROLE), "shard": shard, "source": extra.get(C.SOURCE)}
        row.update({name: extra.get(name) for name in GEO_TIME_FIELDS})
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in (C.LONGITUDE, C.LATITUDE):
        table[name] = pd.to_numeric(table[name], errors="coerce")
    if table[C.TIME].notna().any():
        table[C.TIME] = pd.to_datetime(table[C.TIME], errors="coerce", utc=True)
    return table


def run_index(config: Config, context: StageContext | Console | None = None,
              runs: list[TrainedRun] | None = None, metrics: dict[str, dict] | None = None) -> dict[str, Any]:
    import ray

    from components.index import build_index

    context = stage_context(config, context)
    console, dataset_uri = context.console, context.dataset
    run = choose_run(config, runs if runs is not None else trained_runs(config, context), metrics)
    context.ensure_ray(config.ray)
    settings = config.index
    use_gpu = settings.use_gpu if settings.use_gpu is not None else cluster_has_gpus()
    version = open_version(dataset_uri)
    splits = [split for split in settings.splits if version.shards(split)]
    tap = settings.tap
    console.log(f"[index] embedding splits {splits} with run {run.name!r} (layer {tap!r})")
    parts = [embed_split(dataset_uri, split, run.model_uri, (tap,), settings.batch_size, settings.num_actors, use_gpu)
             for split in splits]
    vectors = np.concatenate([p.features[tap] for p in parts])
    metadata = pd.concat([metadata_table(p) for p in parts], ignore_index=True)
    out = context.store.uri_of(run.paths.index(settings.factory, settings.num_shards, tap))
    console.log(f"[index] building {settings.factory} with {settings.num_shards} shard(s) over {len(vectors)} vectors")
    manifest = build_index(
        vectors, metadata, out, factory=settings.factory, num_shards=settings.num_shards,
        train_size=settings.train_size, model_run_id=run.run_id, dataset_version=version.version,
        nprobe=settings.nprobe, ef_search=settings.ef_search,
        map_shards=lambda build, tasks: ray.get([ray.remote(build).remote(*task) for task in tasks]),
    )
    Store(out).write_json(INDEX_SOURCE_FILENAME, {"model_uri": run.model_uri, "dataset": dataset_uri, "run": run.name,
                                                  "image": version.manifest["image"], "tap": tap})
    RunLogger(context.tracking_uri, run.run_id).set_tags({"index_uri": out, "index_factory": settings.factory})
    return {"stage": "index", "index": out, "run": run.name, "mlflow_run_id": run.run_id, "tap": tap,
            "counts": {"vectors": int(manifest.num_vectors), "shards": len(manifest.shards)},
            "metrics": {"dim": int(manifest.dim)}, "factory": settings.factory}
