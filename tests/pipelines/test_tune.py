"""`chipmatch tune`: sweep files are validated strictly; a tiny ASHA sweep trains real trials
with the training code of `chipmatch train`, tracks them as MLflow child runs and writes a
best config that `chipmatch train` loads."""

from __future__ import annotations

import io
import json
import math
import time

import pytest
import yaml

from pipelines.config import ConfigError, load_config
from pipelines.sweep import available_sweeps, base_raw, trial_raw
from pipelines.tune import TrialOutcome, check_cluster, rank_trials

SHIPPED = ["contrastive_margins", "embedding_lr", "multi_similarity", "pk", "proxy_anchor", "triplet_margin"]


def config_file(tmp_path, sweep: dict, **sections) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": "synthetic_tiny", **sections, "tune": sweep}))
    return str(path)


def error_of(tmp_path, sweep: dict, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file(tmp_path, sweep), list(overrides))
    return str(info.value)


def sweep_of(**space) -> dict:
    return {"name": "t", "space": space or {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}


def test_every_shipped_sweep_loads_on_the_quickstart_config():
    assert available_sweeps() == SHIPPED
    for name in SHIPPED:
        sweep = load_config(None, [f"tune={name}"]).tune
        assert sweep.name == name and sweep.space and sweep.metric == "val_mAP"
        assert sweep.scheduler.type == "asha"


def test_unknown_sweep_name_lists_the_files():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["tune=triplet_margn"])
    assert "triplet_margn" in str(info.value) and "triplet_margin" in str(info.value) and "proxy_anchor" in str(info.value)


def test_unknown_keys_of_a_sweep_file_are_named_with_the_valid_ones(tmp_path):
    message = error_of(tmp_path, {**sweep_of(), "schedular": {"type": "asha"}})
    assert "tune.schedular" in message and "scheduler" in message and "max_concurrent_trials" in message
    message = error_of(tmp_path, {**sweep_of(), "scheduler": {"grace": 1}})
    assert "tune.scheduler.grace" in message and "grace_period" in message
    message = error_of(tmp_path, sweep_of(**{"train.lr": {"type": "loguniform", "low": 1e-4, "hi": 1e-2}}))
    assert "hi" in message and "high" in message and "values" in message


def test_space_keys_must_be_config_keys(tmp_path):
    message = error_of(tmp_path, sweep_of(**{"train.lrr": {"type": "uniform", "low": 0.1, "high": 0.2}}))
    assert "train.lrr" in message and "'lr'" in message and "classes_per_batch" in message
    message = error_of(tmp_path, sweep_of(**{"model.embeding_dim": {"type": "choice", "values": [64]}}))
    assert "model.embeding_dim" in message and "embedding_dim" in message
    message = error_of(tmp_path, sweep_of(**{"data.preset": {"type": "choice", "values": ["small"]}}))
    assert "data.preset" in message and "train" in message and "model" in message
    # Loss parameters are checked against the loss the trials use (after the sweep's overrides).
    message = error_of(tmp_path, sweep_of(**{"loss.params.margn": {"type": "uniform", "low": 0.1, "high": 0.2}}))
    assert "loss.params.margn" in message and "margin" in message and "'triplet'" in message
    message = error_of(tmp_path, {**sweep_of(**{"loss.params.pos_margin": {"type": "uniform", "low": 0, "high": 0.2}}),
                                  "overrides": {"loss": "proxy_anchor"}})
    assert "pos_margin" in message and "proxy_anchor" in message and "alpha" in message
    assert load_config(None, ["tune=contrastive_margins"]).tune.overrides == {"loss": "contrastive"}


def test_bad_distributions_and_values_are_named(tmp_path):
    message = error_of(tmp_path, sweep_of(**{"train.lr": {"type": "loguniform", "low": 0, "high": 0.1}}))
    assert "train.lr" in message and "low > 0" in message
    message = error_of(tmp_path, sweep_of(**{"train.lr": {"type": "unifrom", "low": 0.1, "high": 0.2}}))
    assert "train.lr" in message and "'uniform'" in message and "'grid'" in message
    message = error_of(tmp_path, sweep_of(**{"train.lr": {"type": "uniform", "low": 0.2, "high": 0.1}}))
    assert "below" in message
    # Every listed value (and both bounds) must make a valid config.
    message = error_of(tmp_path, sweep_of(**{"model.embedding_dim": {"type": "choice", "values": [64, 4]}}))
    assert "model.embedding_dim" in message and "4" in message and "greater than or equal to 8" in message
    message = error_of(tmp_path, sweep_of(), "tune.metric=mAP")
    assert "val_mAP" in message and "train_loss" in message
    message = error_of(tmp_path, {**sweep_of(), "scheduler": {"grace_period": 5}}, "train.epochs=2")
    assert "grace_period=5" in message and "max_t=2" in message
    assert "space is empty" in error_of(tmp_path, {"name": "t", "space": {}})


def test_trial_config_gets_the_sampled_values_and_the_trial_resources(tmp_path):
    config = load_config(config_file(tmp_path, {**sweep_of(), "resources_per_trial": {"cpu": 4, "gpu": 1}}),
                         ["train.num_workers=2"])
    raw, gpus_per_worker = trial_raw(base_raw(config), config.tune, {"train.lr": 0.005, "model.embedding_dim": 64})
    assert raw["train"]["lr"] == 0.005 and raw["model"]["embedding_dim"] == 64
    assert raw["train"]["cpus_per_worker"] == 2 and raw["train"]["threads_per_worker"] == 2
    assert raw["train"]["use_gpu"] is True and gpus_per_worker == 0.5
    assert "tune" not in raw and "runs" not in raw


def test_resources_the_cluster_cannot_provide_fail_fast(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    config = load_config(config_file(tmp_path, {**sweep_of(), "resources_per_trial": {"cpu": 1, "gpu": 0},
                                                "max_concurrent_trials": 1}))
    check_cluster(config.tune, config)   # 1 CPU + 0.01 fits once
    too_many = config.tune.model_copy(update={"max_concurrent_trials": 2})
    with pytest.raises(ValueError, match=r"max_concurrent_trials=2.*holds 1 trial.*max_concurrent_trials=1"):
        check_cluster(too_many, config)
    big = config.tune.model_copy(update={"resources_per_trial": config.tune.resources_per_trial.model_copy(update={"cpu": 2})})
    with pytest.raises(ValueError, match=r"needs 2 CPUs.*cluster has 2.*ray.num_cpus"):
        check_cluster(big, config)
    gpu = config.tune.model_copy(update={"resources_per_trial": config.tune.resources_per_trial.model_copy(update={"gpu": 1})})
    with pytest.raises(ValueError, match=r"gpu=1 but the cluster has 0 GPUs"):
        check_cluster(gpu, config)


def test_trials_are_ranked_best_first():
    def trial(name, value):
        return TrialOutcome(name, {}, "completed", 1, value, {})

    trials = [trial("a", 0.2), trial("b", None), trial("c", 0.5), trial("d", 0.1)]
    assert [t.trial_id for t in rank_trials(trials, "max")] == ["c", "a", "d", "b"]
    assert [t.trial_id for t in rank_trials(trials, "min")] == ["d", "a", "c", "b"]


def test_asha_stops_poor_trials_early_but_never_at_their_last_epoch(tmp_path):
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from pipelines.tune import asha

    config = load_config(config_file(tmp_path, {**sweep_of(), "scheduler": {"grace_period": 1, "reduction_factor": 2}}),
                         ["train.epochs=3"])
    scheduler = asha(config.tune, config.train.epochs)
    scheduler.set_search_properties("val_mAP", "max")
    good, poor, short = (SimpleNamespace(trial_id=n, config=c) for n, c in
                         (("good", {}), ("poor", {}), ("short", {"train.epochs": 1})))
    for trial in (good, poor, short):
        scheduler.on_trial_add(None, trial)

    def decide(trial, epoch, value):
        return scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_mAP": value})

    assert decide(good, 1, 0.5) == TrialScheduler.CONTINUE
    assert decide(poor, 1, 0.1) == TrialScheduler.STOP              # below the rung's cutoff: stopped early
    assert decide(short, 1, 0.0) == TrialScheduler.CONTINUE         # its last epoch: it ends by itself
    assert decide(good, 2, 0.6) == TrialScheduler.CONTINUE
    assert decide(good, 3, 0.7) == TrialScheduler.CONTINUE          # max_t: plain ASHA would stop it here


def test_tune_without_a_sweep_says_how_to_select_one():
    from rich.console import Console

    from pipelines.tune import run_tune

    with pytest.raises(ConfigError, match=r"tune=<name>.*triplet_margin"):
        run_tune(load_config(None), Console(quiet=True))


def test_a_sweep_refuses_mid_epoch_checkpoints_before_any_work(tmp_path):
    from rich.console import Console

    from pipelines.tune import run_tune

    config = load_config(None, [f"storage.root={tmp_path}", "tune=triplet_margin", "train.checkpoint_every_steps=50"])
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every_steps.*null"):
        run_tune(config, Console(quiet=True))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "datasets").exists()


TINY_SWEEP = {
    "name": "tiny", "metric": "val_mAP", "mode": "max", "num_samples": 3, "max_concurrent_trials": 3, "seed": 0,
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
    "overrides": {"loss": "triplet"},
    "space": {"loss.params.margin": {"type": "uniform", "low": 0.05, "high": 0.5},
              "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
}


@pytest.mark.slow
def test_tiny_asha_sweep_end_to_end(tiny_dataset, ray_session, tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from pipelines.cli import main
    from pipelines.context import tracking_uri
    from pipelines.tune import run_tune, summary_table

    root, manifest = tiny_dataset
    store = tmp_path / "store"
    overrides = [f"storage.root={store}", f"train.dataset={manifest}", "model.embedding_dim=32", "train.epochs=2",
                 "train.classes_per_batch=8", "train.images_per_class=4", "train.batches_per_epoch=2",
                 "tracking.experiment=tune-tests"]
    path = config_file(tmp_path, TINY_SWEEP)
    config = load_config(path, overrides)
    # P larger than the training classes fails before any trial starts.
    with pytest.raises(ValueError, match=r"P=64 exceeds the \d+ training classes"):
        run_tune(load_config(path, [*overrides, "train.classes_per_batch=64"]), Console(quiet=True))

    result = run_tune(config, Console(quiet=True))

    # Trials ran (ASHA may stop some after epoch 1); the summary is sorted by the metric.
    assert len(result.trials) == 3 and not result.skipped
    assert {t.status for t in result.trials} <= {"completed", "stopped early"}
    assert any(t.status == "completed" for t in result.trials)
    assert all(t.epochs == 2 for t in result.trials if t.status == "completed")
    values = [t.value for t in result.trials]
    assert values == sorted(values, reverse=True) and result.best_value == values[0]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert str(store) in result.folder_uri and (store / "tune" / "tiny").is_dir()
    assert any(p.name == "ray_tune" for p in (store / "tune" / "tiny").glob("*/*"))
    console = Console(file=io.StringIO(), width=120)
    console.print(summary_table(result))
    rows = [line for line in console.file.getvalue().splitlines() if "_000" in line]
    assert [row.split()[1] for row in rows] == [t.trial_id for t in result.trials]

    # Finished and stopped trials leave no workers behind: every CPU is free again.
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.5)
    assert ray_session.available_resources().get("CPU", 0) == ray_session.cluster_resources()["CPU"]

    # MLflow: one parent run, each trial a child run with its sampled params and per-epoch metrics.
    client = MlflowClient(tracking_uri(config))
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "tune"
    assert parent.data.metrics["best_val_mAP"] == pytest.approx(result.best_value)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3
    by_trial = {run.data.tags["trial_id"]: run for run in children}
    for trial in result.trials:
        run = by_trial[trial.trial_id]
        assert run.info.run_id == trial.run_id
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert float(run.data.params["loss.params.margin"]) == pytest.approx(trial.params["loss.params.margin"])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_mAP"))
        # A stopped trial may log an epoch more than Tune saw before its actor ended.
        assert steps[:trial.epochs] == list(range(1, trial.epochs + 1))
        assert run.info.status == ("FINISHED" if trial.status == "completed" else "KILLED")
        assert run.data.tags["tune.status"] == trial.status
        if trial.status == "completed":
            assert steps == [1, 2] and run.data.metrics["best_val_mAP"] == pytest.approx(trial.value)

    # The best config is a complete config for `chipmatch train`, with the best sampled values.
    best = load_config(result.best_config_uri)
    assert best.tune is None and best.loss.name == "triplet" and best.train.dataset == manifest
    assert best.loss.params["margin"] == pytest.approx(result.best_params["loss.params.margin"])
    assert best.train.lr == pytest.approx(result.best_params["train.lr"])
    assert best.model.embedding_dim == 32 and best.train.epochs == 2

    # The same sweep again does no work; the CLI prints the result as JSON on its last line.
    capsys.readouterr()
    assert main(["tune", "--config", path, "--json", *overrides]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["skipped"] is True and printed["trials"] == 3
    assert printed["best_config"] == result.best_config_uri and math.isclose(printed["best_metric"], result.best_value)


@pytest.mark.slow
def test_orphaned_worker_groups_are_freed_and_live_ones_kept(ray_session):
    """What ASHA leaves behind (workers dead because their controller died) is removed;
    a group whose controller lives on, even with its worker dead, is not."""
    import ray
    from ray.util.placement_group import placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from pipelines.ray_compat import reap_orphaned_worker_groups

    @ray.remote(num_cpus=1)
    class RayTrainWorker:   # the class name is what the reaper looks for
        def ping(self):
            return True

    @ray.remote(num_cpus=0)
    class Controller:
        def start(self):
            from ray.util.placement_group import placement_group

            self.group = placement_group([{"CPU": 1}])
            ray.get(self.group.ready())
            self.worker = RayTrainWorker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.group)).remote()
            ray.get(self.worker.ping.remote())
            return self.group.id.hex()

        def kill_worker(self):
            ray.kill(self.worker)

    stopped, restarting, running = Controller.remote(), Controller.remote(), Controller.remote()
    groups = ray.get([c.start.remote() for c in (stopped, restarting, running)])
    ray.kill(stopped)                              # what ending a trial's actor does to its controller
    ray.get(restarting.kill_worker.remote())       # a worker failure the live controller handles itself
    deadline = time.time() + 20
    freed: list[str] = []
    while groups[0] not in freed and time.time() < deadline:
        freed += reap_orphaned_worker_groups()
        time.sleep(0.5)
    assert freed == [groups[0]]
    states = {g: placement_group_table()[g]["state"] for g in groups}
    assert states == {groups[0]: "REMOVED", groups[1]: "CREATED", groups[2]: "CREATED"}
    for controller in (restarting, running):
        ray.kill(controller)
