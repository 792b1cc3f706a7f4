"""`chipmatch run`: the whole pipeline on one config.

Stages run in order and each one skips its work when its output for the same inputs already
exists (ingest is content-addressed), so a failed run resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from pipelines.config import Config
from pipelines.ingest import result_json, run_ingest, summary_table


def run_pipeline(config: Config, console: Console) -> dict[str, Any]:
    console.rule("[bold]ingest → split → shard")
    ingested = run_ingest(config, console)
    console.print(summary_table(ingested))
    return {"stage": "run", "stages": {"ingest": result_json(ingested)}, "manifest": ingested.manifest_uri}
