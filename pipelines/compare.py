"""The compare stage: the experiment's runs side by side (terminal, Markdown and CSV), seeds of
one run on one row (mean ± std), the raw-pixel baseline beside them; optionally figures:

- `convergence`: validation R@1 of every training run against epochs, and against training
  seconds (one figure per axis, one line per run: the mean over its seeds with a ± std band),
  from the runs' MLflow metric histories;
  R@1 on the retrieval split per epoch (`evaluate.per_epoch`) is drawn dashed beside it when
  it was measured (never used for model selection).
- `pr`: the PR curves of every row (seeds averaged when they share recall points, baseline
  included) on one figure, from each run's `evaluation/metrics.json` artifact; `pr_runs` (the
  CLI's `--pr-run`) draws only the rows it names, beside the baselines.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console
from rich.table import Table

from components import constants as C
from components.errors import ConfigError, MissingDataError
from components.tracking import metric_history, read_json_artifact
from components.tracking.compare import (
    SEEDS_COLUMN,
    comparison_table,
    display_header,
    display_rows,
    finished_runs,
    group_name,
    latest_per_name,
    seed_groups,
    seeded_name,
    shown_name,
    sort_table,
    to_markdown,
)
from pipelines.baseline import BASELINE_LOSS
from pipelines.config import Config
from pipelines.context import StageContext, stage_context

PLOTS = ("convergence", "pr")
VAL_R1 = f"val_{C.recall_at(1)}"
# Per-epoch R@1 on the retrieval split (evaluate.per_epoch): unseen classes, or protocol images' test images.
RETRIEVAL_R1 = {split: f"{split}_{C.recall_at(1)}" for split in (C.SPLIT_UNSEEN, C.SPLIT_TEST)}


def run_compare(config: Config, context: StageContext | Console | None = None, experiment: str | None = None,
                sort: str = "mAP", plots: tuple[str, ...] | list[str] = (),
                pr_runs: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    context = stage_context(config, context)
    experiment = experiment or context.experiment
    unknown = sorted(set(plots) - set(PLOTS))
    if unknown:
        raise ConfigError(f"--plot {unknown[0]!r} is unknown; choose from {list(PLOTS)}")
    if pr_runs and "pr" not in plots:
        raise ConfigError("--pr-run chooses the rows of the PR figure: add --plot pr")
    table = sort_table(comparison_table(context.tracking_uri, experiment), sort)
    if not finished_runs(context.tracking_uri, experiment, "train"):   # a baseline alone compares nothing
        raise MissingDataError(f"MLflow experiment {experiment!r} has no finished training runs yet")
    pr_rows = rows_named(table, pr_runs) if pr_runs else table
    store, layout = context.store, context.layout
    store.write_bytes(layout.compare(experiment, "md"), to_markdown(table).encode())
    store.write_bytes(layout.compare(experiment, "csv"), table.to_csv(index=False).encode())
    context.console.print(render(table, experiment))
    result = {"stage": "compare", "experiment": experiment, "markdown": store.uri_of(layout.compare(experiment, "md")),
              "csv": store.uri_of(layout.compare(experiment, "csv")), "rows": table.fillna(-1).to_dict(orient="records")}
    figures: dict[str, str] = {}
    if "convergence" in plots:
        figures.update(convergence_plots(context, experiment))
    if "pr" in plots:
        figures["pr"] = pr_overlay(context, experiment, pr_rows)
    if figures:
        for name, uri in figures.items():
            context.console.log(f"[compare] {name}: {uri}")
        result["plots"] = figures
    return result


def rows_named(table, names) -> Any:
    """The rows `names` lists, by the name the table shows (`triplet (n=3)`) or the run's name
    (`triplet`), in the table's order, and every baseline row (its loss column: `BASELINE_LOSS`)."""
    shown = {shown_name(row): row["run"] for _, row in table.iterrows()}
    known = set(shown) | set(shown.values())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"--pr-run {unknown[0]!r} is not a row of this experiment; rows: {sorted(shown)}")
    wanted = {shown.get(name, name) for name in names}
    return table[table["run"].isin(wanted) | (table["loss"] == BASELINE_LOSS)].reset_index(drop=True)


def render(table, experiment: str) -> Table:
    output = Table(title=f"experiment {experiment}")
    for column in display_header(table):
        output.add_column(column, justify="left" if column in ("run", "loss") else "right",
                          no_wrap=column in ("run", "loss"))
    for row in display_rows(table):
        output.add_row(*row)
    return output


class Curve(NamedTuple):
    """One line of a convergence figure: the mean over a group's seeds, their sample std beside it."""
    x: np.ndarray
    y: np.ndarray
    std: np.ndarray | None   # None for a single seed
    accompanies: str | None  # a retrieval-split line: the name of its run's validation line


def _curve(x: np.ndarray, per_seed: np.ndarray, accompanies: str | None) -> Curve:
    """per_seed: [seeds, points]."""
    return Curve(x, per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else None, accompanies)


def convergence_series(tracking_uri: str, experiment: str) -> dict[str, dict[str, Curve]]:
    """axis ("epochs", "seconds") -> line name -> Curve, one per group of seeds of the finished
    training runs (latest per name) with a validation history: R@1 averaged over the seeds at
    the epochs every seed logged, and on the seconds axis each epoch placed at the seeds' mean
    training time. A group of several seeds is named like its table row, `<base> (n=3)`;
    retrieval-split lines are `<name> unseen` (or `<name> test`)."""
    series: dict[str, dict[str, Curve]] = {"epochs": {}, "seconds": {}}
    for members in seed_groups(latest_per_name(finished_runs(tracking_uri, experiment, "train"))):
        name = seeded_name(group_name(members), len(members))
        seconds = [metric_history(tracking_uri, run.info.run_id, "train_seconds") for run in members]
        lines = ((VAL_R1, name, None), *((m, f"{name} {split}", name) for split, m in RETRIEVAL_R1.items()))
        for metric, label, accompanies in lines:
            histories = [metric_history(tracking_uri, run.info.run_id, metric) for run in members]
            steps = sorted(set.intersection(*(set(history) for history in histories)))
            if not steps:
                continue
            per_seed = np.array([[h[s] for s in steps] for h in histories])
            series["epochs"][label] = _curve(np.array(steps), per_seed, accompanies)
            timed = [i for i, s in enumerate(steps) if all(s in times for times in seconds)]
            if timed:
                mean_seconds = np.array([[times[steps[i]] for i in timed] for times in seconds]).mean(axis=0)
                series["seconds"][label] = _curve(mean_seconds, per_seed[:, timed], accompanies)
    return series


def convergence_plots(context: StageContext, experiment: str) -> dict[str, str]:
    """Two PNGs under compare/: validation (and retrieval-split, if measured) R@1 against epochs and
    against training seconds, the seeds' mean with a ± std band; their URIs."""
    from components.evaluation.plots import plot_curves

    series = convergence_series(context.tracking_uri, experiment)
    if not series["epochs"]:
        raise MissingDataError(f"no training run of experiment {experiment!r} logged {VAL_R1} per epoch")
    written = {}
    for axis, label in (("epochs", "epoch"), ("seconds", "training time (s)")):
        if not series[axis]:
            continue
        curves = series[axis]
        # A retrieval-split line whose validation line has no seconds axis is drawn on its own.
        companions = {name: c.accompanies for name, c in curves.items() if c.accompanies in curves}
        spread = {name: curve.std for name, curve in curves.items() if curve.std is not None}
        relative = context.layout.compare(experiment, f"convergence-{axis}.png")
        written[f"convergence_{axis}"] = _write_figure(
            context, relative, lambda path, c=curves, x=label, p=companions, b=spread: plot_curves(
                {name: (curve.x, curve.y) for name, curve in c.items()}, path, x, C.recall_at(1),
                f"{experiment}: R@1 against {x} (solid: validation)", companions=p, spread=b))
    return written


def pr_curves_of_rows(tracking_uri: str, table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """row name -> (recall, precision): each row's runs' `evaluation/metrics.json` curves, the
    precision averaged over seeds when they share recall points (else the first seed's)."""
    curves = {}
    for _, row in table.iterrows():
        records = [read_json_artifact(tracking_uri, run_id, "evaluation/metrics.json")
                   for run_id in str(row["mlflow_run_id"]).split(",")]
        found: list[dict[str, Any]] = [r["pr_curve"] for r in records if r and "pr_curve" in r]
        if not found:
            continue
        recall = np.asarray(found[0]["recall"], dtype=np.float64)
        same = [f for f in found if np.array_equal(np.asarray(f["recall"], dtype=np.float64), recall)]
        precision = np.stack([np.asarray(f["precision"], dtype=np.float64) for f in same]).mean(axis=0)
        seeds = row.get(SEEDS_COLUMN)
        name = row["run"] if math.isnan(seeds) or seeds <= 1 else f"{row['run']} (mean of {len(same)} seeds)"
        curves[name] = (recall, precision)
    return curves


def pr_overlay(context: StageContext, experiment: str, table) -> str:
    from components.evaluation.plots import plot_pr_curves

    curves = pr_curves_of_rows(context.tracking_uri, table)
    if not curves:
        raise MissingDataError(f"no run of experiment {experiment!r} has an evaluation yet: run `chipmatch evaluate`")
    return _write_figure(context, context.layout.compare(experiment, "pr.png"),
                         lambda path: plot_pr_curves(curves, path, f"{experiment}: precision-recall"))


def _write_figure(context: StageContext, relative: str, draw) -> str:
    """Draw into a local temporary file and store it at `relative` (the root may be remote)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "figure.png")
        draw(path)
        with open(path, "rb") as handle:
            context.store.write_bytes(relative, handle.read())
    return context.store.uri_of(relative)
