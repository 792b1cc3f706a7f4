"""The compare stage: the experiment's runs side by side (terminal, Markdown and CSV)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from components.storage import Store
from components.tracking.compare import DISPLAY_HEADER, comparison_table, display_rows, sort_table, to_markdown
from pipelines.config import Config
from pipelines.train import tracking_uri


def run_compare(config: Config, console: Console, experiment: str | None = None, sort: str = "mAP") -> dict[str, Any]:
    experiment = experiment or config.tracking.experiment
    table = sort_table(comparison_table(tracking_uri(config), experiment), sort)
    if table.empty:
        raise ValueError(f"MLflow experiment {experiment!r} has no finished training runs yet")
    store = Store(config.storage.root)
    store.write_bytes(f"compare/{experiment}.md", to_markdown(table).encode())
    store.write_bytes(f"compare/{experiment}.csv", table.to_csv(index=False).encode())
    console.print(render(table, experiment))
    return {"stage": "compare", "experiment": experiment, "markdown": store.uri_of(f"compare/{experiment}.md"),
            "csv": store.uri_of(f"compare/{experiment}.csv"), "rows": table.fillna(-1).to_dict(orient="records")}


def render(table, experiment: str) -> Table:
    output = Table(title=f"experiment {experiment}")
    for column in DISPLAY_HEADER:
        output.add_column(column, justify="left" if column in ("run", "loss") else "right")
    for row in display_rows(table):
        output.add_row(*row)
    return output
