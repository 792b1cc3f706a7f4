"""Seeds: a config's runs expand once per seed; `chipmatch compare` puts the seeds of a run on
one row (mean ± sample std, checked against numpy) and draws convergence and PR figures from
MLflow histories and artifacts (real sqlite store, runs written as training writes them)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from components import constants as C
from components.evaluation import plots
from components.tracking import RunLogger, create_run
from components.tracking.compare import (
    BASELINE_TAG,
    DISPLAY_HEADER,
    comparison_table,
    display_header,
    display_rows,
    to_markdown,
)
from pipelines.baseline import BASELINE_LOSS, BASELINE_NAME
from pipelines.compare import convergence_series, pr_curves_of_rows, rows_named, run_compare
from pipelines.config import ConfigError, load_config
from pipelines.context import StageContext
from pipelines.runs import plan_run, run_plan

RUNS = "runs=[{name: ce, loss: cross_entropy}, {name: warp, loss: warp, overrides: {init_from: ce}}]"


def test_seeds_expand_every_run_and_fine_tune_from_the_same_seed():
    plan = run_plan(load_config(None, [RUNS, "seeds=[0, 3]"]))
    assert [(e.name, e.train.seed, e.train.init_from, e.base) for e in plan] == [
        ("ce-s0", 0, None, "ce"), ("ce-s3", 3, None, "ce"), ("warp-s0", 0, "ce-s0", "warp"), ("warp-s3", 3, "ce-s3", "warp")]
    assert [e.name for e in run_plan(load_config(None, [RUNS]))] == ["ce", "warp"]   # no seeds: as before
    assert [e.name for e in run_plan(load_config(None, ["runs=[]", "loss=triplet", "seeds=[1]"]))] == ["triplet-s1"]


@pytest.mark.parametrize("overrides, named", [
    (["seeds=[1, 1]"], "seeds"),
    (["runs=[{name: a, loss: triplet, overrides: {seed: 2}}]", "seeds=[0, 1]"], "runs.a.overrides.seed"),
    (["runs=[{name: raw_pixels, loss: triplet}]"], "raw_pixels"),
])
def test_bad_seed_configs_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, overrides)


def test_seeds_of_a_run_share_a_seed_group(tiny_dataset):
    _, manifest = tiny_dataset
    config = load_config(None, [RUNS, "seeds=[0, 1]", "data=synthetic_tiny"])
    groups = {}
    for entry in run_plan(config):   # the train stage resolves init_from to each parent's own model URI
        train = entry.train.model_copy(update={"init_from": f"/models/{entry.train.init_from}"}) if entry.train.init_from \
            else entry.train
        planned = plan_run(config, entry.name, entry.loss, train, manifest, entry.base, entry.init_base)
        groups[entry.name] = planned.tags["seed_group"]
        assert planned.tags["run_base"] == entry.base and planned.tags["seed"] == entry.train.seed
    assert groups["ce-s0"] == groups["ce-s1"] and groups["warp-s0"] == groups["warp-s1"]
    assert groups["ce-s0"] != groups["warp-s0"]


def _fake_training_run(tracking, experiment_id, name, base, group, seed, metrics, epochs):
    """A finished run as the train and evaluate stages leave it: tags, per-epoch history, totals."""
    logger = RunLogger(tracking, create_run(tracking, experiment_id, name, {
        "stage": "train", "loss": base, "seed_group": group, "run_base": base, "seed": seed, "dataset_version": "v1"}))
    for epoch, (r1, seconds) in enumerate(epochs, start=1):
        logger.log_metrics({f"val_{C.recall_at(1)}": r1, "train_seconds": seconds}, step=epoch)
    logger.log_metrics({"train_seconds": epochs[-1][1], "epochs": len(epochs), **metrics})
    recall = np.linspace(0, 1, 5)
    logger.log_dict({"pr_curve": {"recall": recall.tolist(), "precision": (1 - recall * metrics[C.METRIC_MAP]).tolist()}},
                    "evaluation/metrics.json")
    logger.terminate("FINISHED")
    return logger.run_id


def test_compare_groups_seeds_with_mean_and_std_and_draws_figures(tmp_path):
    config = load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=seeds-test"])
    context = StageContext(config, Console(quiet=True))
    tracking, experiment_id = context.tracking_uri, context.experiment_id
    maps, r1s = [0.50, 0.53, 0.55], [0.70, 0.72, 0.77]
    for seed, (m, r) in enumerate(zip(maps, r1s)):
        _fake_training_run(tracking, experiment_id, f"triplet-s{seed}", "triplet", "g-triplet", seed,
                           {C.METRIC_MAP: m, C.recall_at(1): r},
                           [(0.3 + 0.01 * seed, 10.0 + seed), (0.5 + 0.02 * seed, 20.0 + seed)])
    _fake_training_run(tracking, experiment_id, "ce", "ce", "g-ce", 0, {C.METRIC_MAP: 0.4, C.recall_at(1): 0.6},
                       [(0.2, 5.0), (0.4, 9.0), (0.45, 13.0)])
    table = comparison_table(tracking, "seeds-test").set_index("run")
    assert set(table.index) == {"triplet", "ce"}
    triplet = table.loc["triplet"]
    assert triplet["seeds"] == 3 and triplet[C.METRIC_MAP] == pytest.approx(np.mean(maps))
    assert triplet[f"{C.METRIC_MAP}_std"] == pytest.approx(np.std(maps, ddof=1))
    assert triplet["train_seconds"] == pytest.approx(21.0) and triplet["train_seconds_std"] == pytest.approx(1.0)
    assert np.isnan(table.loc["ce"][f"{C.METRIC_MAP}_std"])
    printed = {row[0]: row for row in display_rows(table.reset_index())}
    assert printed["triplet (n=3)"][5] == f"{100 * np.mean(maps):.2f} ± {100 * np.std(maps, ddof=1):.2f} %"
    assert printed["ce"][5] == "40.00 %" and printed["ce"][3] == "3"    # a single seed prints as before

    series = convergence_series(tracking, "seeds-test")
    steps, values, spread, accompanies = series["epochs"]["ce"]
    assert steps.tolist() == [1, 2, 3] and values.tolist() == [0.2, 0.4, 0.45]   # step 0 (the totals) left out
    assert spread is None and accompanies is None and series["seconds"]["ce"].x.tolist() == [5.0, 9.0, 13.0]
    assert set(series["epochs"]) == {"ce", "triplet (n=3)"}   # one line per group of seeds, named like its row
    per_seed = np.array([[0.3 + 0.01 * seed, 0.5 + 0.02 * seed] for seed in range(3)])
    triplet = series["epochs"]["triplet (n=3)"]
    assert triplet.x.tolist() == [1, 2] and triplet.y == pytest.approx(per_seed.mean(axis=0))
    assert triplet.std == pytest.approx(per_seed.std(axis=0, ddof=1))
    assert series["seconds"]["triplet (n=3)"].x.tolist() == pytest.approx([11.0, 21.0])   # the seeds' mean time

    report = run_compare(config, context, plots=["convergence", "pr"])
    for name in ("convergence_epochs", "convergence_seconds", "pr"):
        assert Image.open(report["plots"][name]).size[0] > 0
    with pytest.raises(ConfigError, match="--plot 'loss'"):
        run_compare(config, context, plots=["loss"])


def test_convergence_lines_average_only_the_epochs_every_seed_logged(tmp_path):
    config = load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=ragged-test"])
    context = StageContext(config, Console(quiet=True))
    histories = [[(0.2, 4.0), (0.4, 8.0), (0.5, 12.0)], [(0.3, 6.0), (0.6, 10.0)]]   # seed 1 stopped after epoch 2
    for seed, epochs in enumerate(histories):
        _fake_training_run(context.tracking_uri, context.experiment_id, f"pa-s{seed}", "pa", "g-pa", seed,
                           {C.METRIC_MAP: 0.3, C.recall_at(1): 0.5}, epochs)
    line = convergence_series(context.tracking_uri, "ragged-test")["seconds"]["pa (n=2)"]
    assert line.x.tolist() == pytest.approx([5.0, 9.0]) and line.y == pytest.approx([0.25, 0.5])
    assert line.std == pytest.approx([np.std([0.2, 0.3], ddof=1), np.std([0.4, 0.6], ddof=1)])


def test_penultimate_layer_columns_appear_only_when_measured(tmp_path):
    config = load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=layers-test"])
    context = StageContext(config, Console(quiet=True))
    tracking, experiment_id = context.tracking_uri, context.experiment_id
    _fake_training_run(tracking, experiment_id, "ce", "ce", "g-ce", 0, {C.METRIC_MAP: 0.4, C.recall_at(1): 0.6}, [(0.2, 5.0)])
    assert display_header(comparison_table(tracking, "layers-test")) == DISPLAY_HEADER   # not measured: not shown
    penultimate = {C.mlflow_key(f"penultimate.{C.METRIC_MAP}"): 0.3, C.mlflow_key(f"penultimate.{C.recall_at(1)}"): 0.5}
    for seed, shift in enumerate((0.0, 0.1)):
        _fake_training_run(tracking, experiment_id, f"triplet-s{seed}", "triplet", "g-t", seed,
                           {C.METRIC_MAP: 0.5, C.recall_at(1): 0.7, **{k: v + shift for k, v in penultimate.items()}},
                           [(0.3, 10.0)])
    table = comparison_table(tracking, "layers-test")
    header = display_header(table)
    assert header == [*DISPLAY_HEADER, f"penultimate {C.METRIC_MAP}", f"penultimate {C.recall_at(1)}"]
    printed = {row[0]: dict(zip(header, row)) for row in display_rows(table)}
    assert printed["triplet (n=2)"][f"penultimate {C.METRIC_MAP}"] == f"35.00 ± {100 * np.std([0.3, 0.4], ddof=1):.2f} %"
    assert printed["ce"][f"penultimate {C.recall_at(1)}"] == "-"
    assert to_markdown(table).splitlines()[0].count("|") == len(header) + 1


def test_attribute_ranking_columns_are_plain_numbers_with_the_seed_spread(tmp_path):
    config = load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=attributes-test"])
    context = StageContext(config, Console(quiet=True))
    tracking, experiment_id = context.tracking_uri, context.experiment_id
    _fake_training_run(tracking, experiment_id, "triplet", "triplet", "g-t", 0, {C.METRIC_MAP: 0.5}, [(0.3, 10.0)])
    for seed, (rho, ndcg) in enumerate(((0.55, 0.80), (0.61, 0.84))):
        _fake_training_run(tracking, experiment_id, f"log_ratio-s{seed}", "log_ratio", "g-l", seed,
                           {C.METRIC_MAP: 0.3, "attribute_spearman": rho, C.mlflow_key("attribute_nDCG@10"): ndcg},
                           [(0.3, 10.0)])
    table = comparison_table(tracking, "attributes-test")
    header = display_header(table)
    assert header == [*DISPLAY_HEADER, "attribute ρ", "attribute nDCG@10"]
    printed = {row[0]: dict(zip(header, row)) for row in display_rows(table)}
    assert printed["log_ratio (n=2)"]["attribute ρ"] == f"0.580 ± {np.std([0.55, 0.61], ddof=1):.3f}"
    assert printed["log_ratio (n=2)"]["attribute nDCG@10"] == f"0.820 ± {np.std([0.80, 0.84], ddof=1):.3f}"
    assert printed["triplet"]["attribute ρ"] == "-"


def test_a_run_reused_by_another_experiment_is_copied_there_once(tmp_path):
    """`copy_run_into` (what a reused run's experiment gets): the same row in compare, the same
    metric histories, params, tags and artifacts, made once; a run of the experiment itself is kept."""
    from mlflow.tracking import MlflowClient

    from components.tracking.copies import COPIED_FROM_TAG, copy_run_into

    first = StageContext(load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=trained-here"]),
                         Console(quiet=True))
    tracking = first.tracking_uri
    source = _fake_training_run(tracking, first.experiment_id, "triplet-s0", "triplet", "g-t", 0,
                                {C.METRIC_MAP: 0.5, C.recall_at(1): 0.7}, [(0.3, 10.0), (0.5, 20.0), (0.6, 30.0)])
    RunLogger(tracking, source).log_params({"train": {"lr": 0.002, "epochs": 3}})
    config = load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=reused-here"])
    second = StageContext(config, Console(quiet=True))
    assert copy_run_into(tracking, first.experiment_id, source) == source   # its own experiment: itself
    copy = copy_run_into(tracking, second.experiment_id, source)
    assert copy != source and copy_run_into(tracking, second.experiment_id, source) == copy   # made once

    client = MlflowClient(tracking)
    original, copied = client.get_run(source), client.get_run(copy)
    assert copied.info.experiment_id == second.experiment_id and copied.info.status == "FINISHED"
    assert copied.info.run_name == "triplet-s0" and copied.data.tags[COPIED_FROM_TAG] == source
    assert {k: v for k, v in copied.data.tags.items() if not k.startswith("mlflow.") and k != COPIED_FROM_TAG} == \
        {k: v for k, v in original.data.tags.items() if not k.startswith("mlflow.")}
    assert copied.data.params == original.data.params and copied.data.metrics == original.data.metrics
    for key in original.data.metrics:
        history = [(m.step, m.value) for m in client.get_metric_history(source, key)]
        assert [(m.step, m.value) for m in client.get_metric_history(copy, key)] == history
    assert {a.path for a in client.list_artifacts(copy, "evaluation")} == {"evaluation/metrics.json"}

    tables = [comparison_table(tracking, name).drop(columns="mlflow_run_id") for name in ("trained-here", "reused-here")]
    assert tables[0].equals(tables[1])
    report = run_compare(config, second, plots=["convergence", "pr"])   # histories and PR curve from the copy
    assert {"convergence_epochs", "pr"} <= set(report["plots"])


def test_the_pr_figure_draws_the_rows_it_is_asked_for_beside_the_baseline(tmp_path, monkeypatch):
    config = load_config(None, [f"storage.root={tmp_path}", "tracking.experiment=pr-rows"])
    context = StageContext(config, Console(quiet=True))
    tracking, experiment_id = context.tracking_uri, context.experiment_id
    for seed in range(2):
        _fake_training_run(tracking, experiment_id, f"triplet-s{seed}", "triplet", "g-triplet", seed,
                           {C.METRIC_MAP: 0.5 + 0.01 * seed}, [(0.3, 10.0)])
    for name, value in (("ce", 0.4), ("ce_ls", 0.45)):
        _fake_training_run(tracking, experiment_id, name, "cross_entropy", f"g-{name}", 0, {C.METRIC_MAP: value},
                           [(0.2, 5.0)])
    baseline = RunLogger(tracking, create_run(tracking, experiment_id, BASELINE_NAME, {   # tagged as the stage tags it
        "stage": "baseline", BASELINE_TAG: BASELINE_NAME, "loss": BASELINE_LOSS, "dataset_version": "v1"}))
    baseline.log_metrics({C.METRIC_MAP: 0.1})
    baseline.log_dict({"pr_curve": {"recall": [0.0, 1.0], "precision": [1.0, 0.1]}}, "evaluation/metrics.json")
    baseline.terminate("FINISHED")
    table = comparison_table(tracking, "pr-rows")
    assert set(table["run"]) == {"triplet", "ce", "ce_ls", "raw_pixels"}
    # By the name the table shows or by the run's name; the baseline always comes along.
    assert set(rows_named(table, ["triplet (n=2)", "ce"])["run"]) == {"triplet", "ce", "raw_pixels"}
    assert set(rows_named(table, ["triplet"])["run"]) == {"triplet", "raw_pixels"}
    assert set(pr_curves_of_rows(tracking, rows_named(table, ["ce_ls"]))) == {"ce_ls", "raw_pixels"}
    with pytest.raises(ConfigError, match=r"--pr-run 'ce_l' is not a row.*'ce_ls'"):
        rows_named(table, ["ce_l"])
    drawn = []
    draw = plots.plot_pr_curves
    monkeypatch.setattr(plots, "plot_pr_curves", lambda curves, *a, **k: (drawn.append(set(curves)), draw(curves, *a, **k)))
    report = run_compare(config, context, plots=["pr"], pr_runs=["ce"])
    assert drawn == [{"ce", BASELINE_NAME}] and Image.open(report["plots"]["pr"]).size[0] > 0
    assert len(report["rows"]) == 4   # the table keeps every row
    with pytest.raises(ConfigError, match="add --plot pr"):
        run_compare(config, context, pr_runs=["ce"])
