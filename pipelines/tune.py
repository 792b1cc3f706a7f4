"""The tune stage: a Ray Tune sweep over model / loss / train keys of a config.

`tune: <name>` (or `tune=<name>` on the command line) selects `conf/tune/<name>.yaml`: the metric
and mode, how many trials and how many at once, the ASHA scheduler, the resources of one trial,
fixed `overrides` (e.g. `loss: triplet`) and the `space` (dotted config keys → distributions).

Trial execution and metric forwarding (Ray Train V2 pattern). Train V2 rejects
`Tuner(TorchTrainer)`, so each trial is a function (`run_trial`) that builds the same
TorchTrainer around the same `train_loop_per_worker` as `chipmatch train` (through
`pipelines.train.plan_run / start_run / fit_run`), so a trial may use several DDP workers or a
GPU exactly like a training run. The per-epoch `ray.train.report` of the workers reaches Tune
through Ray's `TuneReportCallback` (a `ray.train.UserCallback` that runs in the Train
controller and puts rank 0's metrics on the trial's result queue): ASHA sees `val_mAP` after
every epoch and stops a trial by ending its actor, which takes the trainer it owns with it.
The training loop itself stays unaware of Tune (`ray.train.report` raises in a Tune session,
so calling the loop in-trial would need a second reporting path). The trial function
reserves only `TRIAL_DRIVER_CPU`; its workers reserve `resources_per_trial`.

Two details of stopping: ASHA never stops a trial on its own last epoch (`_asha`), so a
finished trial closes its MLflow run and logs its model itself; and the placement group of a
stopped trial's workers, which outlives its dead controller, is removed by the driver
(`reap_orphaned_worker_groups`) when Ray Train's own cleaner cannot do it.

MLflow: the driver creates the tracking store, the experiment and a parent run before any
trial starts (two processes creating an sqlite store at once can fail); each trial creates a
child run (`mlflow.parentRunId`) that rank 0 fills with per-epoch metrics as in training.

Outputs under `<storage.root>/tune/<sweep>/<key>/` (the key hashes the sweep and the trial base
config, so the same sweep on the same data is done once): `best.yaml` (a complete config for
`chipmatch train --config`), `result.json` (all trials), `ray_tune/` (Tune's experiment),
`trials/<trial_id>/model` and `trials/<trial_id>/ray_train/` (each trial's model and Train run).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from components import constants as C
from components.storage import Store, sha256_json
from pipelines.config import CONF_DIR, Config, ConfigError, SweepConfig, apply_value, validate

logger = logging.getLogger(__name__)

SWEEPS_DIR = "tune"
BEST_FILE = "best.yaml"
RESULT_FILE = "result.json"
TRIAL_DRIVER_CPU = 0.01       # the trial function only waits on its trainer (0 is rejected by Tune)
TIME_ATTR = "epoch"           # ASHA's clock: the epoch the loop reports (robust to worker restarts)
REAP_WINDOW_S, REAP_INTERVAL_S = 30.0, 2.0   # look for a stopped trial's worker group this long, this often
NOT_TUNABLE = {"train": {"dataset"}}   # a sweep runs on one dataset version


# --- the config side: also called while a config with a `tune` section is validated ------------

def available_sweeps() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "tune").glob("*.yaml"))


def base_raw(config: Config) -> dict[str, Any]:
    """What every trial starts from: the config without `tune` and `runs`, plus the sweep's overrides."""
    raw = config.model_dump(mode="json", exclude={"tune", "runs"})
    for key, value in (config.tune.overrides if config.tune else {}).items():
        apply_value(raw, key, copy.deepcopy(value), f"tune.overrides.{key}")
    return raw


def trial_raw(base: dict[str, Any], sweep: SweepConfig, sampled: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """One trial's raw config (sampled values applied, resources per worker set) and its GPUs per worker."""
    raw = copy.deepcopy(base)
    for key, value in sampled.items():
        apply_value(raw, key, value, f"tune.space.{key}")
    train = raw.setdefault("train", {})
    workers = int(train.get("num_workers") or 1)
    resources = sweep.resources_per_trial
    if resources.cpu is not None:
        train["cpus_per_worker"] = resources.cpu / workers
    gpus_per_worker = None
    if resources.gpu is not None:
        train["use_gpu"] = resources.gpu > 0
        gpus_per_worker = resources.gpu / workers if resources.gpu > 0 else None
    if train.get("threads_per_worker") is None:
        # Concurrent trials share the cores: one torch thread per reserved CPU, not one per core.
        train["threads_per_worker"] = max(1, int(train.get("cpus_per_worker") or 1))
    return raw, gpus_per_worker


def check_sweep(config: Config) -> None:
    """Every space key is a config key a trial can change, and every candidate value (bounds,
    listed values) gives a valid config. Raises ValueError naming the key and the valid ones."""
    sweep = config.tune
    if sweep is None:
        return
    try:
        base = validate(base_raw(config))
    except ConfigError as exc:
        reason = str(exc).removeprefix("invalid config:").strip()
        raise ValueError(f"tune.overrides of sweep {sweep.name!r} make an invalid config: {reason}") from None
    for key, domain in sweep.space.items():
        problem = _unknown_key(base, key)
        if problem:
            raise ValueError(f"tune.space: {problem}")
        for value in domain.candidates():
            raw = base_raw(config)
            apply_value(raw, key, value, f"tune.space.{key}")
            try:
                validate(raw)
            except ConfigError as exc:
                reason = str(exc).removeprefix("invalid config:").strip()
                raise ValueError(f"tune.space.{key}: the value {value!r} gives an invalid config: {reason}") from None
    max_t = sweep.scheduler.max_t or max_epochs(sweep, base.train.epochs)
    if sweep.scheduler.type == "asha" and sweep.scheduler.grace_period > max_t:
        raise ValueError(f"tune.scheduler.grace_period={sweep.scheduler.grace_period} exceeds max_t={max_t} epochs "
                         "(max_t defaults to train.epochs): lower grace_period or raise train.epochs")


def max_epochs(sweep: SweepConfig, epochs: int) -> int:
    """The most epochs a trial can train: train.epochs, or the largest sampled value."""
    domain = sweep.space.get("train.epochs")
    return int(max(domain.candidates())) if domain else epochs


def _unknown_key(base: Config, key: str) -> str | None:
    from components.losses import SHAPE_PARAMS, loss_params

    section, _, rest = key.partition(".")
    if section == "loss" and rest.startswith("params."):
        name = rest.removeprefix("params.")
        accepted = sorted(set(loss_params(base.loss.name)) - set(SHAPE_PARAMS))
        if name not in accepted:
            return (f"{key!r}: loss {base.loss.name!r} has no parameter {name!r}; its parameters: {accepted} "
                    "(set the loss in the sweep's overrides, e.g. `loss: triplet`)")
        return None
    model = type(getattr(base, section))
    valid = sorted(set(model.model_fields) - NOT_TUNABLE.get(section, set()))
    if section == "loss":
        valid = [k for k in valid if k != "params"] + ["params.<name>"]
    if rest not in valid:
        return f"{key!r} is not a config key a trial can set; valid keys under {section}: {valid}"
    return None


# --- the driver ---------------------------------------------------------------------------------

@dataclass
class TrialOutcome:
    trial_id: str
    params: dict[str, Any]          # the sampled values
    status: str                     # completed | stopped early | error
    epochs: int                     # epochs trained
    value: float | None             # the sweep's metric: its best over the trial's epochs
    metrics: dict[str, float]       # the last report
    run_id: str | None = None       # the trial's MLflow child run
    error: str | None = None


@dataclass
class SweepResult:
    sweep: str
    metric: str
    mode: str
    best_config_uri: str
    best_value: float
    best_trial: str
    best_params: dict[str, Any]
    parent_run_id: str
    folder_uri: str
    trials: list[TrialOutcome] = field(default_factory=list)   # best first
    skipped: bool = False


def run_tune(config: Config, console: Console, dataset_uri: str | None = None) -> SweepResult:
    from pipelines.ray_session import ensure_ray
    from pipelines.train import resolve_dataset

    if config.tune is None:
        raise ConfigError(f"no sweep selected: set tune=<name> (choices: {available_sweeps()}) "
                          "or add a `tune:` section to the config")
    sweep = config.tune
    base = base_raw(config)
    dataset_uri = dataset_uri or resolve_dataset(validate(base))
    apply_value(base, "train.dataset", dataset_uri)
    base_config = validate(base)
    check_data(sweep, base_config, dataset_uri)
    key = sha256_json({"sweep": sweep.model_dump(mode="json"),
                       "base": {s: base[s] for s in ("model", "loss", "train")}})[:12]
    store = Store(config.storage.root)
    folder = f"{SWEEPS_DIR}/{sweep.name}/{key}"
    if store.exists(f"{folder}/{RESULT_FILE}"):
        console.log(f"[tune] {sweep.name}: already swept ({store.uri_of(folder)}), skipping")
        return _load_result(store.read_json(f"{folder}/{RESULT_FILE}"))

    ensure_ray(config.ray)
    check_cluster(sweep, base_config)
    tracking, experiment_id, parent = _start_parent_run(config, sweep, base_config, dataset_uri, key, store)
    context = {"base": base, "sweep": sweep.model_dump(mode="json"), "dataset_uri": dataset_uri,
               "tracking_uri": tracking, "experiment_id": experiment_id, "parent_run_id": parent.run_id,
               "storage_root": config.storage.root, "folder": folder}
    console.log(f"[tune] {sweep.name}: {sweep.num_samples} samples, ≤{sweep.max_concurrent_trials} at once, "
                f"{sweep.scheduler.type} on {sweep.metric} ({sweep.mode}), outputs in {store.uri_of(folder)}")
    try:
        with contextlib.redirect_stdout(sys.stderr):   # Tune prints a banner; stdout is for --json
            grid = _tuner(sweep, base_config, context, store.uri_of(folder), console).fit()
        _free_stopped_trials()
        trials = _outcomes(grid, sweep, base_config)
        _close_child_runs(tracking, experiment_id, parent.run_id, trials)
        ranked = rank_trials(trials, sweep.mode)
        if not ranked or ranked[0].value is None:
            errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error)[:2000]
            raise RuntimeError(f"sweep {sweep.name}: no trial reported {sweep.metric}" + (f" ({errors})" if errors else ""))
        best = ranked[0]
        best_raw, _ = trial_raw(base, sweep, best.params)
        validate(best_raw)   # what `chipmatch train --config best.yaml` will load
        store.write_bytes(f"{folder}/{BEST_FILE}", _best_yaml(best_raw, sweep, best, parent.run_id).encode())
        result = SweepResult(sweep.name, sweep.metric, sweep.mode, store.uri_of(f"{folder}/{BEST_FILE}"), best.value,
                             best.trial_id, best.params, parent.run_id, store.uri_of(folder), ranked)
        parent.log_metrics({f"best_{sweep.metric}": best.value, "trials": len(trials),
                            "trials_stopped_early": sum(t.status == "stopped early" for t in trials),
                            "trials_failed": sum(t.status == "error" for t in trials)})
        parent.set_tags({"best_trial": best.trial_id, "best_run_id": best.run_id or "", "best_config": result.best_config_uri})
        parent.log_dict(best_raw, BEST_FILE)
        parent.log_dict({"trials": [asdict(t) for t in ranked]}, "trials.json")
    except BaseException:   # also Ctrl-C: the parent run never stays RUNNING
        parent.terminate("FAILED")
        raise
    parent.terminate("FINISHED")
    store.write_json(f"{folder}/{RESULT_FILE}", asdict(result))
    return result


def check_data(sweep: SweepConfig, base: Config, dataset_uri: str) -> None:
    """P (classes per batch) can never exceed the dataset's training classes."""
    from components.data.versions import open_version

    classes = len(open_version(dataset_uri).manifest.get("counts", {}).get(C.SPLIT_TRAIN, {})) or None
    domain = sweep.space.get("train.classes_per_batch")
    largest = max(domain.candidates()) if domain else base.train.classes_per_batch
    if classes and largest > classes:
        where = "tune.space.train.classes_per_batch" if domain else "train.classes_per_batch"
        raise ValueError(f"{where}: P={largest} exceeds the {classes} training classes of {dataset_uri}: "
                         f"keep P ≤ {classes}")


def check_cluster(sweep: SweepConfig, base: Config) -> None:
    """Fail fast when the cluster cannot hold one trial, or `max_concurrent_trials` of them."""
    import ray

    total = ray.cluster_resources()
    have_cpu, have_gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
    workers = base.train.num_workers
    cpu = sweep.resources_per_trial.cpu
    cpu = workers * base.train.cpus_per_worker if cpu is None else cpu
    gpu = sweep.resources_per_trial.gpu
    if gpu is None:
        gpu = workers if (base.train.use_gpu or (base.train.use_gpu is None and have_gpu > 0)) else 0
    need_cpu = cpu + TRIAL_DRIVER_CPU
    if need_cpu > have_cpu:
        raise ValueError(f"one trial needs {cpu:g} CPUs for its training workers + {TRIAL_DRIVER_CPU} for the trial "
                         f"itself, but the cluster has {have_cpu:g}: lower tune.resources_per_trial.cpu, or start Ray "
                         f"with more logical CPUs (ray.num_cpus={math.ceil(need_cpu) + 1}) or join a bigger cluster")
    if gpu > have_gpu:
        raise ValueError(f"tune.resources_per_trial.gpu={gpu:g} but the cluster has {have_gpu:g} GPUs: "
                         "set tune.resources_per_trial.gpu=0 to train on CPU, or join a cluster with GPUs")
    if gpu and gpu / workers > 1 and gpu % workers:
        raise ValueError(f"tune.resources_per_trial.gpu={gpu:g} over train.num_workers={workers} gives a fractional "
                         "GPU count above 1 per worker, which Ray cannot place: use a multiple of the workers")
    fits = int(have_cpu // need_cpu)
    if gpu:
        fits = min(fits, int(have_gpu // gpu))
    if sweep.max_concurrent_trials > fits:
        raise ValueError(f"tune.max_concurrent_trials={sweep.max_concurrent_trials}: the cluster ({have_cpu:g} CPUs, "
                         f"{have_gpu:g} GPUs) holds {fits} trial(s) of {cpu:g} CPUs + {gpu:g} GPUs at once; set "
                         f"tune.max_concurrent_trials={max(fits, 1)}, lower tune.resources_per_trial, or give Ray more "
                         "logical CPUs (ray.num_cpus)")


def _start_parent_run(config: Config, sweep: SweepConfig, base: Config, dataset_uri: str, key: str, store: Store):
    from components.tracking import RunLogger, create_run, ensure_experiment, prepare_store
    from pipelines.train import tracking_uri

    tracking = tracking_uri(config)
    prepare_store(tracking)   # once, here: trials then only open an existing store
    experiment_id = ensure_experiment(tracking, config.tracking.experiment, store.uri_of("mlartifacts"))
    tags = {"stage": "tune", "sweep": sweep.name, "sweep_key": key, "metric": sweep.metric, "mode": sweep.mode,
            "loss": base.loss.name, "dataset": dataset_uri}
    parent = RunLogger(tracking, create_run(tracking, experiment_id, f"tune-{sweep.name}", tags))
    parent.log_params({"tune": sweep.model_dump(mode="json"), "base": {"model": base.model.model_dump(),
                                                                          "loss": base.loss.model_dump()}})
    return tracking, experiment_id, parent


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, domain in sweep.space.items():
        if domain.type == "uniform":
            space[key] = tune.uniform(domain.low, domain.high)
        elif domain.type == "loguniform":
            space[key] = tune.loguniform(domain.low, domain.high)
        elif domain.type == "randint":
            space[key] = tune.randint(int(domain.low), int(domain.high) + 1)   # Tune's upper bound is exclusive
        elif domain.type == "choice":
            space[key] = tune.choice(domain.values)
        else:
            space[key] = tune.grid_search(domain.values)
    return space


def _tuner(sweep: SweepConfig, base: Config, context: dict, folder_uri: str, console: Console):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.train import _absolute

    if sweep.scheduler.type == "asha":
        scheduler = _asha(sweep, base.train.epochs)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": TRIAL_DRIVER_CPU})
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(max_concurrent=sweep.max_concurrent_trials, random_state=sweep.seed)),
        run_config=tune.RunConfig(name="ray_tune", storage_path=_absolute(folder_uri), verbose=0,
                                  callbacks=[_progress_callback(console, sweep.metric)],
                                  failure_config=tune.FailureConfig(max_failures=0)),   # Train retries workers itself
    )


def _asha(sweep: SweepConfig, epochs: int):
    """ASHA on `epoch` that never stops a trial at its own last epoch.

    Tune stops a trial by ending its actor. A STOP on the last report (plain ASHA stops every
    trial at max_t) would end it while `fit_run` still closes its MLflow run and rank 0 logs the
    model, so such a decision becomes CONTINUE: the trial then ends by itself. Stops at
    earlier rungs are real early stops.
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class EndAwareASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            last_epoch = int(trial.config.get("train.epochs", epochs))
            if action == TrialScheduler.STOP and result.get(TIME_ATTR, 0) >= last_epoch:
                return TrialScheduler.CONTINUE
            return action

    return EndAwareASHA(time_attr=TIME_ATTR, max_t=sweep.scheduler.max_t or max_epochs(sweep, epochs),
                        grace_period=sweep.scheduler.grace_period, reduction_factor=sweep.scheduler.reduction_factor)


def run_trial(sampled: dict[str, Any], context: dict[str, Any]) -> None:
    """One Tune trial (runs in the trial's actor): train the sampled config exactly as
    `chipmatch train` would, with Train's reports forwarded to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train import fit_run, plan_run, start_run

    sweep = SweepConfig(**context["sweep"])
    trial_id = ray.tune.get_context().get_trial_id()
    raw, gpus_per_worker = trial_raw(context["base"], sweep, sampled)
    config = validate(raw)
    planned = plan_run(config, f"{sweep.name}-{trial_id}", config.loss, config.train, context["dataset_uri"])
    tags = {"stage": "tune-trial", "sweep": sweep.name, "trial_id": trial_id,
            **{f"sampled.{k}": v for k, v in sampled.items()}}
    logger = start_run(planned, context["tracking_uri"], context["experiment_id"], context["parent_run_id"], tags)
    store = Store(context["storage_root"])
    folder = f"{context['folder']}/trials/{trial_id}"
    fit_run(planned, logger, store.uri_of(f"{folder}/model"), store.uri_of(f"{folder}/ray_train"), trial_id,
            callbacks=[TuneReportCallback()], gpus_per_worker=gpus_per_worker)


def _progress_callback(console: Console, metric: str):
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial epoch and per ended trial (Tune's own reporter is off); after a
        trial ends, frees the worker group of a trainer it left behind (see reap_orphaned_worker_groups)."""

        def __init__(self, console: Console | None, metric: str):
            self.console, self.metric = console, metric
            self.reap_until, self.last_reap = 0.0, 0.0

        def __getstate__(self):   # Tune pickles its run config; a console does not pickle
            return {"console": None, "metric": self.metric, "reap_until": 0.0, "last_reap": 0.0}

        def log(self, text: str) -> None:
            if self.console:
                self.console.log(text)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.log(f"[tune] {trial.trial_id} epoch {result.get(TIME_ATTR)}: {self.metric}="
                     f"{_fmt(result.get(self.metric))} train_loss={_fmt(result.get('train_loss'))}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.log(f"[tune] {trial.trial_id} ended")
            self.reap_until = time.monotonic() + REAP_WINDOW_S

        def on_trial_error(self, iteration, trials, trial, **info):
            self.log(f"[tune] [red]{trial.trial_id} failed[/]")
            self.reap_until = time.monotonic() + REAP_WINDOW_S

        def on_step_end(self, iteration, trials, **info):
            now = time.monotonic()
            if now < self.reap_until and now - self.last_reap >= REAP_INTERVAL_S:
                self.last_reap = now
                for group in reap_orphaned_worker_groups():
                    self.log(f"[tune] freed the worker group {group[:12]} of a stopped trial")

    return Progress(console, metric)


def reap_orphaned_worker_groups() -> list[str]:
    """Remove placement groups of Train worker groups whose controller died; returns their ids.

    ASHA stops a trial by ending its actor, which takes the trial's Train controller and
    workers with it, but not the workers' placement group: that lives as long as the job,
    and Ray Train's own detached PlacementGroupCleaner, which should remove it, finds the
    cluster by auto-detection and gives up when several Ray instances run on one host. Left
    alone, every stopped trial would keep its CPUs/GPUs for the rest of the sweep. A group is
    removed only when it belongs to this job, is still CREATED and holds no live actor, and a
    RayTrainWorker in it died because its owner (the controller) died: a dead controller can
    never use it again, and a live one restarting its workers is never touched.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors, list_placement_groups

    context = ray.get_runtime_context()
    try:
        actors = list_actors(address=context.gcs_address, filters=[("job_id", "=", context.get_job_id())],
                             detail=True, limit=10_000, raise_on_missing_output=False)
        created = {g.placement_group_id for g in list_placement_groups(
            address=context.gcs_address, filters=[("state", "=", "CREATED")], limit=10_000,
            raise_on_missing_output=False)}
    except Exception as exc:  # noqa: BLE001 - no dashboard / state API: Ray's cleaner is the only one then
        logger.warning("cannot list actors to free stopped trials' worker groups: %s", exc)
        return []
    live_groups = {a.placement_group_id for a in actors if a.state != "DEAD"}
    orphaned = {a.placement_group_id for a in actors
                if a.class_name.rsplit(".", 1)[-1] == "RayTrainWorker" and a.state == "DEAD" and a.placement_group_id in created
                and a.placement_group_id not in live_groups and _owner_died(a.death_cause)}
    removed = []
    for group in sorted(orphaned):
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group))))
            removed.append(group)
        except Exception:  # noqa: BLE001 - removed meanwhile (by Ray's cleaner)
            pass
    return removed


def _owner_died(death_cause: dict | None) -> bool:
    context = (death_cause or {}).get("actor_died_error_context") or {}
    return context.get("reason") == "OWNER_DIED" or "owner has died" in str(context.get("error_message", ""))


def _outcomes(grid, sweep: SweepConfig, base: Config) -> list[TrialOutcome]:
    trials = []
    for result in grid:
        history = result.metrics_dataframe
        last = {k: v for k, v in (result.metrics or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trial_id = (result.metrics or {}).get("trial_id") or (result.path or "?").rstrip("/").rsplit("/", 1)[-1]
        params = {k: result.config[k] for k in sweep.space if k in result.config}
        values = [] if history is None or sweep.metric not in history else \
            [float(v) for v in history[sweep.metric] if v is not None and not math.isnan(float(v))]
        value = (max(values) if sweep.mode == "max" else min(values)) if values else None
        epochs = int(last.get(TIME_ATTR, 0))
        planned_epochs = int(params.get("train.epochs", base.train.epochs))
        status = "error" if result.error else ("completed" if epochs >= planned_epochs else "stopped early")
        trials.append(TrialOutcome(trial_id, params, status, epochs, value, last,
                                   error=str(result.error).splitlines()[0][:300] if result.error else None))
    return trials


def _free_stopped_trials(wait_s: float = 10.0) -> None:
    """After the sweep: the last stopped trials' worker groups may outlive it by a moment."""
    deadline = time.monotonic() + wait_s
    while True:
        reap_orphaned_worker_groups()
        if time.monotonic() >= deadline or not _dead_trainers_pending():
            return
        time.sleep(1.0)


def _dead_trainers_pending() -> bool:
    """Whether a Train worker of this job is still alive (a trial's trainer being torn down)."""
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    try:
        return bool(list_actors(address=context.gcs_address, limit=10_000, raise_on_missing_output=False,
                                filters=[("job_id", "=", context.get_job_id()), ("class_name", "=", "RayTrainWorker"),
                                         ("state", "!=", "DEAD")]))
    except Exception:  # noqa: BLE001
        return False


def _close_child_runs(tracking: str, experiment_id: str, parent_run_id: str, trials: list[TrialOutcome]) -> None:
    """Link trials to their child runs; end the runs of trials that ASHA stopped (KILLED) or that failed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=10000)
    by_trial = {run.data.tags.get("trial_id"): run for run in runs}
    for trial in trials:
        run = by_trial.get(trial.trial_id)
        if run is None:
            continue
        trial.run_id = run.info.run_id
        client.set_tag(run.info.run_id, "tune.status", trial.status)
        # A stopped trial's actor ends mid-epoch; its trainer may have marked the run FAILED first.
        if trial.status == "stopped early" and run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, "KILLED")
        elif run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED" if trial.status == "error" else "KILLED")


def rank_trials(trials: list[TrialOutcome], mode: str) -> list[TrialOutcome]:
    """Best first; trials without a value last."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (t.value is None, sign * (t.value if t.value is not None else 0.0), t.trial_id))


def _best_yaml(best_raw: dict[str, Any], sweep: SweepConfig, best: TrialOutcome, parent_run_id: str) -> str:
    header = (f"# Best trial of sweep {sweep.name!r}: {best.trial_id}, {sweep.metric}={best.value:.6g} ({sweep.mode}).\n"
              f"# Sampled: {best.params}. MLflow parent run {parent_run_id}.\n"
              "# A complete config: chipmatch train --config <this file>\n")
    return header + yaml.safe_dump(best_raw, sort_keys=False)


def _load_result(data: dict[str, Any]) -> SweepResult:
    trials = [TrialOutcome(**t) for t in data.pop("trials")]
    return SweepResult(**{**data, "trials": trials, "skipped": True})


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def summary_table(result: SweepResult) -> Table:
    """Trials best first (the best in bold); parameter columns carry the last part of their key."""
    table = Table(title=f"tune {result.sweep}: trials by {result.metric} ({result.mode})"
                        + (" — done before, not rerun" if result.skipped else ""))
    keys = list(result.trials[0].params) if result.trials else []
    short = [k.rsplit(".", 1)[-1] for k in keys]
    headers = short if len(set(short)) == len(short) else keys
    table.add_column("trial", no_wrap=True)
    for header in headers:
        table.add_column(header, justify="right")
    for header in ("epochs", f"best {result.metric}", f"val {C.recall_at(1)}"):
        table.add_column(header, justify="right")
    table.add_column("status", overflow="fold")
    for rank, trial in enumerate(result.trials):
        table.add_row(trial.trial_id, *(_param(trial.params.get(k)) for k in keys), str(trial.epochs),
                      _fmt(trial.value), _fmt(trial.metrics.get(f"val_{C.recall_at(1)}")),
                      trial.status + (f": {trial.error}" if trial.error else ""),
                      style="bold green" if rank == 0 and trial.value is not None else None)
    return table


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def result_json(result: SweepResult) -> dict[str, Any]:
    return {"stage": "tune", "sweep": result.sweep, "best_config": result.best_config_uri, "metric": result.metric,
            "mode": result.mode, "best_metric": result.best_value, "best_trial": result.best_trial,
            "best_params": result.best_params, "trials": len(result.trials), "mlflow_parent_run_id": result.parent_run_id,
            "output": result.folder_uri, "skipped": result.skipped}
