"""Start (or join) the Ray cluster a stage runs on.

Default: an embedded local Ray, bound to 127.0.0.1, nothing to start by hand. With
`ray.address` in config or `RAY_ADDRESS` in the environment (as `ray job submit` sets it),
the stage joins that cluster instead.
"""

from __future__ import annotations

import logging
import os

from pipelines.config import RayConfig


def cluster_has_gpus() -> bool:
    """Whether the connected cluster offers GPUs (the default for every `use_gpu: null`)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def ensure_ray(config: RayConfig | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    config = config or RayConfig()
    address = config.address or os.environ.get("RAY_ADDRESS")
    # Ray Data progress bars and summaries are the stage's progress display; keep the rest quiet.
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
        return
    # An embedded cluster serves this process only: keep every port on loopback.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # The dashboard serves the state API that Ray Train uses to watch its controller.
    ray.init(num_cpus=config.num_cpus, include_dashboard=True, **kwargs)
