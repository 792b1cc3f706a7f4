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

import json
import tarfile
from dataclasses import dataclass

from components import constants as C
from components.storage import Layout, canonical_json, sha256_bytes, sha256_json

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
            plans.append(ShardPlan(name=Layout.shard(split, digest), split=split, keys=tuple(chunk)))
    return plans


def sample_ids(metas: dict[str, bytes], size: int | None, channels: int) -> dict[str, str]:
    """What names shards: per sample, ``sha256_json([sha256(.json bytes), size, channels])``.

    The canonical JSON of that list is formatted directly (a hex digest needs no escaping):
    one `json.dumps` per sample was a tenth of ingest's serial driver time.
    """
    tail = canonical_json([size, channels])[1:]   # e.g. '32,1]'
    return {key: sha256_bytes(f'["{sha256_bytes(meta)}",{tail}'.encode("ascii")) for key, meta in metas.items()}


def sample_metadata_bytes(metadata: dict) -> bytes:
    """Canonical JSON (`components.storage.canonical_json`'s settings) of a sample's metadata.

    Values JSON cannot hold (a numpy float32 or a timestamp a source left in its metadata)
    are written as their `str`, as they were when items travelled to workers as JSON.
    """
    return _METADATA_ENCODER.encode(metadata).encode("utf-8")


# One encoder for every sample (json.dumps with options builds a new one per call).
_METADATA_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


# --- tar bytes -----------------------------------------------------------------------------
# Exactly what `webdataset.TarWriter(stream, mtime=0, encoder=False)` writes (tests compare the
# bytes): per sample, its members in sorted suffix order, each a POSIX ustar header (owner
# "bigdata", mode 0444), the data and NUL padding to 512 bytes; then two NUL blocks and padding
# to tarfile's 10 KiB record. TarWriter builds every header through tarfile's generic Python
# code (38 µs a sample, a quarter of ingest's CPU per 32×32 chip); the headers of ordinary
# members differ only in name, size and checksum, so they are filled into one template here
# (~3 µs). Names that ustar cannot hold (non-ASCII, over 100 bytes) still go through tarfile.
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_OWNER, _MODE = "bigdata", 0o444
_HEAD = b"%07o\0" % _MODE + b"%07o\0" % 0 + b"%07o\0" % 0                          # mode, uid, gid (octal)
_MIDDLE = (b"%011o\0" % TAR_MTIME,                                                 # mtime
           tarfile.REGTYPE + b"\0" * 100 + tarfile.POSIX_MAGIC                     # type, linkname, magic
           + _OWNER.encode("ascii").ljust(32, b"\0") * 2 + b"\0" * (8 + 8 + 155 + 12))  # uname, gname, dev, prefix
_FIXED_SUM = sum(_HEAD) + sum(_MIDDLE[0]) + sum(_MIDDLE[1]) + 8 * ord(" ")          # checksum field counts as spaces


def _member_header(name: str, size: int) -> bytes:
    encoded = name.encode("ascii", "replace")
    if len(name) > 100 or not name.isascii() or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, TAR_MTIME, _MODE, _OWNER, _OWNER
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(encoded) + sum(size_field)
    return b"".join((encoded.ljust(100, b"\0"), _HEAD, size_field, _MIDDLE[0], b"%06o\0 " % checksum, _MIDDLE[1]))


def encode_shard(samples: list[tuple[str, bytes, bytes]], member: str = C.WDS_IMAGE) -> bytes:
    """Tar bytes of `(key, chip_bytes, json_bytes)` samples, written in key order; the chip is
    stored as `<key>.<member>` (png, or npy for multi-band chips)."""
    return encode_shard_with_offsets(samples, member)[0]


def encode_shard_with_offsets(samples: list[tuple[str, bytes, bytes]],
                              member: str = C.WDS_IMAGE) -> tuple[bytes, list[tuple[str, int, int]]]:
    """`encode_shard`'s bytes and, per sample in key order, (key, byte offset, size) of its chip
    member's data: what the sample index records, known here for free (a scan of the written
    tar would find the same offsets, `components.data.sample_index.scan_shard`)."""
    parts: list[bytes] = []
    chips: list[tuple[str, int, int]] = []
    position = 0
    for key, image, meta in sorted(samples, key=lambda sample: sample[0]):
        for suffix, data in sorted(((member, image), (C.WDS_META, meta))):
            header = _member_header(f"{key}.{suffix}", len(data))
            if suffix == member:
                chips.append((key, position + len(header), len(data)))
            padding = b"\0" * (-len(data) % _BLOCK)
            parts += (header, data, padding)
            position += len(header) + len(data) + len(padding)
    parts.append(b"\0" * (2 * _BLOCK))
    size = sum(map(len, parts))
    parts.append(b"\0" * (-size % _RECORD))
    return b"".join(parts), chips
