"""The sample index of a dataset version: where every sample's chip lies inside the shard tars.

`datasets/<name>/<version>/samples.parquet`, next to the manifest, has one row per sample:
key, split, shard, byte offset and size of the chip member in that tar, the member suffix
(png / npy), the class name and its index in the split's class list, and the sample's .json
metadata (role, superclass, attributes). With it a reader fetches any sample by one ranged
read (`components.data.reader.ChipReader`), so a sampler that only needs labels (P×K) can
drive training without any worker holding a split in memory.

Why an index and not Ray Data streaming: P×K batches need random access by class; a stream
needs a class-aware shuffle buffer whose size grows with the number of classes × K and
still cannot guarantee exact P×K batches. The index costs one pass over the tar headers.

`write_sample_index` takes the rows of the shards ingest has just written from their encoder
(which knows every member's offset) and scans only the others, once each (tar headers give
member offsets; only the small .json members are read); it writes the table atomically
(temp name, then rename, as every store write) and does nothing when the file is already
there: the index is a pure function of the version's shards, which are content-addressed.
Ingest calls it after publishing a version; training calls it when a version predates the index.

The numeric columns a training worker loads cost ~24 bytes per sample (1 M chips: 24 MB);
keys and metadata are read only where they are needed (validation, evaluation, indexing).
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components import constants as C
from components.data.versions import DatasetVersion
from components.storage import Layout

SAMPLE_INDEX_FILENAME = "samples.parquet"
INDEX_FORMAT = "1"

# Column names (written by this module, read by reader / inference / training).
COL_KEY, COL_SPLIT, COL_SHARD, COL_OFFSET, COL_SIZE = "key", "split", "shard", "offset", "size"
COL_MEMBER, COL_LABEL, COL_LABEL_INDEX, COL_META = "member", "label", "label_index", "meta"
NUMERIC_COLUMNS = (COL_SHARD, COL_OFFSET, COL_SIZE, COL_LABEL_INDEX)

SCHEMA = pa.schema([
    (COL_KEY, pa.string()), (COL_SPLIT, pa.string()), (COL_SHARD, pa.string()), (COL_OFFSET, pa.int64()),
    (COL_SIZE, pa.int64()), (COL_MEMBER, pa.string()), (COL_LABEL, pa.string()), (COL_LABEL_INDEX, pa.int32()),
    (COL_META, pa.string()),
])

# WebDataset's grouping rule (webdataset.tariterators.base_plus_ext): key = path up to the
# first dot of the file name, suffix = the rest.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def sample_index_path(version: DatasetVersion) -> str:
    """Path of the index relative to the version's store root."""
    return posixpath.join(posixpath.dirname(Layout.manifest(version.dataset, version.version)), SAMPLE_INDEX_FILENAME)


def scan_shard(version: DatasetVersion, shard: dict) -> list[dict]:
    """One row per sample of a shard, from one sequential pass over its tar."""
    rows: dict[str, dict] = {}
    with version.store.open_input(shard["name"]) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            match = _MEMBER_NAME.match(member.name)
            if not match:
                continue
            key, suffix = match.groups()
            row = rows.setdefault(key, {COL_KEY: key, COL_SHARD: shard["name"]})
            if suffix in C.WDS_CHIP_MEMBERS:
                row.update({COL_OFFSET: member.offset_data, COL_SIZE: member.size, COL_MEMBER: suffix})
            elif suffix == C.WDS_META:
                handle = tar.extractfile(member)
                assert handle is not None  # None only for non-files, skipped above
                row[COL_META] = handle.read().decode("utf-8")
    incomplete = [key for key, row in rows.items() if COL_OFFSET not in row or COL_META not in row]
    if incomplete:
        raise ValueError(f"shard {shard['name']}: sample(s) {incomplete[:3]} lack a chip ({list(C.WDS_CHIP_MEMBERS)}) "
                         f"or {C.WDS_META} member; re-ingest the dataset")
    return list(rows.values())


def shard_rows(shard: str, chips: Sequence[tuple[str, int, int]], metas: Mapping[str, bytes], member: str) -> list[dict]:
    """`scan_shard`'s rows for a shard just written, from the chip offsets its encoder returned
    (`components.data.shards.encode_shard_with_offsets`) and the samples' .json bytes: no re-read."""
    return [{COL_KEY: key, COL_SHARD: shard, COL_OFFSET: offset, COL_SIZE: size, COL_MEMBER: member,
             COL_META: metas[key].decode("utf-8")} for key, offset, size in chips]


def build_sample_index(version: DatasetVersion, known: Mapping[str, list[dict]] | None = None) -> pa.Table:
    """The index table of a version (rows ordered by split, then key). `known`: rows of shards
    this process has just written (`shard_rows`); every other shard is scanned."""
    class_index = {split: {name: i for i, name in enumerate(version.classes(split))} for split in C.SPLITS}
    known = known or {}
    rows = []
    for shard in sorted(version.manifest["shards"], key=lambda s: s["name"]):
        scanned = known[shard["name"]] if shard["name"] in known else scan_shard(version, shard)
        if len(scanned) != shard.get("count", len(scanned)):
            raise ValueError(f"shard {shard['name']} holds {len(scanned)} samples, the manifest says {shard['count']}: "
                             "the shard does not belong to this manifest")
        for row in scanned:
            meta = json.loads(row[COL_META])
            split = shard["split"]
            label = meta[C.LABEL]
            if label not in class_index[split]:
                raise ValueError(f"sample {row[COL_KEY]} in {shard['name']} has label {label!r}, which is not a "
                                 f"class of split {split!r} in the manifest")
            rows.append({**row, COL_SPLIT: split, COL_LABEL: label, COL_LABEL_INDEX: class_index[split][label]})
    rows.sort(key=lambda r: (C.SPLITS.index(r[COL_SPLIT]), r[COL_KEY]))
    columns = {name: [r[name] for r in rows] for name in SCHEMA.names}
    metadata = {b"chipmatch.index_format": INDEX_FORMAT.encode(), b"chipmatch.version": version.version.encode()}
    return pa.table(columns, schema=SCHEMA.with_metadata(metadata))


def write_sample_index(version: DatasetVersion, known: Mapping[str, list[dict]] | None = None) -> str:
    """Write the version's sample index if it is not there yet; returns its URI. `known` as in
    `build_sample_index` (ingest passes the shards it wrote)."""
    relative = sample_index_path(version)
    if not version.store.exists(relative):
        buffer = io.BytesIO()
        pq.write_table(build_sample_index(version, known), buffer, compression="zstd")
        version.store.write_bytes(relative, buffer.getvalue())
    return version.store.uri_of(relative)


@dataclass
class SampleIndex:
    """The rows of one split, in key order. Numeric columns are numpy arrays; keys and
    metadata are loaded only when asked for (they dominate the index's size)."""

    split: str
    classes: list[str]            # label_index -> class name
    shards: list[str]             # shard_ids -> shard name
    shard_ids: np.ndarray         # int32 [N]
    offsets: np.ndarray           # int64 [N]
    sizes: np.ndarray             # int64 [N]
    labels: np.ndarray            # int64 [N], indexes into `classes`
    keys: list[str] | None = None
    metas: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def load_sample_index(version: DatasetVersion, split: str, *, keys: bool = False, metas: bool = False,
                      create: bool = True) -> SampleIndex:
    """One split of the version's index (written first when missing and `create`)."""
    if split not in C.SPLITS:
        raise ValueError(f"split {split!r} is unknown; valid choices: {list(C.SPLITS)}")
    relative = sample_index_path(version)
    if not version.store.exists(relative):
        if not create:
            raise FileNotFoundError(f"{version.store.uri_of(relative)} is missing: run write_sample_index(version)")
        write_sample_index(version)
    columns: Sequence[str] = list(NUMERIC_COLUMNS) + ([COL_KEY] if keys else []) + ([COL_META] if metas else [])
    with version.store.fs.open_input_file(version.store.path(relative)) as source:
        table = pq.read_table(source, columns=list(columns), filters=[(COL_SPLIT, "=", split)])
    shard_column = table.column(COL_SHARD).combine_chunks().dictionary_encode()
    return SampleIndex(
        split=split,
        classes=version.classes(split),
        shards=shard_column.dictionary.to_pylist(),
        shard_ids=shard_column.indices.to_numpy(zero_copy_only=False).astype(np.int32),
        offsets=table.column(COL_OFFSET).to_numpy().astype(np.int64),
        sizes=table.column(COL_SIZE).to_numpy().astype(np.int64),
        labels=table.column(COL_LABEL_INDEX).to_numpy().astype(np.int64),
        keys=table.column(COL_KEY).to_pylist() if keys else None,
        metas=[json.loads(m) for m in table.column(COL_META).to_pylist()] if metas else None,
    )
