"""The comparison table users know from the literature, read back from MLflow runs:
loss · training time · epochs · classification accuracy · mAP · R@1 · MAP@R, then the layer
before the embedding (penultimate mAP and R@1) when the runs were evaluated on it too
(`evaluate.taps`), so the layer study reads off the same table; retrieval at the superclass
level (coarse mAP, R@1) where the items have superclasses, and the attribute ranking
(Spearman ρ, nDCG@10) where they carry continuous attributes.

Runs that differ only by their training seed (same `seed_group` tag) share one row: the mean
over seeds, with the sample standard deviation (ddof=1) beside it and the number of seeds.
The untrained raw-pixel baseline of each dataset version (a run tagged `BASELINE_TAG`) is a
row of its own, with no training time, epochs or accuracy.
"""

from __future__ import annotations

import math
from typing import Any

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
# Other layers' metrics, logged by the evaluate stage as "<tap>.<metric>"; shown when measured.
LAYER_TAP = "penultimate"
LAYER_COLUMNS = {f"{LAYER_TAP} {name}": C.mlflow_key(f"{LAYER_TAP}.{name}") for name in (C.METRIC_MAP, C.recall_at(1))}
# How well embedding distance ranks continuous-attribute distance (components.evaluation.attributes),
# where the items carry attributes; plain numbers, not rates.
ATTRIBUTE_COLUMNS = {"attribute ρ": "attribute_spearman", "attribute nDCG@10": C.mlflow_key("attribute_nDCG@10")}
# Retrieval with the superclass as relevance (components.evaluation.model_eval), where items have one.
COARSE_COLUMNS = {f"coarse {name}": C.mlflow_key(f"coarse_{name}") for name in (C.METRIC_MAP, C.recall_at(1))}
OPTIONAL_COLUMNS = {**LAYER_COLUMNS, **COARSE_COLUMNS, **ATTRIBUTE_COLUMNS}   # shown when some row measured them
COLUMNS.update(OPTIONAL_COLUMNS)
STD_SUFFIX = "_std"
SEEDS_COLUMN = "seeds"
TABLE_COLUMNS = ["run", "loss", "dataset_version", *COLUMNS, SEEDS_COLUMN, *[f"{c}{STD_SUFFIX}" for c in COLUMNS],
                 "mlflow_run_id"]

BASELINE_TAG = "chipmatch.baseline"   # value: the baseline's name, e.g. raw_pixels
SEED_GROUP_TAG = "seed_group"         # runs that differ only by train.seed
RUN_BASE_TAG = "run_base"             # the run's name before its seed suffix


def finished_runs(tracking_uri: str, experiment: str, stage: str) -> list[Any]:
    """Finished MLflow runs of `experiment` tagged `stage`, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise MissingDataError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    return client.search_runs([found.experiment_id], filter_string=f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)


def latest_per_name(runs) -> list[Any]:
    """The newest run of each run name (`runs` newest first, as `finished_runs` returns them)."""
    latest: dict[str, Any] = {}
    for run in runs:
        latest.setdefault(run.info.run_name, run)
    return list(latest.values())


def seed_groups(runs) -> list[list[Any]]:
    """`runs` grouped by their seed group (runs that differ only by the seed), each group
    ordered by seed; a run without a seed group (older runs) is a group of its own."""
    groups: dict[str, list[Any]] = {}
    for run in runs:
        groups.setdefault(run.data.tags.get(SEED_GROUP_TAG) or run.info.run_id, []).append(run)
    return [sorted(members, key=lambda r: int(r.data.tags.get("seed", 0) or 0)) for members in groups.values()]


def group_name(members: list[Any]) -> str:
    """A group's name: the run's own for one seed, the name before the seed suffix for several."""
    first = members[0]
    return first.info.run_name if len(members) == 1 else first.data.tags.get(RUN_BASE_TAG, first.info.run_name)


def seeded_name(name: str, seeds: int) -> str:
    """How a row (or a figure's line) of several seeds is shown: `triplet (n=3)`."""
    return f"{name} (n={seeds})" if seeds > 1 else name


def shown_name(row: Any) -> str:
    """The name a table row is shown under: its run, with `(n=3)` for several seeds."""
    seeds = row.get(SEEDS_COLUMN)
    return row["run"] if _missing(seeds) else seeded_name(row["run"], int(seeds))


def comparison_table(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per group of seeds of a finished training run of `experiment` (latest per run
    name), then one raw-pixel row per dataset version the experiment's baselines measured."""
    runs = latest_per_name(finished_runs(tracking_uri, experiment, "train"))
    rows = [_group_row(members) for members in seed_groups(runs)]
    baselines: dict[tuple[str, str], Any] = {}
    for run in finished_runs(tracking_uri, experiment, "baseline"):
        baselines.setdefault((run.data.tags.get(BASELINE_TAG, ""), run.data.tags.get("dataset_version", "")), run)
    rows += [_group_row([run]) for run in baselines.values()]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _group_row(members: list[Any]) -> dict[str, Any]:
    first = members[0]
    row: dict[str, Any] = {"run": group_name(members), "loss": first.data.tags.get("loss", ""),
                           "dataset_version": first.data.tags.get("dataset_version", ""), SEEDS_COLUMN: len(members),
                           "mlflow_run_id": ",".join(r.info.run_id for r in members)}
    for column, key in COLUMNS.items():
        values = [r.data.metrics[key] for r in members if key in r.data.metrics]
        row[column] = float(pd.Series(values).mean()) if values else math.nan
        row[f"{column}{STD_SUFFIX}"] = float(pd.Series(values).std(ddof=1)) if len(values) > 1 else math.nan
    return row


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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def display_rows(table: pd.DataFrame) -> list[list[str]]:
    """Rows as the table prints: time humanised, rates as percentages, `mean ± std` over seeds."""
    def percent(row, column):
        value, spread = row[column], row.get(f"{column}{STD_SUFFIX}")
        if _missing(value):
            return "-"
        return f"{100 * value:.2f} %" if _missing(spread) else f"{100 * value:.2f} ± {100 * spread:.2f} %"

    def duration(row):
        spread = row.get(f"train_seconds{STD_SUFFIX}")
        text = format_duration(row["train_seconds"])
        return text if text == "-" or _missing(spread) else f"{text} ± {format_duration(spread)}"

    def epochs(row):
        value, spread = row["epochs"], row.get(f"epochs{STD_SUFFIX}")
        if _missing(value):
            return "-"
        return str(int(value)) if _missing(spread) or spread == 0 else f"{value:.1f} ± {spread:.1f}"

    def number(row, column):
        value, spread = row[column], row.get(f"{column}{STD_SUFFIX}")
        if _missing(value):
            return "-"
        return f"{value:.3f}" if _missing(spread) else f"{value:.3f} ± {spread:.3f}"

    optional = _optional_columns(table)
    return [[shown_name(row), row["loss"], duration(row), epochs(row), percent(row, C.METRIC_ACCURACY),
             percent(row, C.METRIC_MAP), percent(row, C.recall_at(1)), percent(row, C.METRIC_MAP_AT_R),
             *[number(row, column) if column in ATTRIBUTE_COLUMNS else percent(row, column) for column in optional]]
            for _, row in table.iterrows()]


DISPLAY_HEADER = ["run", "loss", "training time", "epochs", "classification accuracy",
                  C.METRIC_MAP, C.recall_at(1), C.METRIC_MAP_AT_R]


def _optional_columns(table: pd.DataFrame) -> list[str]:
    """The optional columns (penultimate layer, superclass level, attribute ranking) some row measured."""
    return [column for column in OPTIONAL_COLUMNS if column in table.columns and table[column].notna().any()]


def display_header(table: pd.DataFrame) -> list[str]:
    """The printed header of `table`: DISPLAY_HEADER, then the optional columns it has values for."""
    return [*DISPLAY_HEADER, *_optional_columns(table)]


def to_markdown(table: pd.DataFrame) -> str:
    header = display_header(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in display_rows(table)]
    return "\n".join(lines) + "\n"
