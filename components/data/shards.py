"""Which samples go into which WebDataset tar, and the tar bytes themselves.

Shard boundaries are *content-defined*: within a split, samples are sorted by key and a shard
ends after a key whose hash hits a target (once the shard holds at least half the target
size), or at twice the target. Adding images to a dataset therefore changes only the shards
the new keys fall into; every other shard keeps its name and is reused by the new version
instead of being written again. Fixed-size chunking would shift every later shard by one.

A shard's name is the hash of everything written into it, so an existing file of that name
is, by construction, that shard (files only appear under their name by an atomic move).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from components import constants as C
from components.storage import canonical_json, sha256_bytes, sha256_json

SHARDS_DIR = "shards"
TAR_MTIME = 0  # fixed member timestamps: the same samples give the same tar bytes


@dataclass(frozen=True)
class ShardPlan:
    name: str           # relative path under the storage root, e.g. shards/train-1a2b....tar
    split: str
    keys: tuple[str, ...]


def _boundary_hash(key: str) -> int:
    return int(sha256_bytes(key.encode("utf-8"))[:12], 16)


def chunk_keys(sorted_keys: list[str], samples_per_shard: int) -> list[list[str]]:
    """Content-defined chunking of a sorted key list (see the module docstring)."""
    if samples_per_shard < 2:
        raise ValueError(f"shard.samples_per_shard must be >= 2, got {samples_per_shard}")
    minimum, maximum = samples_per_shard // 2, 2 * samples_per_shard
    modulus = max(1, samples_per_shard - minimum)  # expected size ≈ minimum + modulus = target
    chunks, current = [], []
    for key in sorted_keys:
        current.append(key)
        if len(current) >= maximum or (len(current) >= minimum and _boundary_hash(key) % modulus == 0):
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks


def plan_shards(
    keys_by_split: dict[str, list[str]], sample_ids: dict[str, str], samples_per_shard: int
) -> list[ShardPlan]:
    """Shards for every split; `sample_ids[key]` hashes everything that is written for a sample."""
    plans = []
    for split in C.SPLITS:
        for chunk in chunk_keys(sorted(keys_by_split.get(split, [])), samples_per_shard):
            digest = sha256_json({"split": split, "samples": [[k, sample_ids[k]] for k in chunk]})[:20]
            plans.append(ShardPlan(name=f"{SHARDS_DIR}/{split}-{digest}.tar", split=split, keys=tuple(chunk)))
    return plans


def sample_metadata_bytes(metadata: dict) -> bytes:
    return canonical_json(metadata).encode("utf-8")


def encode_shard(samples: list[tuple[str, bytes, bytes]], member: str = C.WDS_IMAGE) -> bytes:
    """Tar bytes of `(key, chip_bytes, json_bytes)` samples, written in key order; the chip is
    stored as `<key>.<member>` (png, or npy for multi-band chips)."""
    import webdataset as wds  # here, not at import: it pulls in torch, which decode workers never need

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, mtime=TAR_MTIME, encoder=False) as writer:
        for key, image, meta in sorted(samples, key=lambda sample: sample[0]):
            writer.write({"__key__": key, member: image, C.WDS_META: meta})
    return buffer.getvalue()
