"""Start (or join) the Ray cluster a stage runs on.

Default: an embedded local Ray, bound to 127.0.0.1, nothing to start by hand. With
`ray.address` in config or `RAY_ADDRESS` in the environment (as `ray job submit` sets it),
the stage joins that cluster instead. With a `log_file`, Ray's own output (worker logs,
Ray Data's progress log, native warnings) goes there instead of the terminal.
"""

from __future__ import annotations

import logging
import os
import sys

from pipelines.config import RayConfig


def cluster_has_gpus() -> bool:
    """Whether the connected cluster offers GPUs (the default for every `use_gpu: null`)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def ensure_ray(config: RayConfig | None = None, log_file: str | None = None) -> None:
    """Connect to Ray once per process; send its output to `log_file` when given."""
    import ray

    from pipelines import ray_compat

    if log_file:   # before ray.init: what it logs and the processes it starts go to the file too
        ray_compat.configure_ray_data_logging()
        send_logs_to(log_file)
    if not ray.is_initialized():
        _start(config or RayConfig())
    if log_file:
        ray_compat.send_worker_output_to(log_file)


# Libraries whose internal logging is not the stage's progress (Ray's, MLflow's store set-up);
# MLflow sets its own handlers, without propagation, on the last three.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "mlflow", "alembic", "sqlalchemy.engine", "huey")
_native_stderr_sent = False


def send_logs_to(path: str) -> None:
    """Send library loggers and native stderr (below) to the file `path`."""
    send_library_logs_to(path)
    send_native_stderr_to(path)


def send_library_logs_to(path: str) -> None:
    """Replace the console handlers of the library loggers by one that appends to `path`."""
    import mlflow  # noqa: F401 - installs its handlers on import: they must exist to be replaced

    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            if isinstance(handler, logging.StreamHandler):   # console handlers, and ours from an earlier call
                library.removeHandler(handler)
        if "." not in name or not library.propagate:   # children of "ray" reach it by propagation
            library.addHandler(to_file)


def send_native_stderr_to(path: str) -> None:
    """Point file descriptor 2, where native code writes (the C++ core worker of this process,
    the Ray processes it starts), at `path`, and keep Python's `sys.stderr` (the stage's
    console, warnings, tracebacks) on the terminal. Once per process: the CLI's, never a
    library caller's."""
    global _native_stderr_sent
    if _native_stderr_sent:
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    _native_stderr_sent = True


def _start(config: RayConfig) -> None:
    import ray

    address = config.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
        return
    # An embedded cluster serves this process only: keep every port on loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray starts its workers 15 niceness levels below the driver by default, so on a shared
    # machine they lose every core to other work; the stage's workers are the stage.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # The dashboard serves the state API that Ray Train uses to watch its controller.
    # address="local": start our own cluster, never join one a `ray start` left on this host.
    ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=True, **kwargs)
