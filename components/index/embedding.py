"""Embed a dataset version's split with a trained model: Ray Data over an actor pool.

Shards are read in parallel tasks, then a pool of `Embedder` actors (GPU actors when asked)
each loads the model once and embeds batches of chips, returning every requested feature
tap (embedding, penultimate, ...). The index stage embeds through here, for splits too large
for one process; the model work itself (bundle → model, chips → NCHW → features) is
`components.inference`, the path training validation and evaluation use too.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from components import constants as C
from components.data.versions import DatasetVersion, open_version
from components.inference.embed import EmbeddedSplit

__all__ = ["EmbeddedSplit", "Embedder", "embed_split", "read_shards"]


@functools.lru_cache(maxsize=4)
def _version(manifest_uri: str) -> DatasetVersion:
    return open_version(manifest_uri)


def read_shards(batch: dict[str, np.ndarray], manifest_uri: str) -> dict[str, list]:
    """Ray Data UDF: shard names in, one row per sample out (PNG bytes still encoded)."""
    from components.data.decode import chip_bytes
    from components.data.reader import iter_shard

    version = _version(manifest_uri)
    rows: dict[str, list] = {"key": [], "png": [], "meta": [], "shard": []}
    for name in batch["shard"]:
        for raw in iter_shard(version, str(name)):
            rows["shard"].append(str(name))
            rows["key"].append(raw["__key__"])
            rows["png"].append(chip_bytes(raw))
            rows["meta"].append(raw[C.WDS_META].decode("utf-8"))
    return rows


class Embedder:
    """Ray Data actor: loads the model bundle once, embeds batches of chips."""

    def __init__(self, model_uri: str, taps: tuple[str, ...], use_gpu: bool = False):
        import torch

        from components.inference import load_model

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_model(model_uri).to(self.device)
        self.taps = taps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from components.data.decode import decode_chip
        from components.inference import embed_arrays

        images = np.stack([decode_chip(bytes(png)) for png in batch["png"]])
        features = embed_arrays(self.model, images, self.taps, batch_size=max(1, len(images)), device=self.device)
        out: dict[str, Any] = {"key": batch["key"], "meta": batch["meta"], "shard": batch["shard"]}
        for tap, value in features.items():
            out[f"feature_{tap}"] = value
        return out


def embed_split(manifest_uri: str, split: str, model_uri: str, taps: tuple[str, ...] = ("embedding",),
                batch_size: int = 256, num_actors: int = 1, use_gpu: bool = False) -> EmbeddedSplit:
    import ray

    version = _version(manifest_uri)
    shards = [{"shard": shard["name"]} for shard in version.shards(split)]
    if not shards:
        raise ValueError(f"dataset version {version.version} has no {split!r} samples to embed")
    rows = (
        ray.data.from_items(shards)
        .map_batches(read_shards, batch_size=1, batch_format="numpy", fn_kwargs={"manifest_uri": manifest_uri})
        .map_batches(Embedder, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_actors),
                     num_gpus=1 if use_gpu else 0,
                     fn_constructor_kwargs={"model_uri": model_uri, "taps": tuple(taps), "use_gpu": use_gpu})
        .take_all()
    )
    rows.sort(key=lambda row: row["key"])   # deterministic order, whatever the parallelism
    metas = [json.loads(row["meta"]) for row in rows]
    return EmbeddedSplit(
        keys=[row["key"] for row in rows],
        labels=[m[C.LABEL] for m in metas],
        metas=metas,
        shards=[str(row["shard"]) for row in rows],
        features={tap: np.stack([row[f"feature_{tap}"] for row in rows]).astype(np.float32) for tap in taps},
    )
