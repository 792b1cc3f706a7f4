"""The comparison table users know from the literature, read back from MLflow runs:
loss · training time · epochs · classification accuracy · mAP · R@1 · MAP@R."""

from __future__ import annotations

import math

import pandas as pd

from components import constants as C
from components.errors import ConfigError, MissingDataError

COLUMNS = {  # column → MLflow metric key
    "train_seconds": "train_seconds",
    "epochs": "epochs",
    C.METRIC_ACCURACY: C.mlflow_key(C.METRIC_ACCURACY),
    C.METRIC_MAP: C.mlflow_key(C.METRIC_MAP),
    C.recall_at(1): C.mlflow_key(C.recall_at(1)),
    C.METRIC_MAP_AT_R: C.mlflow_key(C.METRIC_MAP_AT_R),
}


def comparison_table(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per finished training run of `experiment` (latest per run name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise MissingDataError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.stage = 'train' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    rows, seen = [], set()
    for run in runs:
        name = run.info.run_name
        if name in seen:
            continue
        seen.add(name)
        metrics = run.data.metrics
        row = {"run": name, "loss": run.data.tags.get("loss", ""), "dataset_version": run.data.tags.get("dataset_version", "")}
        row.update({column: metrics.get(key, math.nan) for column, key in COLUMNS.items()})
        row["mlflow_run_id"] = run.info.run_id
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "loss", "dataset_version", *COLUMNS, "mlflow_run_id"])


def sort_table(table: pd.DataFrame, key: str, descending: bool | None = None) -> pd.DataFrame:
    if key not in table.columns:
        raise ConfigError(f"cannot sort by {key!r}; columns: {list(table.columns)}")
    if descending is None:  # bigger is better for metrics, smaller for time
        descending = key not in ("train_seconds", "run", "loss")
    return table.sort_values(key, ascending=not descending, na_position="last", kind="stable").reset_index(drop=True)


def format_duration(seconds: float) -> str:
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


def display_rows(table: pd.DataFrame) -> list[list[str]]:
    """Rows as the table prints: time humanised, rates as percentages."""
    def percent(value):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f} %"

    return [[row["run"], row["loss"], format_duration(row["train_seconds"]),
             "-" if math.isnan(row["epochs"]) else str(int(row["epochs"])), percent(row[C.METRIC_ACCURACY]),
             percent(row[C.METRIC_MAP]), percent(row[C.recall_at(1)]), percent(row[C.METRIC_MAP_AT_R])]
            for _, row in table.iterrows()]


DISPLAY_HEADER = ["run", "loss", "training time", "epochs", "classification accuracy",
                  C.METRIC_MAP, C.recall_at(1), C.METRIC_MAP_AT_R]


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(DISPLAY_HEADER) + " |", "|" + "---|" * len(DISPLAY_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in display_rows(table)]
    return "\n".join(lines) + "\n"
