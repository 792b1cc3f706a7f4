"""The compare stage: the experiment's runs side by side (terminal, Markdown and CSV)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from components.errors import MissingDataError
from components.tracking.compare import DISPLAY_HEADER, comparison_table, display_rows, sort_table, to_markdown
from pipelines.config import Config
from pipelines.context import StageContext, stage_context


def run_compare(config: Config, context: StageContext | Console | None = None, experiment: str | None = None,
                sort: str = "mAP") -> dict[str, Any]:
    context = stage_context(config, context)
    experiment = experiment or context.experiment
    table = sort_table(comparison_table(context.tracking_uri, experiment), sort)
    if table.empty:
        raise MissingDataError(f"MLflow experiment {experiment!r} has no finished training runs yet")
    store, layout = context.store, context.layout
    store.write_bytes(layout.compare(experiment, "md"), to_markdown(table).encode())
    store.write_bytes(layout.compare(experiment, "csv"), table.to_csv(index=False).encode())
    context.console.print(render(table, experiment))
    return {"stage": "compare", "experiment": experiment, "markdown": store.uri_of(layout.compare(experiment, "md")),
            "csv": store.uri_of(layout.compare(experiment, "csv")), "rows": table.fillna(-1).to_dict(orient="records")}


def render(table, experiment: str) -> Table:
    output = Table(title=f"experiment {experiment}")
    for column in DISPLAY_HEADER:
        output.add_column(column, justify="left" if column in ("run", "loss") else "right",
                          no_wrap=column in ("run", "loss"))
    for row in display_rows(table):
        output.add_row(*row)
    return output
