"""The ingest stage: config in, a published dataset version (its manifest URI) out."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from components import constants as C
from components.data.ingest import ImageSpec, IngestResult, ingest
from components.data.sources import build_source
from components.data.versions import retrieval_split
from pipelines.config import Config
from pipelines.context import StageContext, stage_context


def run_ingest(config: Config, context: StageContext | Console | None = None) -> IngestResult:
    """Publish the config's source as a dataset version; the context then works on it."""
    context = stage_context(config, context)
    console = context.console
    source = build_source(config.data)
    context.ensure_ray(config.ray)
    result = ingest(
        source, context.store,
        image=ImageSpec(size=config.shard.image_size, channels=config.shard.channels),
        split_spec=config.split.spec(),
        samples_per_shard=config.shard.samples_per_shard,
        drop_duplicates=config.shard.drop_duplicates,
        log=lambda message: console.log(f"[ingest] {message}"),
    )
    context.dataset = result.manifest_uri
    return result


def summary_table(result: IngestResult) -> Table:
    manifest = result.manifest
    summary = manifest["summary"]
    table = Table(title=f"dataset {result.dataset} version {result.version}" + ("" if result.created else " (unchanged)"))
    table.add_column("")
    table.add_column("images", justify="right")
    table.add_column("classes", justify="right")
    for split in C.SPLITS:
        counts = manifest["counts"].get(split)   # manifests older than a split lack it
        if counts is None or (not counts and split in (C.SPLIT_UNSEEN, C.SPLIT_TEST) and split != retrieval_split(manifest)):
            continue   # the retrieval split the protocol does not use
        table.add_row(split, str(sum(counts.values())), str(len(counts)))
    table.add_row("rejected", str(summary["rejected"]), "")
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(f"  {reason}", str(count), "")
    table.add_row("shards", f"{summary['shards']} ({result.shards_written} written, {result.shards_reused} reused)", "")
    table.add_row("bytes", f"{summary['bytes']:,}", "")
    table.add_row("time", f"{result.seconds:.1f} s", "")
    return table


def result_json(result: IngestResult) -> dict[str, Any]:
    summary = result.manifest["summary"]
    return {
        "stage": "ingest",
        "manifest": result.manifest_uri,
        "dataset": result.dataset,
        "version": result.version,
        "created": result.created,
        "counts": {**summary["samples_by_split"], "rejected": summary["rejected"], "shards": summary["shards"],
                   "shards_written": result.shards_written, "shards_reused": result.shards_reused},
        "rejected_by_reason": summary["rejected_by_reason"],
        "metrics": {"seconds": round(result.seconds, 3), "bytes": summary["bytes"]},
    }
