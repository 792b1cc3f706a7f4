"""Build a dataset version: list → load/decode/normalise (Ray Data) → split → shard → manifest.

The stage is content-addressed and resumable:

- the version id hashes the source, image spec, split and every sample's content, so a
  re-run on unchanged inputs finds the published manifest and writes nothing;
- shards are named by their content and written atomically, so a re-run after a crash
  reuses the ones already written, and a new version reuses every unchanged shard;
- the manifest is written last, atomically: until then the version does not exist.

Bad inputs never stop the stage: each becomes a rejection (reason + detail) in the manifest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from components import constants as C
from components.data import decode
from components.data.records import Rejection, SourceItem
from components.data.shards import ShardPlan, encode_shard, plan_shards, sample_metadata_bytes
from components.data.sources import Source, source_from_dict
from components.data.splits import ClassSplit, SplitSpec, assign_splits, group_keys_by_class, split_classes
from components.data.versions import latest_path, latest_version, list_versions, manifest_path
from components.storage import Store, sha256_bytes, sha256_json

# Set to "mid_shard_write" to make shard writers die half-way through a file (tests use it to
# prove that a crash never leaves a version that looks complete).
FAULT_ENV = "CHIPMATCH_FAULT_INJECT"


@dataclass(frozen=True)
class ImageSpec:
    size: int | None      # square side in pixels; None keeps each input's size
    channels: int         # 1 (grayscale) or 3 (RGB)

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


# --- step 1: load, hash, decode, normalise (runs in Ray workers) ---------------------------

@functools.lru_cache(maxsize=8)
def _worker_source(source_json: str) -> Source:
    return source_from_dict(json.loads(source_json))


def load_and_normalise(batch: dict[str, np.ndarray], source_json: str, size: int | None, channels: int) -> dict[str, list]:
    """Ray Data UDF: one row per input, with either PNG bytes or a rejection reason."""
    source = _worker_source(source_json)
    out: dict[str, list] = defaultdict(list)
    for index in range(len(batch["key"])):
        item = SourceItem.from_row({name: batch[name][index] for name in batch})
        png, raw_sha, reason, detail = b"", "", item.reject_reason, item.reject_detail
        if reason is None:
            try:
                raw = source.load(item)
                if isinstance(raw, (bytes, bytearray)):
                    raw_sha = sha256_bytes(bytes(raw))
                    pixels = decode.decode_image(bytes(raw))
                else:
                    raw_sha = sha256_bytes(np.ascontiguousarray(raw).tobytes() + str(raw.shape).encode())
                    pixels = raw
                png = decode.encode_chip(decode.normalise(pixels, size, channels))
            except Rejection as rejection:
                reason, detail = rejection.reason, rejection.detail
            except Exception as exc:  # noqa: BLE001 - one bad input must never stop the stage
                reason, detail = C.REJECT_CORRUPT, f"{type(exc).__name__}: {exc}"
        row = item.to_row()
        row.update(reject_reason=reason or "", reject_detail=detail or "", raw_sha256=raw_sha, png=png)
        for name, value in row.items():
            out[name].append(value)
    return dict(out)


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


def sample_metadata(row: dict[str, Any], split: str, role: str) -> dict[str, Any]:
    """The .json member of a sample: everything a reader needs besides the pixels."""
    return {
        C.KEY: row["key"], C.LABEL: row["label"], C.SUPERCLASS: row["superclass"] or None,
        C.SPLIT: split, C.ROLE: role, C.SHA256: row["raw_sha256"],
        C.ATTRIBUTES: json.loads(row["attributes"]), "metadata": json.loads(row["metadata"]),
    }


def previous_class_split(store: Store, dataset: str, spec: SplitSpec) -> tuple[str | None, ClassSplit | None]:
    """The latest version's class assignment, if it was made with the same seed and fraction."""
    parent = latest_version(store, dataset)
    if parent is None or not store.exists(manifest_path(dataset, parent)):
        return None, None
    split = store.read_json(manifest_path(dataset, parent))["split"]
    if split["seed"] != spec.seed or split["seen_fraction"] != spec.seen_fraction:
        return parent, None
    return parent, ClassSplit(seen=split["seen_classes"], unseen=split["unseen_classes"])


# --- step 3: write shards (runs in Ray workers) ------------------------------------------

def write_shard(name: str, samples: list[tuple[str, bytes, bytes]], root_uri: str, member: str,
                fault: str | None = None) -> dict:
    """Ray task: write one shard atomically, return its record."""
    data = encode_shard(samples, member)
    store = Store(root_uri)
    if fault == "mid_shard_write":
        partial = f"{name}.tmp-injected-{os.getpid()}"
        store.fs.create_dir(store.path("shards"), recursive=True)
        with store.fs.open_output_stream(store.path(partial)) as stream:
            stream.write(data[: len(data) // 2])
        raise RuntimeError(f"injected fault ({FAULT_ENV}=mid_shard_write) while writing {name}")
    store.write_bytes(name, data)
    return {"name": name, "sha256": sha256_bytes(data), "bytes": len(data), "count": len(samples)}


def known_shard_records(store: Store, dataset: str) -> dict[str, dict]:
    """Shard records from every published version of `dataset` (to reuse without re-hashing)."""
    records = {}
    for version in list_versions(store, dataset):
        for shard in store.read_json(manifest_path(dataset, version))["shards"]:
            records[shard["name"]] = shard
    return records


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
    import ray

    started = time.time()
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
    log(f"{len(items)} inputs listed; loading, validating and normalising with Ray Data")

    source_json = json.dumps(source.config.model_dump(mode="json"), sort_keys=True)
    # Blocks of ~500 inputs: enough tasks to keep every CPU busy, few enough that Ray's
    # per-task overhead stays small next to the decoding (from_items defaults to 200 blocks).
    blocks = max(1, min(len(items) // 500, 4096), int(ray.cluster_resources().get("CPU", 1)))
    processed = ray.data.from_items([item.to_row() for item in items], override_num_blocks=blocks).map_batches(
        load_and_normalise, batch_size=None, batch_format="numpy",
        fn_kwargs={"source_json": source_json, "size": image.size, "channels": image.channels},
    ).materialize()
    rows = processed.drop_columns(["png"]).take_all()

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
    assignment = assign_splits(group_keys_by_class(labels), class_split, split_spec)
    metas = {r["key"]: sample_metadata_bytes(sample_metadata(r, *assignment[r["key"]])) for r in accepted}
    sample_ids = {key: sha256_json([sha256_bytes(meta), image.size, image.channels]) for key, meta in metas.items()}
    keys_by_split: dict[str, list[str]] = defaultdict(list)
    for key, (split, _) in assignment.items():
        keys_by_split[split].append(key)
    plans = plan_shards(keys_by_split, sample_ids, samples_per_shard)

    rejection_list = sorted(
        ({"key": r["key"], "label": r["label"] or None, "reason": rejections[r["key"]][0], "detail": rejections[r["key"]][1],
          C.SOURCE: json.loads(r["metadata"]).get(C.SOURCE)} for r in rows if r["key"] in rejections),
        key=lambda r: (r["key"], r["reason"]),
    )
    identity = {
        "schema_version": C.MANIFEST_SCHEMA_VERSION, "dataset": dataset,
        "image": {"size": image.size, "channels": image.channels, "format": decode.chip_member(image.channels)},
        "split": {**split_spec.__dict__, "seen_classes": class_split.seen, "unseen_classes": class_split.unseen},
        "shards": [p.name for p in plans], "rejections": rejection_list,
    }
    version = sha256_json(identity)[:16]
    result = IngestResult(dataset, version, store.uri_of(manifest_path(dataset, version)), False, {})
    if store.exists(manifest_path(dataset, version)):
        log(f"version {version} is already published: nothing to write")
        result.manifest = store.read_json(manifest_path(dataset, version))
        result.seconds = time.time() - started
        return result

    result.temporaries_removed = store.remove_temporaries("shards")
    missing = [p for p in plans if not store.exists(p.name)]
    result.shards_written, result.shards_reused = len(missing), len(plans) - len(missing)
    log(f"writing {len(missing)} shard(s), reusing {len(plans) - len(missing)}")
    written = _write_shards(processed, missing, metas, store.uri, decode.chip_member(image.channels)) if missing else {}
    known = known_shard_records(store, dataset)
    shard_records = [_shard_record(p, written, known, store) for p in plans]

    manifest = {
        **identity, "version": version, "parent": parent,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
    store.write_json(manifest_path(dataset, version), manifest)  # the version exists from here on
    store.write_json(latest_path(dataset), {"version": version})
    result.created, result.manifest = True, manifest
    result.seconds = time.time() - started
    return result


def _write_shards(processed, plans: list[ShardPlan], metas: dict[str, bytes], root_uri: str, member: str) -> dict[str, dict]:
    """Stream the normalised chips once and hand each shard to a Ray task as soon as it is full.

    Only the chips of shards still being filled are held on the driver, and no shuffle is
    needed (a Ray Data groupby by shard cost more than the whole decode step on small sets).
    """
    import ray

    # Read on the driver and passed along: Ray workers may not share the driver's environment.
    fault = os.environ.get(FAULT_ENV)
    write = ray.remote(max_retries=0)(write_shard)
    shard_of = {key: plan.name for plan in plans for key in plan.keys}
    expected = {plan.name: len(plan.keys) for plan in plans}
    filling: dict[str, list] = defaultdict(list)
    pending = []
    for batch in processed.iter_batches(batch_format="numpy", batch_size=1024):
        for key, png in zip(batch["key"], batch["png"]):
            name = shard_of.get(str(key))
            if name is None:
                continue
            filling[name].append((str(key), bytes(png), metas[str(key)]))
            if len(filling[name]) == expected[name]:
                pending.append(write.remote(name, filling.pop(name), root_uri, member, fault))
    if filling:
        raise RuntimeError(f"shards left incomplete after reading every sample: {sorted(filling)[:5]}")
    return {record.pop("name"): record for record in ray.get(pending)}


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
