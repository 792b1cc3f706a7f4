"""A dataset version written directly (tar shards + manifest), without Ray or ingest.

Chips are seeded, class-dependent patterns plus noise, so tests (and subprocesses they
start) get a real version on the store in well under a second for a few hundred chips.
"""

from __future__ import annotations

import json

import numpy as np

from components import constants as C
from components.data.decode import encode_chip
from components.data.shards import encode_shard
from components.data.versions import open_version
from components.storage import Layout, Store, sha256_bytes


def chip(label: int, instance: int, size: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng([label, instance])
    y, x = np.mgrid[0:size, 0:size] / size
    pattern = 127 + 100 * np.sin(2 * np.pi * ((label % 5 + 1) * x + (label // 5 + 1) * y))
    image = np.clip(pattern + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
    return image if channels == 1 else np.repeat(image[:, :, None], channels, axis=2)


def write_fake_version(root: str, per_class: dict[str, int], seen: int, size: int = 16, channels: int = 1,
                       val_every: int = 4, samples_per_shard: int = 64, dataset: str = "fake",
                       attributes: bool = False) -> str:
    """`per_class`: class name -> images; the first `seen` classes are seen (every
    `val_every`-th image of a seen class goes to val), the rest unseen. Returns the manifest URI."""
    store = Store(root)
    names = list(per_class)
    seen_classes, unseen_classes = names[:seen], names[seen:]
    samples: dict[str, list] = {split: [] for split in C.SPLITS}
    for label, name in enumerate(names):
        for i in range(per_class[name]):
            seen_split = C.SPLIT_VAL if i % val_every == val_every - 1 else C.SPLIT_TRAIN
            split = C.SPLIT_UNSEEN if name in unseen_classes else seen_split
            key = f"{name}-{i:06d}"
            meta = {C.LABEL: name, C.SPLIT: split, C.ROLE: C.ROLE_BOTH, C.SUPERCLASS: f"super{label % 2}"}
            if attributes:
                meta[C.ATTRIBUTES] = {"length_m": 3.0 + label + 0.01 * i, "width_m": 1.5 + 0.1 * label}
            samples[split].append((key, encode_chip(chip(label, i, size, channels)), json.dumps(meta).encode()))
    shards = []
    for split, rows in samples.items():
        rows.sort()
        for start in range(0, len(rows), samples_per_shard):
            part = rows[start:start + samples_per_shard]
            data = encode_shard(part, C.WDS_IMAGE if channels in (1, 3) else C.WDS_ARRAY)
            name = f"shards/{split}-{sha256_bytes(data)[:16]}.tar"
            store.write_bytes(name, data)
            shards.append({"name": name, "split": split, "count": len(part), "sha256": sha256_bytes(data), "bytes": len(data)})
    version = sha256_bytes(json.dumps([shards, size, channels]).encode())[:16]
    manifest = {
        "schema_version": C.MANIFEST_SCHEMA_VERSION, "dataset": dataset, "version": version,
        "image": {"size": size, "channels": channels, "format": C.WDS_IMAGE},
        "split": {"seed": 0, "seen_classes": seen_classes, "unseen_classes": unseen_classes},
        "shards": shards, "superclasses": {name: f"super{i % 2}" for i, name in enumerate(names)},
        "rejections": [],
    }
    store.write_json(Layout.manifest(dataset, version), manifest)
    return open_version(store.uri_of(Layout.manifest(dataset, version))).uri
