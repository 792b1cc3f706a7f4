"""Every experiment file of issue 11 loads with the real config loader and resolves its runs
(seed expansion, fine-tuning parents, loss parameters), without training anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import CONF_DIR, load_config
from pipelines.runs import run_plan

EXPERIMENTS = Path(CONF_DIR) / "experiments"
ISSUE_11 = {"overhead_small", "overhead_large", "fashion_mnist_seen", "fashion_mnist_unseen", "layer_study",
            "convergence", "hierarchy", "continuous_labels"}


def test_every_experiment_of_issue_11_has_a_file():
    assert ISSUE_11 <= {path.stem for path in EXPERIMENTS.glob("*.yaml")}


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_loads_and_its_runs_resolve(path):
    config = load_config(path)
    assert config.tracking.experiment == path.stem     # one MLflow experiment per file, named after it
    plan = run_plan(config)
    names = [entry.name for entry in plan]
    assert len(names) == len(set(names)) and names
    assert len(plan) == len(config.runs or [None]) * max(1, len(config.seeds))
    for position, entry in enumerate(plan):
        if config.seeds:
            assert entry.name == f"{entry.base}-s{entry.train.seed}" and entry.train.seed in config.seeds
        if entry.train.init_from is not None:   # a parent trained earlier in the plan, same seed
            parent = next(p for p in plan[:position] if p.name == entry.train.init_from)
            assert parent.train.seed == entry.train.seed


def test_recipes_follow_the_issue():
    small = load_config(EXPERIMENTS / "overhead_small.yaml")
    assert small.model.embedding_dim == 256 and small.split.seen_fraction == 0.6
    by_base = {entry.base: entry for entry in run_plan(small)}
    assert {name: entry.loss.name for name, entry in by_base.items()} == {
        "triplet": "triplet", "ce": "cross_entropy", "warp_from_ce": "warp", "ce_cosine": "cosine_softmax"}
    assert by_base["triplet"].train.epochs == 35 and by_base["warp_from_ce"].train.epochs == 10
    seen = load_config(EXPERIMENTS / "fashion_mnist_seen.yaml")
    assert seen.split.protocol == "images" and seen.model.embedding_dim == 128
    assert (seen.train.classes_per_batch, seen.train.images_per_class, seen.train.augment) == (10, 16, False)
    # the issue's three losses, and the cosine layer of the overhead table's fourth
    assert {entry.loss.name for entry in run_plan(seen)} == {"cross_entropy", "triplet", "smooth_ap", "cosine_softmax"}
    assert load_config(EXPERIMENTS / "fashion_mnist_unseen.yaml").split.protocol == "classes"
    assert load_config(EXPERIMENTS / "layer_study.yaml").evaluate.taps == ["embedding", "penultimate"]
    hierarchy = {entry.base: entry.loss for entry in run_plan(load_config(EXPERIMENTS / "hierarchy.yaml"))}
    # The dataset's superclasses reach a run that sets neither superclass_of nor num_coarse.
    assert not {"superclass_of", "num_coarse"} & set(hierarchy["hpl_superclasses"].params)
    assert hierarchy["hpl_kmeans"].params["num_coarse"] > 1
    continuous = {entry.base: entry.loss for entry in run_plan(load_config(EXPERIMENTS / "continuous_labels.yaml"))}
    assert continuous["log_ratio"].attributes == ["length_m", "width_m"]


def test_every_loss_of_every_experiment_builds_with_real_classes(tiny_dataset):
    """The driver's pre-flight check (the loss built once with a dataset's training classes and
    superclasses, as the workers will) passes for every run, on the tiny synthetic version."""
    from pipelines.runs import plan_run
    from pipelines.trainer import check_loss_builds

    _, manifest = tiny_dataset
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        config = load_config(path)
        for entry in run_plan(config):
            train = entry.train.model_copy(update={"init_from": None})
            check_loss_builds(config, plan_run(config, entry.name, entry.loss, train, manifest, entry.base, entry.init_base))


def test_each_synthetic_data_file_is_its_own_dataset():
    """Versions of one dataset inherit its class split (new imagery of the same classes): a
    second preset ingested under the first one's name would take over its split and its LATEST."""
    from components.data.sources import build_source

    files = sorted((Path(CONF_DIR) / "data").glob("synthetic_*.yaml"))
    names = [build_source(load_config(None, [f"data={path.stem}"]).data).dataset_name() for path in files]
    assert len(files) >= 4 and len(set(names)) == len(names), dict(zip([p.stem for p in files], names))
    experiment = load_config(EXPERIMENTS / "overhead_large_cpu.yaml")
    assert build_source(experiment.data).dataset_name() not in names
