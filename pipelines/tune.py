"""The tune stage: a Ray Tune sweep over model / loss / train keys of a config.

`tune: <name>` (or `tune=<name>` on the command line) selects `conf/tune/<name>.yaml`; its
schema and the trial configs it makes are `pipelines.sweep`. Each trial is a function
(`run_trial`, Ray Train V2 rejects `Tuner(TorchTrainer)`) that trains the sampled config
exactly as `chipmatch train` does (`pipelines.runs` + `pipelines.trainer`), so a trial may use
several DDP workers or a GPU. Train's per-epoch reports reach Tune through a Train callback,
so ASHA sees `val_mAP` after every epoch and stops a trial by ending its actor. What this
leans on in Ray 2.60 (the ASHA that spares a trial's last epoch, freeing a stopped trial's
worker group) is `pipelines.ray_compat`; the MLflow parent run and its child runs are
`components.tracking.parent_runs`.

Outputs under `tune/<sweep>/<key>/` (the key hashes the sweep and the trial base config, so
the same sweep on the same data is done once): `best.yaml` (a complete config for
`chipmatch train --config`), `result.json` (all trials), `ray_tune/` (Tune's experiment),
`trials/<trial_id>/model` and `trials/<trial_id>/ray_train/` (each trial's model and Train run).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from components import constants as C
from components.data.versions import open_version
from components.errors import ConfigError, ResourceError
from components.storage import Store, SweepPaths, reuse_when_complete, sha256_json
from components.tracking import close_child_runs, start_parent_run
from components.tracking.parent_runs import COMPLETED, ERROR, STOPPED_EARLY
from pipelines import ray_compat
from pipelines.config import Config, validate
from pipelines.context import StageContext, stage_context
from pipelines.raw_config import apply_value
from pipelines.runs import plan_run, without_later_defaults
from pipelines.sweep import SweepConfig, available_sweeps, base_raw, max_epochs, trial_raw
from pipelines.trainer import absolute, check_loss_builds, fit_batches, fit_run, start_run

TIME_ATTR = "epoch"           # ASHA's clock: the epoch the loop reports (robust to worker restarts)
TRIAL_KEY_TAG, TRIAL_STATUS_TAG = "trial_id", "tune.status"


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


def run_tune(config: Config, context: StageContext | Console | None = None) -> SweepResult:
    if config.tune is None:
        raise ConfigError(f"no sweep selected: set tune=<name> (choices: {available_sweeps()}) "
                          "or add a `tune:` section to the config")
    context = stage_context(config, context)
    sweep, store, console = config.tune, context.store, context.console
    if config.train.checkpoint_every_steps is not None or "train.checkpoint_every_steps" in sweep.space:
        # Tune requires the sweep's metric in every result; a mid-epoch checkpoint's report has none.
        raise ConfigError("train.checkpoint_every_steps cannot be used by a sweep (Ray Tune needs the metric in every "
                          "report; mid-epoch reports carry none): set train.checkpoint_every_steps=null for `chipmatch tune`")
    base = base_raw(config)
    apply_value(base, "train.dataset", context.dataset)
    base_config = validate(base)
    check_data(sweep, base_config, context.dataset)
    check_trials(sweep, base, base_config, context.dataset)
    key = sha256_json({"sweep": sweep.model_dump(mode="json"),
                       "base": {"model": base["model"], "loss": base["loss"],
                                "train": without_later_defaults(base["train"])}})[:12]
    paths = context.layout.sweep(sweep.name, key)
    done = reuse_when_complete(store, paths.result)
    if done is not None:
        console.log(f"[tune] {sweep.name}: already swept ({store.uri_of(paths.folder)}), skipping")
        return _load_result(done)

    context.ensure_ray(config.ray)
    check_cluster(sweep, base_config)
    parent = start_parent_run(
        context.tracking_uri, context.experiment_id, f"tune-{sweep.name}",
        tags={"stage": "tune", "sweep": sweep.name, "sweep_key": key, "metric": sweep.metric, "mode": sweep.mode,
              "loss": base_config.loss.name, "dataset": context.dataset},
        params={"tune": sweep.model_dump(mode="json"),
                "base": {"model": base_config.model.model_dump(), "loss": base_config.loss.model_dump()}})
    trial_context = {"base": base, "sweep": sweep.model_dump(mode="json"), "dataset_uri": context.dataset,
                     "tracking_uri": context.tracking_uri, "experiment_id": context.experiment_id,
                     "parent_run_id": parent.run_id, "storage_root": store.uri, "sweep_paths": asdict(paths)}
    console.log(f"[tune] {sweep.name}: {sweep.num_samples} samples, ≤{sweep.max_concurrent_trials} at once, "
                f"{sweep.scheduler.type} on {sweep.metric} ({sweep.mode}), outputs in {store.uri_of(paths.folder)}")
    try:
        with contextlib.redirect_stdout(sys.stderr):   # Tune prints a banner; stdout is for --json
            grid = _tuner(sweep, base_config, trial_context, store.uri_of(paths.ray_tune), console).fit()
        ray_compat.free_stopped_trials()
        trials = _outcomes(grid, sweep, base_config)
        linked = close_child_runs(context.tracking_uri, context.experiment_id, parent.run_id,
                                  {t.trial_id: t.status for t in trials}, TRIAL_KEY_TAG, TRIAL_STATUS_TAG)
        for trial in trials:
            trial.run_id = linked.get(trial.trial_id)
        ranked = rank_trials(trials, sweep.mode)
        if not ranked or ranked[0].value is None:
            errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error)[:2000]
            raise RuntimeError(f"sweep {sweep.name}: no trial reported {sweep.metric}" + (f" ({errors})" if errors else ""))
        best = ranked[0]
        assert best.value is not None   # ranked puts trials without a value last
        best_raw, _ = trial_raw(base, sweep, best.params)
        validate(best_raw)   # what `chipmatch train --config best.yaml` will load
        store.write_bytes(paths.best_config, _best_yaml(best_raw, sweep, best, parent.run_id).encode())
        result = SweepResult(sweep.name, sweep.metric, sweep.mode, store.uri_of(paths.best_config), best.value,
                             best.trial_id, best.params, parent.run_id, store.uri_of(paths.folder), ranked)
        parent.log_metrics({f"best_{sweep.metric}": best.value, "trials": len(trials),
                            "trials_stopped_early": sum(t.status == STOPPED_EARLY for t in trials),
                            "trials_failed": sum(t.status == ERROR for t in trials)})
        parent.set_tags({"best_trial": best.trial_id, "best_run_id": best.run_id or "", "best_config": result.best_config_uri})
        parent.log_dict(best_raw, paths.best_config.rsplit("/", 1)[-1])
        parent.log_dict({"trials": [asdict(t) for t in ranked]}, "trials.json")
    except BaseException:   # also Ctrl-C: the parent run never stays RUNNING
        parent.terminate("FAILED")
        raise
    parent.terminate("FINISHED")
    store.write_json(paths.result, asdict(result))
    return result


def check_data(sweep: SweepConfig, base: Config, dataset_uri: str) -> None:
    """P (classes per batch) can never exceed the dataset's training classes."""
    classes = len(open_version(dataset_uri).manifest.get("counts", {}).get(C.SPLIT_TRAIN, {})) or None
    domain = sweep.space.get("train.classes_per_batch")
    largest = max(domain.candidates()) if domain else base.train.classes_per_batch
    if classes and largest > classes:
        where = "tune.space.train.classes_per_batch" if domain else "train.classes_per_batch"
        raise ConfigError(f"{where}: P={largest} exceeds the {classes} training classes of {dataset_uri}: "
                          f"keep P ≤ {classes}")


def check_trials(sweep: SweepConfig, base: dict[str, Any], base_config: Config, dataset_uri: str) -> None:
    """On the driver, before any trial: the base P×K fits the data, and the trials' loss builds
    with every candidate of its sampled parameters (reading the config checked names only)."""
    fit_batches(plan_run(base_config, "trial", base_config.loss, base_config.train, dataset_uri))
    sampled = {k: d for k, d in sweep.space.items() if k.startswith("loss.")}
    variants = [base_config] + [validate(trial_raw(base, sweep, {k: v})[0]) for k, d in sampled.items() for v in d.candidates()]
    for variant in variants:
        check_loss_builds(variant, plan_run(variant, "trial", variant.loss, variant.train, dataset_uri))


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
    need_cpu = cpu + ray_compat.TRIAL_DRIVER_CPU
    if need_cpu > have_cpu:
        raise ResourceError(f"one trial needs {cpu:g} CPUs for its training workers + {ray_compat.TRIAL_DRIVER_CPU} for the "
                            f"trial itself, but the cluster has {have_cpu:g}: lower tune.resources_per_trial.cpu, or start "
                            f"Ray with more logical CPUs (ray.num_cpus={math.ceil(need_cpu) + 1}) or join a bigger cluster")
    if gpu > have_gpu:
        raise ResourceError(f"tune.resources_per_trial.gpu={gpu:g} but the cluster has {have_gpu:g} GPUs: "
                            "set tune.resources_per_trial.gpu=0 to train on CPU, or join a cluster with GPUs")
    if gpu and gpu / workers > 1 and gpu % workers:
        raise ConfigError(f"tune.resources_per_trial.gpu={gpu:g} over train.num_workers={workers} gives a fractional "
                          "GPU count above 1 per worker, which Ray cannot place: use a multiple of the workers")
    fits = int(have_cpu // need_cpu)
    if gpu:
        fits = min(fits, int(have_gpu // gpu))
    if sweep.max_concurrent_trials > fits:
        raise ResourceError(f"tune.max_concurrent_trials={sweep.max_concurrent_trials}: the cluster ({have_cpu:g} CPUs, "
                            f"{have_gpu:g} GPUs) holds {fits} trial(s) of {cpu:g} CPUs + {gpu:g} GPUs at once; set "
                            f"tune.max_concurrent_trials={max(fits, 1)}, lower tune.resources_per_trial, or give Ray more "
                            "logical CPUs (ray.num_cpus)")


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, domain in sweep.space.items():
        low, high = domain.low, domain.high
        if domain.type == "uniform":
            space[key] = tune.uniform(low, high)
        elif domain.type == "loguniform":
            space[key] = tune.loguniform(low, high)
        elif domain.type == "randint":
            space[key] = tune.randint(int(low or 0), int(high or 0) + 1)   # Tune's upper bound is exclusive
        elif domain.type == "choice":
            space[key] = tune.choice(domain.values)
        else:
            space[key] = tune.grid_search(domain.values)
    return space


def asha(sweep: SweepConfig, epochs: int):
    """The sweep's ASHA scheduler on the epoch clock (see `ray_compat.end_aware_asha`)."""
    return ray_compat.end_aware_asha(TIME_ATTR, sweep.scheduler.max_t or max_epochs(sweep, epochs),
                                     sweep.scheduler.grace_period, sweep.scheduler.reduction_factor, epochs)


def _tuner(sweep: SweepConfig, base: Config, trial_context: dict, folder_uri: str, console: Console):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    scheduler = asha(sweep, base.train.epochs) if sweep.scheduler.type == "asha" else FIFOScheduler()
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=trial_context),
                                    {"cpu": ray_compat.TRIAL_DRIVER_CPU})
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples, scheduler=scheduler,
            search_alg=BasicVariantGenerator(max_concurrent=sweep.max_concurrent_trials, random_state=sweep.seed)),
        run_config=tune.RunConfig(name="ray_tune", storage_path=absolute(folder_uri), verbose=0,
                                  callbacks=[_progress_callback(console, sweep.metric)],
                                  failure_config=tune.FailureConfig(max_failures=0)),   # Train retries workers itself
    )


def run_trial(sampled: dict[str, Any], context: dict[str, Any]) -> None:
    """One Tune trial (runs in the trial's actor): train the sampled config exactly as
    `chipmatch train` would, with Train's reports forwarded to Tune."""
    import ray.tune

    sweep = SweepConfig(**context["sweep"])
    paths = SweepPaths(**context["sweep_paths"])
    trial_id = ray.tune.get_context().get_trial_id()
    raw, gpus_per_worker = trial_raw(context["base"], sweep, sampled)
    config = validate(raw)
    planned = plan_run(config, f"{sweep.name}-{trial_id}", config.loss, config.train, context["dataset_uri"])
    tags = {"stage": "tune-trial", "sweep": sweep.name, TRIAL_KEY_TAG: trial_id,
            **{f"sampled.{k}": v for k, v in sampled.items()}}
    logger = start_run(planned, context["tracking_uri"], context["experiment_id"], context["parent_run_id"], tags)
    store = Store(context["storage_root"])
    fit_run(planned, logger, store.uri_of(paths.trial_model(trial_id)), store.uri_of(paths.trial_ray_train(trial_id)),
            trial_id, callbacks=[ray_compat.train_report_to_tune_callback()], gpus_per_worker=gpus_per_worker)


def _progress_callback(console: Console, metric: str):
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial epoch and per ended trial (Tune's own reporter is off); after a
        trial ends, frees the worker group of a trainer it left behind (ray_compat)."""

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
            self.reap_until = time.monotonic() + ray_compat.REAP_WINDOW_S

        def on_trial_error(self, iteration, trials, trial, **info):
            self.log(f"[tune] [red]{trial.trial_id} failed[/]")
            self.reap_until = time.monotonic() + ray_compat.REAP_WINDOW_S

        def on_step_end(self, iteration, trials, **info):
            now = time.monotonic()
            if now < self.reap_until and now - self.last_reap >= ray_compat.REAP_INTERVAL_S:
                self.last_reap = now
                for group in ray_compat.reap_orphaned_worker_groups():
                    self.log(f"[tune] freed the worker group {group[:12]} of a stopped trial")

    return Progress(console, metric)


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
        status = ERROR if result.error else (COMPLETED if epochs >= planned_epochs else STOPPED_EARLY)
        trials.append(TrialOutcome(trial_id, params, status, epochs, value, last,
                                   error=str(result.error).splitlines()[0][:300] if result.error else None))
    return trials


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
