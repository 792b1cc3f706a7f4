"""`chipmatch run`: the whole pipeline on one config.

ingest → split → shard → (tune) → train (each configured loss) → evaluate → index → compare.
With a `tune` section, the sweep runs first and the pipeline goes on with its best config.
Every stage reuses its output when it is complete for the same inputs (content-addressed
dataset versions, run folders keyed by config hash, evaluation records keyed by settings),
so a failed run resumes where it stopped. All stages share one `StageContext`: the version
ingested here is the one the others work on.
"""

from __future__ import annotations

import tempfile
from typing import Any

from rich.console import Console

from components.storage import Store
from pipelines import compare, evaluate, index, ingest, train
from pipelines.config import Config, load_config
from pipelines.context import StageContext, stage_context


def run_pipeline(config: Config, context: StageContext | Console | None = None) -> dict[str, Any]:
    context = stage_context(config, context)
    console = context.console
    console.rule("[bold]ingest → split → shard")
    ingested = ingest.run_ingest(config, context)
    console.print(ingest.summary_table(ingested))

    if config.tune is not None:
        from pipelines.tune import run_tune
        from pipelines.tune import summary_table as sweep_table

        console.rule(f"[bold]tune ({config.tune.name})")
        sweep = run_tune(config, context)
        console.print(sweep_table(sweep))
        config = load_config(_local_path(sweep.best_config_uri))
        console.log(f"[tune] continuing with the best config: {sweep.best_config_uri}")

    console.rule("[bold]train")
    runs = train.run_train(config, context)
    console.print(train.summary_table(runs))

    console.rule("[bold]evaluate")
    evaluated = evaluate.run_evaluate(config, context, runs=runs)
    console.print(evaluate.summary_table(evaluated, config.evaluate.taps))

    console.rule("[bold]index")
    indexed = index.run_index(config, context, runs=runs, metrics={run.name: run.metrics for run in evaluated})
    console.log(f"[index] {indexed['factory']} over {indexed['counts']['vectors']} chips of run "
                f"{indexed['run']!r}: {indexed['index']}")

    console.rule("[bold]compare")
    compared = compare.run_compare(config, context)
    return {
        "stage": "run",
        "manifest": ingested.manifest_uri,
        "stages": {"ingest": ingest.result_json(ingested), "train": train.result_json(runs),
                   "evaluate": evaluate.result_json(evaluated), "index": indexed,
                   "compare": compared},
    }


def _local_path(uri: str) -> str:
    """A local copy of a config URI (best.yaml may live on object storage)."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    folder, name = uri.rsplit("/", 1)
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as handle:
        handle.write(Store(folder).read_bytes(name))
    return handle.name
