"""Run one training job in this process and print what the tests check, as JSON.

Used by the tests as `python -m tests.training.run_worker <manifest URI> <output folder>
[block-ray]`: a fresh process, so peak RSS and `sys.modules` belong to this run alone.
"""

from __future__ import annotations

import json
import resource
import sys


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    exec from the parent, so a child of a large process would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    manifest, output = sys.argv[1], sys.argv[2]
    if "block-ray" in sys.argv[3:]:
        sys.modules["ray"] = None   # `import ray` raises ImportError from here on

    from components.training.config import TrainJob
    from components.training.loop import train

    job = TrainJob(dataset=manifest, output_uri=output, model={"backbone": "small_cnn", "embedding_dim": 16},
                   loss={"name": "triplet"},
                   train={"epochs": 2, "classes_per_batch": 2, "images_per_class": 2, "batches_per_epoch": 3,
                          "loader_workers": 1, "cache_mb": 2, "threads_per_worker": 1, "eval_batch_size": 4})
    base_rss_mb = peak_rss_mb()   # interpreter + torch
    metrics = train(job)
    print(json.dumps({
        "metrics": metrics,
        "ray_imported": sys.modules.get("ray") is not None,
        "base_rss_mb": base_rss_mb,
        "peak_rss_mb": peak_rss_mb(),
        "loader_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
