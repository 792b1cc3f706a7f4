"""Workarounds for the Ray version chipmatch targets: Ray 2.60 (Train V2, Tune on a function).

Everything here leans on Ray behaviour that is private or version-specific; when Ray is
upgraded, this is the one module to re-check.

- Train V2 rejects `Tuner(TorchTrainer)`: a trial is a function that builds the trainer and
  needs a small CPU reservation of its own (`TRIAL_DRIVER_CPU`; Tune rejects 0).
- ASHA stops a trial by ending its actor; plain ASHA also stops every trial at max_t, which
  would end a finished trial while it still writes its model (`end_aware_asha`).
- A stopped trial's worker placement group outlives its dead controller when Ray Train's
  detached cleaner cannot find the cluster (`reap_orphaned_worker_groups`).
- The driver prints every worker's stdout/stderr (Train's per-report INFO dict dumps, core
  worker C++ warnings such as the PreemptionWatcher error) through a private dispatcher
  (`send_worker_output_to`), and Ray Data logs its progress through a console handler that
  it installs on import (`configure_ray_data_logging`).
- `serve.start` on a cluster whose Serve already runs keeps that instance's HTTP options and
  ignores the ones passed; where it listens is read from Serve's controller actor
  (`serve_http_address`).
"""

from __future__ import annotations

import logging
import time
from typing import IO, Any

logger = logging.getLogger(__name__)

TARGET_RAY_VERSION = "2.60"
TRIAL_DRIVER_CPU = 0.01       # the trial function only waits on its trainer (0 is rejected by Tune)
REAP_WINDOW_S, REAP_INTERVAL_S = 30.0, 2.0   # look for a stopped trial's worker group this long, this often

_RAY_PRINT_HANDLER = "ray_print_logs"         # the dispatcher handler ray.init adds with log_to_driver=True
_FILE_HANDLER = "chipmatch_log_file"


# --- where Ray's own output goes ---------------------------------------------------------------

def send_worker_output_to(path: str) -> None:
    """Write the workers' stdout/stderr, which the driver would print, to the file `path`.

    Ray forwards every worker's output to the driver through a private dispatcher whose
    printing handler `ray.init` registers; it is replaced by one that appends to the file.
    Call after `ray.init`; calling it again switches to another file."""
    from ray._private import worker as ray_worker

    handle: IO[str] = open(path, "a", buffering=1, encoding="utf-8")

    def write(data: dict[str, Any]) -> None:
        source = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({source + ' ' if source else ''}pid={data.get('pid')}, ip={data.get('ip')})"
        for line in data.get("lines", []):
            handle.write(f"{prefix} {line}\n")

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    dispatcher.remove_handler(_RAY_PRINT_HANDLER)
    dispatcher.remove_handler(_FILE_HANDLER)
    dispatcher.add_handler(_FILE_HANDLER, write)


def configure_ray_data_logging() -> None:
    """Ray Data installs its console log handler when `ray.data` is first imported: import it
    now, so that handler exists before the driver's loggers are sent to a file."""
    import ray.data  # noqa: F401 - imported for its side effect (the handler), see above


# --- Tune: schedulers and cleanup of stopped trials ---------------------------------------------

def end_aware_asha(time_attr: str, max_t: int, grace_period: int, reduction_factor: float, epochs: int):
    """ASHA on `time_attr` that never stops a trial at its own last epoch.

    Tune stops a trial by ending its actor. A STOP on the last report (plain ASHA stops every
    trial at max_t) would end it while the trial still closes its MLflow run and rank 0 logs
    the model, so such a decision becomes CONTINUE: the trial then ends by itself. Stops at
    earlier rungs are real early stops. A trial's own epoch count is its `train.epochs`
    sample, else `epochs`.
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class EndAwareASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            last_epoch = int(trial.config.get("train.epochs", epochs))
            if action == TrialScheduler.STOP and result.get(time_attr, 0) >= last_epoch:
                return TrialScheduler.CONTINUE
            return action

    return EndAwareASHA(time_attr=time_attr, max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)


def train_report_to_tune_callback():
    """The Train callback that forwards rank 0's `ray.train.report` metrics to the Tune trial."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback()


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
    except Exception as exc:  # no dashboard / state API: Ray's cleaner is the only one then
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
        except Exception:  # removed meanwhile (by Ray's cleaner)
            pass
    return removed


def free_stopped_trials(wait_s: float = 10.0) -> None:
    """After the sweep: the last stopped trials' worker groups may outlive it by a moment."""
    deadline = time.monotonic() + wait_s
    while True:
        reap_orphaned_worker_groups()
        if time.monotonic() >= deadline or not _train_workers_alive():
            return
        time.sleep(1.0)


def _owner_died(death_cause: dict | None) -> bool:
    context = (death_cause or {}).get("actor_died_error_context") or {}
    return context.get("reason") == "OWNER_DIED" or "owner has died" in str(context.get("error_message", ""))


def _train_workers_alive() -> bool:
    """Whether a Train worker of this job is still alive (a trial's trainer being torn down)."""
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    try:
        return bool(list_actors(address=context.gcs_address, limit=10_000, raise_on_missing_output=False,
                                filters=[("job_id", "=", context.get_job_id()), ("class_name", "=", "RayTrainWorker"),
                                         ("state", "!=", "DEAD")]))
    except Exception:  # no state API: nothing more to wait for
        return False


def serve_http_address() -> tuple[str, int] | None:
    """(host, port) of the HTTP proxy of a Serve instance already running on this Ray
    cluster, or None when there is none (read from Serve's controller actor, a private name)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    options = ray.get(controller.get_http_config.remote(), timeout=30)
    return str(options.host), int(options.port)
