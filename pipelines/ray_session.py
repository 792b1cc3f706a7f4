"""Start (or join) the Ray cluster a stage runs on.

Default: an embedded local Ray, bound to 127.0.0.1, nothing to start by hand. With
`ray.address` in config or `RAY_ADDRESS` in the environment (as `ray job submit` sets it),
the stage joins that cluster instead. With a `log_file`, Ray's own output (worker logs,
Ray Data's progress log) goes there instead of the terminal.
"""

from __future__ import annotations

import logging
import os

from pipelines.config import RayConfig


def cluster_has_gpus() -> bool:
    """Whether the connected cluster offers GPUs (the default for every `use_gpu: null`)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def ensure_ray(config: RayConfig | None = None, log_file: str | None = None) -> None:
    """Connect to Ray once per process; route its output to `log_file` when given."""
    import ray

    if not ray.is_initialized():
        _start(config or RayConfig())
    if log_file:
        from pipelines.ray_compat import send_ray_output_to

        send_ray_output_to(log_file)


def _start(config: RayConfig) -> None:
    import ray

    address = config.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
        return
    # An embedded cluster serves this process only: keep every port on loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # The dashboard serves the state API that Ray Train uses to watch its controller.
    ray.init(num_cpus=config.num_cpus, include_dashboard=True, **kwargs)
