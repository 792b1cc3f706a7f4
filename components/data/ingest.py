"""Build a dataset version: list → load/decode/normalise (Ray Data) → split → shard → manifest.

The parallel work happens in two passes over Ray (`components.data.chips`): one Ray Data
stage makes every chip, shard tasks write the tars from them; between the two the driver
decides what is accepted, the split (`components.data.splits`, protocol classes or images)
and the shard plan, which need every input's hash.

The stage is content-addressed and resumable:

- the version id hashes the source, image spec, split and every sample's content, so a
  re-run on unchanged inputs finds the published manifest and writes nothing;
- shards are named by their content and written atomically, so a re-run after a crash
  reuses the ones already written, and a new version reuses every unchanged shard;
- the manifest is written last, atomically: until then the version does not exist; the
  sample index (`samples.parquet`, chip byte offsets for training's ranged reads) follows it.

Bad inputs never stop the stage: each becomes a rejection (reason + detail) in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from components import constants as C
from components.data import decode
from components.data.chips import FAULT_ENV, LoadedChips, load_chips, write_shards
from components.data.records import SourceItem
from components.data.sample_index import shard_rows, write_sample_index
from components.data.shards import ShardPlan, plan_shards, sample_ids, sample_metadata_bytes
from components.data.sources import Source
from components.data.splits import ClassSplit, SplitSpec, assign_splits, check_protocol_splits, group_keys_by_class, split_classes
from components.data.versions import DatasetVersion, latest_version, list_versions
from components.storage import Layout, Store, reuse_when_complete, sha256_json
from components.storage.layout import SHARDS_DIR

__all__ = ["FAULT_ENV", "ImageSpec", "IngestResult", "ingest"]


@dataclass(frozen=True)
class ImageSpec:
    size: int | None      # square side in pixels; None keeps each input's size
    channels: int         # 1 (grayscale) or 3 (RGB)

    # The one place the chip limits are checked: the `shard` section's schema
    # (components/data/config.py) builds an ImageSpec to validate, so a config names a bad
    # value before any work starts and a library caller gets the same message.
    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 16:
            raise ValueError(f"shard.channels must be between 1 and 16, got {self.channels}")
        if self.size is not None and self.size < decode.MIN_SIDE:
            raise ValueError(f"shard.image_size must be >= {decode.MIN_SIDE} or null, got {self.size}")


@dataclass
class IngestResult:
    dataset: str
    version: str
    manifest_uri: str
    created: bool                       # False: the same version was already published
    manifest: dict[str, Any]
    shards_written: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    temporaries_removed: int = 0
    timings: dict[str, float] = field(default_factory=dict)   # seconds per step: where time goes


# --- step 2: decide (driver) -------------------------------------------------------------

def find_duplicates(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Rejections for byte-identical inputs: under two classes, or twice in one class."""
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_hash[row["raw_sha256"]].append(row)
    rejected = {}
    for group in by_hash.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda r: r["key"])
        labels = sorted({r["label"] for r in group})
        if len(labels) > 1:
            for row in group:
                others = [r["key"] for r in group if r is not row]
                rejected[row["key"]] = (C.REJECT_CONFLICTING_LABELS, f"identical bytes filed under {labels}: {others[:5]}")
        else:
            for row in group[1:]:
                rejected[row["key"]] = (C.REJECT_DUPLICATE, f"identical to {group[0]['key']}")
    return rejected


def sample_metadata(item: SourceItem, raw_sha256: str, split: str, role: str) -> dict[str, Any]:
    """The .json member of a sample: everything a reader needs besides the pixels."""
    return {
        C.KEY: item.key, C.LABEL: item.label or "", C.SUPERCLASS: item.superclass or None,
        C.SPLIT: split, C.ROLE: role, C.SHA256: raw_sha256,
        C.ATTRIBUTES: item.attributes, "metadata": item.metadata,
    }


def previous_class_split(store: Store, dataset: str, spec: SplitSpec) -> tuple[str | None, ClassSplit | None]:
    """The latest version's class assignment, if it was made with the same protocol, seed and fraction."""
    parent = latest_version(store, dataset)
    if parent is None or not store.exists(Layout.manifest(dataset, parent)):
        return None, None
    split = store.read_json(Layout.manifest(dataset, parent))["split"]
    same = (split["seed"], split["seen_fraction"], split.get("protocol", C.PROTOCOL_CLASSES)) == (
        spec.seed, spec.seen_fraction, spec.protocol)
    if not same:
        return parent, None
    return parent, ClassSplit(seen=split["seen_classes"], unseen=split["unseen_classes"])


def known_shard_records(store: Store, dataset: str) -> dict[str, dict]:
    """Shard records from every published version of `dataset` (to reuse without re-hashing)."""
    records = {}
    for version in list_versions(store, dataset):
        for shard in store.read_json(Layout.manifest(dataset, version))["shards"]:
            records[shard["name"]] = shard
    return records


def _listing_rows(items: list[SourceItem], loaded: LoadedChips) -> list[dict[str, Any]]:
    """One row per listed input: its item, raw hash and rejection (from the listing or pass 1)."""
    rows = []
    for item in items:
        row = {"key": item.key, "label": item.label or "", "superclass": item.superclass or "", "item": item,
               "raw_sha256": "", "reject_reason": item.reject_reason or "", "reject_detail": item.reject_detail or ""}
        if not row["reject_reason"]:
            result = loaded.results[item.key]
            row.update(raw_sha256=result.raw_sha256, reject_reason=result.reject_reason, reject_detail=result.reject_detail)
        rows.append(row)
    return rows


# --- the whole stage ---------------------------------------------------------------------

def ingest(
    source: Source,
    store: Store,
    image: ImageSpec,
    split_spec: SplitSpec,
    samples_per_shard: int,
    drop_duplicates: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> IngestResult:
    started = time.time()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        timings[step] = round(time.time() - started - sum(timings.values()), 3)

    dataset = source.dataset_name()
    size = image.size if image.size is not None else source.natural_size
    image = ImageSpec(size=size, channels=image.channels)

    log(f"listing inputs of source {source.name!r}")
    items = source.list_items()
    seen_keys: set[str] = set()
    for item in items:  # a key listed twice would make two samples indistinguishable
        if item.key in seen_keys and item.reject_reason is None:
            item.reject_reason, item.reject_detail = C.REJECT_DUPLICATE, "the same input is listed twice"
        seen_keys.add(item.key)
    if not items:
        raise ValueError(f"source {source.name!r} listed no inputs; check its data.* settings")
    lap("list")
    to_load = [item for item in items if item.reject_reason is None]
    log(f"{len(items)} inputs listed; loading, validating and normalising {len(to_load)} with Ray Data")

    source_json = json.dumps(source.config.model_dump(mode="json"), sort_keys=True)
    loaded = load_chips(to_load, source_json, image.size, image.channels) if to_load else LoadedChips(blocks=[])
    rows = _listing_rows(items, loaded)
    lap("load")

    # Decide what is accepted, how it is split, and which shards hold it.
    rejections = {r["key"]: (r["reject_reason"], r["reject_detail"]) for r in rows if r["reject_reason"]}
    accepted = [r for r in rows if not r["reject_reason"]]
    if drop_duplicates:
        rejections.update(find_duplicates(accepted))
        accepted = [r for r in accepted if r["key"] not in rejections]
    if not accepted:
        reasons = Counter(reason for reason, _ in rejections.values()).most_common()
        raise ValueError(f"every input of source {source.name!r} was rejected ({len(rejections)}): {dict(reasons)}")

    parent, previous = previous_class_split(store, dataset, split_spec)
    labels = {r["key"]: r["label"] for r in accepted}
    class_split = split_classes(sorted(set(labels.values())), split_spec, previous)
    source_splits = {r["key"]: r["item"].metadata.get(C.SOURCE_SPLIT) for r in accepted}
    assignment = assign_splits(group_keys_by_class(labels), class_split, split_spec, source_splits)
    check_protocol_splits(assignment, split_spec)
    metas = {r["key"]: sample_metadata_bytes(sample_metadata(r["item"], r["raw_sha256"], *assignment[r["key"]]))
             for r in accepted}
    ids = sample_ids(metas, image.size, image.channels)
    keys_by_split: dict[str, list[str]] = defaultdict(list)
    for key, (split, _) in assignment.items():
        keys_by_split[split].append(key)
    plans = plan_shards(keys_by_split, ids, samples_per_shard)

    rejection_list = sorted(
        ({"key": r["key"], "label": r["label"] or None, "reason": rejections[r["key"]][0], "detail": rejections[r["key"]][1],
          C.SOURCE: r["item"].metadata.get(C.SOURCE)} for r in rows if r["key"] in rejections),
        key=lambda r: (r["key"], r["reason"]),
    )
    identity = {
        "schema_version": C.MANIFEST_SCHEMA_VERSION, "dataset": dataset,
        "image": {"size": image.size, "channels": image.channels, "format": decode.chip_member(image.channels)},
        "split": {**split_spec.__dict__, "seen_classes": class_split.seen, "unseen_classes": class_split.unseen},
        # Read through components.data.versions.protocol / retrieval_split (older manifests lack them).
        "protocol": split_spec.protocol, "retrieval_split": split_spec.retrieval_split,
        "shards": [p.name for p in plans], "rejections": rejection_list,
    }
    version = sha256_json(identity)[:16]
    lap("decide")
    result = IngestResult(dataset, version, store.uri_of(Layout.manifest(dataset, version)), False, {}, timings=timings)
    published = reuse_when_complete(store, Layout.manifest(dataset, version))
    if published is not None:
        log(f"version {version} is already published: nothing to write")
        result.manifest = published
        write_sample_index(DatasetVersion(store, published))   # versions published before the index get one
        result.seconds = time.time() - started
        return result

    result.temporaries_removed = store.remove_temporaries(SHARDS_DIR)
    missing = [p for p in plans if not store.exists(p.name)]
    result.shards_written, result.shards_reused = len(missing), len(plans) - len(missing)
    log(f"writing {len(missing)} shard(s), reusing {len(plans) - len(missing)}")
    # Read on the driver and passed along: Ray workers may not share the driver's environment.
    fault = os.environ.get(FAULT_ENV)
    member = decode.chip_member(image.channels)
    written = write_shards(loaded, {p.name: [(k, metas[k]) for k in p.keys] for p in missing}, store.uri, member,
                           fault) if missing else {}
    del loaded   # the chips leave the object store
    # The encoder's chip offsets: the sample index of the shards just written, without a re-read.
    written_rows = {name: shard_rows(name, record.pop("chips"), metas, member) for name, record in written.items()}
    lap("write")
    known = known_shard_records(store, dataset)
    shard_records = [_shard_record(p, written, known, store) for p in plans]

    manifest = {
        **identity, "version": version, "parent": parent,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": json.loads(source_json),
        "superclasses": dict(sorted({r["label"]: r["superclass"] for r in accepted if r["superclass"]}.items())),
        "shards": shard_records,
        "counts": _class_counts(accepted, assignment),
        "rejections": rejection_list,
        "summary": {
            "inputs": len(rows), "accepted": len(accepted), "rejected": len(rejection_list),
            "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejection_list).items())),
            "samples_by_split": {s: len(keys_by_split.get(s, [])) for s in C.SPLITS},
            "shards": len(plans), "bytes": sum(s["bytes"] for s in shard_records),
        },
    }
    store.write_json(Layout.manifest(dataset, version), manifest)  # the version exists from here on
    store.write_json(Layout.latest(dataset), {"version": version})
    lap("publish")
    # After the manifest (the index is a function of the published shards); a crash in between
    # leaves a usable version whose index training writes on first use.
    write_sample_index(DatasetVersion(store, manifest), written_rows)
    lap("sample index")
    log("seconds per step: " + ", ".join(f"{step} {seconds:.2f}" for step, seconds in timings.items()))
    result.created, result.manifest = True, manifest
    result.seconds = time.time() - started
    return result


def _shard_record(plan: ShardPlan, written: dict, known: dict, store: Store) -> dict[str, Any]:
    if plan.name in written:
        info = written[plan.name]
    elif plan.name in known:
        info = {k: known[plan.name][k] for k in ("sha256", "bytes", "count")}
    else:  # written by an earlier run that crashed before publishing: hash it once
        data = store.read_bytes(plan.name)
        info = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "count": len(plan.keys)}
    return {"name": plan.name, "split": plan.split, **info}


def _class_counts(accepted: list[dict], assignment: dict[str, tuple[str, str]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {split: Counter() for split in C.SPLITS}
    for row in accepted:
        counts[assignment[row["key"]][0]][row["label"]] += 1
    return {split: dict(sorted(counter.items())) for split, counter in counts.items()}
