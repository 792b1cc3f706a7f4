"""Shared fixtures: one Ray session for the whole run (ray.init costs ~5 s and ~900 MB)."""

from __future__ import annotations

import os

import pytest

# Every Ray port on 127.0.0.1 (must be set before Ray starts; subprocesses inherit it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _start_shared_ray():
    import ray

    if not ray.is_initialized():
        # More logical CPUs than cores: Train/Tune drivers need a small reservation of their own.
        # address="local": our own cluster, never one a `ray start` left on this host.
        ray.init(address="local", num_cpus=4, include_dashboard=True, logging_level="WARNING")
    return ray


@pytest.fixture
def ray_session():
    """The shared local Ray session, started on first use (and again after a test that
    needed its own cluster shut it down)."""
    yield _start_shared_ray()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The tiny synthetic vehicle set, ingested once: (storage root, manifest URI)."""
    from pipelines.config import load_config
    from pipelines.ingest import run_ingest

    _start_shared_ray()
    root = tmp_path_factory.mktemp("tiny_store")
    config = load_config(None, ["data=synthetic_tiny", f"storage.root={root}", "shard.samples_per_shard=100"])
    return str(root), run_ingest(config).manifest_uri


# Loss and miner tests run on tiny tensors: one intra-op thread is faster than two fighting
# over a shared 2-core machine. Restored afterwards so other test directories keep torch's default.
_TINY_TENSOR_DIRS = ("losses", "miners")


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread_for_tiny_tensors(request):
    import torch

    if request.path.parent.name not in _TINY_TENSOR_DIRS:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
