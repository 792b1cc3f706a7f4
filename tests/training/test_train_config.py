"""The typed training config and job: same schema as the pipelines' config, dict round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.training.config import TrainConfig, TrainJob

INPUT_FIELDS = {"loader_workers", "prefetch_batches", "cache_mb", "eval_batch_size"}


def test_fields_and_defaults_match_the_train_section_configs_use():
    from pipelines import config as pipeline_config

    theirs = pipeline_config.TrainConfig.model_fields
    mine = TrainConfig.model_fields
    for name, field in theirs.items():
        assert name in mine, name
        assert mine[name].default == field.default, name
    assert set(mine) - set(theirs) <= INPUT_FIELDS


def test_a_job_round_trips_through_a_plain_dict():
    job = TrainJob(dataset="/data/datasets/x/v/manifest.json", output_uri="/out", model={"backbone": "small_cnn"},
                   loss={"name": "proxy_anchor", "params": {"alpha": 16.0}}, train={"epochs": 2, "loader_workers": 3},
                   tracking={"uri": "sqlite:///m.db", "run_id": "abc"})
    assert TrainJob.from_dict(job.to_dict()) == job


def test_the_drivers_older_loop_dict_is_accepted():
    legacy = {"model": {"backbone": "small_cnn", "embedding_dim": 32},
              "loss": {"name": "triplet", "params": {}, "attributes": None},
              "train": {**TrainConfig().model_dump(exclude=INPUT_FIELDS), "epochs": 3},
              "dataset": "/d/datasets/x/v/manifest.json",
              "output_uri": "/out", "tracking": {"uri": None, "run_id": None}, "threads_per_worker": 2}
    job = TrainJob.from_dict(legacy)
    assert job.train.epochs == 3 and job.train.threads_per_worker == 2 and job.loss.name == "triplet"


def test_compute_threads_follow_the_reserved_cpus_unless_set():
    assert TrainConfig(cpus_per_worker=2, loader_workers=1).compute_threads() == 2
    assert TrainConfig(cpus_per_worker=0.5).compute_threads() == 1   # at least one
    assert TrainConfig(cpus_per_worker=4, threads_per_worker=3, loader_workers=1).compute_threads() == 3


@pytest.mark.parametrize("bad, match", [
    ({"loss": {"name": "nope"}}, "valid choices"),
    ({"train": {"loader_workers": -1}}, "loader_workers"),
    ({"train": {"epochs": 1, "unknown": 1}}, "unknown"),
])
def test_bad_jobs_name_the_key(bad, match):
    job = {"dataset": "/d", "output_uri": "/o", "model": {}, "loss": {"name": "triplet"}, **bad}
    with pytest.raises(ValidationError, match=match):
        TrainJob.from_dict(job)


def test_a_job_without_its_inputs_says_which_are_missing():
    with pytest.raises(ValueError, match=r"missing \['output_uri'"):
        TrainJob.from_dict({"dataset": "/d", "model": {}, "loss": {"name": "triplet"}})


def test_worker_gives_the_dataset_superclasses_to_a_hierarchical_loss_configured_from_its_file():
    """conf/loss/hierarchical_proxy.yaml writes superclass_of and num_coarse as null: null means
    "not chosen", so the dataset's superclasses must still reach the loss (they once did not)."""
    import yaml

    from components.training.loop import loss_arguments

    params = yaml.safe_load(open("conf/loss/hierarchical_proxy.yaml"))["params"]
    assert params.get("superclass_of") is None and params.get("num_coarse") is None
    arguments = loss_arguments({"name": "hierarchical_proxy", "params": params}, 4, 8, [0, 0, 1, 1])
    assert arguments["superclass_of"] == [0, 0, 1, 1]
    chosen = loss_arguments({"name": "hierarchical_proxy", "params": {**params, "num_coarse": 2}}, 4, 8, [0, 0, 1, 1])
    assert chosen.get("superclass_of") is None                   # a configured coarse count wins
    assert loss_arguments({"name": "triplet", "params": {}}, 4, 8, [0, 0, 1, 1]) == {}
