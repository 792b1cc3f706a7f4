"""Training input benchmark: the streaming P×K input against the step it feeds, the old
in-memory loop, and memory at three dataset sizes.
Run: `python bench/bench_input.py [--sections 1 2 3] [--epochs 6]`.

Prints, in one run on the same machine (with its load average, since these machines are shared):
1. input throughput: samples/s the loader delivers (read + decode + augment + batch, no model)
   vs the training step rate of the quickstart model (small_cnn, 32×32): target >= 2×;
2. training images/s of the quickstart config: the old loop (whole split decoded in memory,
   augmentation on the training thread, one torch thread as a 1-CPU Ray worker had) vs
   `components.training.loop.train` (loader processes + compute threads): target >= 1.7×;
3. peak RSS of one training worker (a fresh process each) at 8.3k, 62.8k and 250k chips
   (`--rss-chips`), new input vs the old in-memory one: target flat within 10 %.

Datasets are the synthetic small set (8,300 32×32 chips) and the same source with more
images (class-size bounds scaled alike), ingested once under --root (default
/tmp/chipmatch-bench-input) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from common import machine_load  # bench/common.py (scripts run from bench/)

from components import constants as C

# The quickstart's model and train settings (conf/quickstart.yaml), first run: triplet.
MODEL = {"backbone": "small_cnn", "embedding_dim": 128}
QUICKSTART_TRAIN = {"classes_per_batch": 32, "images_per_class": 4, "lr": 0.002}
LOSS = "triplet"
BATCHES = 30          # training batches per epoch (an epoch of the small set is ~33)
EPOCHS = 6            # section 2 times whole runs of the quickstart's epochs (its loader starts once per run)


def load() -> str:
    return f"{machine_load()}, uptime {open('/proc/uptime').read().split()[0]} s"


SMALL_CHIPS = 8_300      # the synthetic small set (200 classes of 8..120 images)


def ingest(root: str, num_images: int | None) -> str:
    from pipelines.config import load_config
    from pipelines.ingest import run_ingest

    # n× the images: n× the class-size bounds too (200 classes of 8..120 images cannot hold more).
    scale = (num_images or SMALL_CHIPS) / SMALL_CHIPS
    larger = [f"data.num_images={num_images}", f"data.min_per_class={round(8 * scale)}",
              f"data.max_per_class={round(120 * scale)}"] if num_images else []
    overrides = ["data=synthetic_small", f"storage.root={root}", *larger]
    return run_ingest(load_config(None, overrides)).manifest_uri


def train_config(**changes):
    from components.training.config import TrainConfig

    return TrainConfig(**{**QUICKSTART_TRAIN, "batches_per_epoch": BATCHES, "epochs": 1, **changes})


def input_rate(manifest: str, config, batches: int = BATCHES) -> float:
    """Samples/s the training loader delivers (first two batches, i.e. process start, excluded)."""
    from components.data.sample_index import load_sample_index
    from components.data.versions import open_version
    from components.training.data import build_train_loader
    from components.training.sampler import PKBatchSampler

    version = open_version(manifest)
    index = load_sample_index(version, C.SPLIT_TRAIN)
    sampler = PKBatchSampler(index.labels, config.classes_per_batch, config.images_per_class, seed=0,
                             batches_per_epoch=batches + 2)
    loader, requests, _ = build_train_loader(version.store.uri, index, sampler, config, 0, torch.device("cpu"))
    requests.set_epoch(0)
    count, started = 0, None
    for step, batch in enumerate(loader):
        if step == 2:
            started = time.perf_counter()
        if step >= 2:
            count += len(batch["positions"])
    return count / (time.perf_counter() - started)


def _module(image_size: int, classes: int):
    from components.losses import build_loss
    from components.models import build_model
    from components.training.module import TrainModule

    torch.manual_seed(0)
    return TrainModule(build_model(**MODEL, in_channels=1, image_size=image_size), build_loss(LOSS))


def step_rate(threads: int, batches: int = 15) -> float:
    """Samples/s of forward + backward + AdamW on ready 32×32 batches (no input at all)."""
    from components.training.optim import build_optimizer

    torch.set_num_threads(threads)
    module = _module(32, 32)
    optimizer = build_optimizer(module.model, module.loss, "adamw", 0.002, 1e-4, 1.0)
    images = torch.randn(128, 1, 32, 32)
    labels = torch.arange(32).repeat_interleave(4)
    for step in range(batches + 2):
        if step == 2:
            started = time.perf_counter()
        value = module(images, labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return batches * 128 / (time.perf_counter() - started)


def old_loop_rate(manifest: str, epochs: int = 1) -> tuple[float, float]:
    """The loop before the streaming input: (images/s of the training steps, seconds to load the split)."""
    from components.data.reader import load_split
    from components.data.versions import open_version
    from components.models.transforms import build_train_transform
    from components.training.optim import build_optimizer, build_scheduler
    from components.training.sampler import PKBatchSampler

    torch.set_num_threads(1)   # a Ray Train worker with num_cpus=1
    started = time.perf_counter()
    train = load_split(open_version(manifest), C.SPLIT_TRAIN)
    loading = time.perf_counter() - started
    module = _module(32, len(train.classes))
    optimizer = build_optimizer(module.model, module.loss, "adamw", 0.002, 1e-4, 1.0)
    scheduler = build_scheduler(optimizer, epochs * BATCHES, 0)
    sampler = PKBatchSampler(train.labels, 32, 4, seed=0, batches_per_epoch=BATCHES)
    augment = build_train_transform(rotation="any")
    labels = torch.from_numpy(train.labels)
    started, count = time.perf_counter(), 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for indices in sampler:
            chips = train.images[indices]
            images = augment(torch.from_numpy(chips[:, None] if chips.ndim == 3 else np.moveaxis(chips, -1, 1)))
            value = module(images, labels[indices])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            scheduler.step()
            value.item()
            count += len(indices)
    return count / (time.perf_counter() - started), loading


def new_loop_rate(manifest: str, folder: str, **changes) -> float:
    """`train(job)` in this process: images/s of its training steps over the whole run (the
    loader's start included, validation excluded). `folder` must be new: a checkpoint there
    would make the run resume (and train nothing)."""
    from components.training.config import TrainJob
    from components.training.loop import train

    config = train_config(**changes)
    job = TrainJob(dataset=manifest, output_uri=folder, model=MODEL, loss={"name": LOSS}, train=config.model_dump())
    metrics = train(job)
    return config.epochs * BATCHES * config.classes_per_batch * config.images_per_class / metrics["train_seconds"]


def rss_worker(manifest: str, mode: str, folder: str) -> None:
    """Child process: one short training run with its validation, then its peak RSS as JSON."""
    if mode == "old":
        from components.data.reader import load_split
        from components.data.versions import open_version
        from components.evaluation import retrieval_metrics
        from components.inference import embed_arrays

        val = load_split(open_version(manifest), C.SPLIT_VAL)   # rank 0 held it beside the training split
        old_loop_rate(manifest)
        features = embed_arrays(_module(32, 32).model, val.images, batch_size=512)["embedding"]
        retrieval_metrics(features, val.labels, ks=(1,))   # the old loop's validation
    else:
        new_loop_rate(manifest, folder, batches_per_epoch=BATCHES, cpus_per_worker=1)
    from tests.training.run_worker import peak_rss_mb  # the tests' VmHWM reader (PYTHONPATH: peak_rss)

    print(json.dumps({"self_mb": peak_rss_mb(),
                      "loaders_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def peak_rss(manifest: str, mode: str, folder: str) -> dict:
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--rss", manifest, mode, folder], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/chipmatch-bench-input")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run in section 2")
    parser.add_argument("--rss-chips", type=int, nargs="+", default=[SMALL_CHIPS, 62_800, 250_000],
                        help="dataset sizes of section 3 (the first is the reference)")
    parser.add_argument("--rss", nargs=3, metavar=("MANIFEST", "MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        rss_worker(*args.rss)
        return

    small = ingest(f"{args.root}/small", None)
    sized = [(count, small if count == SMALL_CHIPS else ingest(f"{args.root}/chips-{count}", count))
             for count in (args.rss_chips if 3 in args.sections else [])]
    import ray

    ray.shutdown()   # Ray's processes would share the cores with what is measured
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; {load()}")
    if 1 in args.sections:
        input_vs_step(small)
    if 2 in args.sections:
        loop_vs_loop(small, args.root, args.epochs)
    if 3 in args.sections:
        memory(sized, args.root)


def input_vs_step(small: str) -> None:
    print("\n1. input pipeline vs training step (32×32, batch 32×4)")
    step1 = step_rate(1)
    step2 = step_rate(2)
    print(f"   small_cnn step: {step1:.0f} samples/s on 1 thread, {step2:.0f} on 2; {load()}")
    for workers in (0, 1, 2):
        rate = input_rate(small, train_config(loader_workers=workers))
        print(f"   input, {workers} loader process(es): {rate:.0f} samples/s = {rate / step1:.1f}× the 1-thread step, "
              f"{rate / step2:.1f}× the 2-thread step; {load()}")


def loop_vs_loop(small: str, root: str, epochs: int) -> None:
    print(f"\n2. quickstart training images/s ({epochs} epochs of {BATCHES} batches of 32×4, triplet, same run; "
          "loader start included)")
    old, loading = old_loop_rate(small, epochs)
    print(f"   old loop (split in memory, 1 thread): {old:.0f} img/s (+{loading:.1f} s to decode the split first); {load()}")
    for changes in ({"cpus_per_worker": 2}, {"cpus_per_worker": 2, "threads_per_worker": 1}):
        rate = new_loop_rate(small, tempfile.mkdtemp(dir=root, prefix="run-"), epochs=epochs, **changes)
        config = train_config(**changes)
        print(f"   new loop, {config.compute_threads()} thread(s) + {config.loader_workers} loader(s): {rate:.0f} img/s "
              f"= {rate / old:.2f}× the old loop; {load()}")


def memory(sized: list[tuple[int, str]], root: str) -> None:
    from components.data.versions import open_version

    versions = [open_version(uri) for _, uri in sized]
    decoded = ", ".join(f"{v.num_samples(C.SPLIT_TRAIN) * 32 * 32 / 2**20:.0f}" for v in versions)
    print(f"\n3. peak RSS of one training worker ({BATCHES} batches + validation; fresh process, VmHWM; loaders: the "
          f"largest loader process, counting the pages it shares with its parent); decoded training split "
          f"{decoded} MB, validation images {', '.join(str(v.num_samples(C.SPLIT_VAL)) for v in versions)}")
    for mode in ("old", "new"):
        peaks = [(count, peak_rss(uri, mode, tempfile.mkdtemp(dir=root, prefix=f"rss-{mode}-"))) for count, uri in sized]
        reference = peaks[0][1]["self_mb"]
        print(f"   {mode}: " + ", ".join(
            f"{count / 1000:.1f}k chips: {r['self_mb']:.0f} MB ({100 * (r['self_mb'] / reference - 1):+.1f} %, "
            f"loaders {r['loaders_mb']:.0f} MB)" for count, r in peaks) + f"; {load()}")


if __name__ == "__main__":
    main()
