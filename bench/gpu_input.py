"""Is the GPU ever starved? Training steps fed by chipmatch's streaming P×K input vs the same
steps on one batch already on the device (the upper bound), in one process, without Ray.

Made for the lent GPU machine (no Ray, MLflow or faiss there; see ../shared/ENVIRONMENT.md):
ingest a version here (`chipmatch ingest`), carry its folder and this repository, run there:

    python bench/gpu_input.py --manifest DIR/datasets/<name>/<version>/manifest.json \
        --backbone resnet50 --classes 64 --images-per-class 4 --steps 60 --loader-workers 8

Prints, for each source, images/s of whole training steps (forward under bf16 autocast, the
loss in float32, backward, AdamW) and the GPU busy fraction (the summed CUDA time of the steps'
kernels, timed with CUDA events, over the wall time), then streaming / in-memory (target
>= 0.9). The first `--warmup` steps of each source are not timed (cuDNN autotuning, loader
start). On a CPU (`--device cpu`, small sizes) it checks that the script runs; the busy
fraction is then the step's share of the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from components import constants as C
from components.data.sample_index import load_sample_index
from components.data.versions import open_version
from components.losses import build_loss
from components.models import build_model
from components.training.config import TrainConfig
from components.training.data import build_train_loader
from components.training.module import TrainModule
from components.training.optim import build_optimizer
from components.training.sampler import PKBatchSampler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--classes", type=int, default=64, help="P: classes per batch")
    parser.add_argument("--images-per-class", type=int, default=4, help="K")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per source")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--loss", default="triplet")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the figures as JSON here too")
    return parser.parse_args()


class StepTimer:
    """Wall time of a run of steps and the time the device spent in them."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.pairs, self.cpu_seconds = device, [], 0.0

    def step(self, run):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            self.pairs.append((start, end))
        else:
            started = time.perf_counter()
            run()
            self.cpu_seconds += time.perf_counter() - started

    def busy_seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return sum(start.elapsed_time(end) for start, end in self.pairs) / 1000
        return self.cpu_seconds


def measure(batches, module, optimizer, device, steps: int, warmup: int, augment=None) -> dict[str, float]:
    """Images/s and busy fraction over `steps` steps after `warmup` untimed ones."""
    timer, images_seen, started = StepTimer(device), 0, None
    for step, (images, labels) in enumerate(batches):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, timer = time.perf_counter(), StepTimer(device)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)

        def run(images=images, labels=labels, step=step):
            batch = augment(images, 0, step) if augment is not None else images
            value = module(batch, labels)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()

        timer.step(run)
        if step >= warmup:
            images_seen += len(labels)
        if step + 1 >= warmup + steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert started is not None, "fewer batches than --warmup"
    wall = time.perf_counter() - started
    return {"images_per_s": images_seen / wall, "busy_fraction": timer.busy_seconds() / wall, "steps": steps}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    version = open_version(args.manifest)
    index = load_sample_index(version, C.SPLIT_TRAIN)
    image = version.manifest["image"]
    config = TrainConfig(classes_per_batch=args.classes, images_per_class=args.images_per_class,
                         loader_workers=args.loader_workers, epochs=1)
    model = build_model(backbone=args.backbone, embedding_dim=256, in_channels=image["channels"],
                        image_size=image["size"] or 32)
    loss = build_loss(args.loss)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    module = TrainModule(model, loss, autocast_dtype=autocast).to(device)
    optimizer = build_optimizer(module.model, module.loss, "adamw", 1e-4, 1e-4, 1.0)
    labels = torch.from_numpy(index.labels)
    total = args.warmup + args.steps

    sampler = PKBatchSampler(index.labels, args.classes, args.images_per_class, seed=0, batches_per_epoch=total)
    loader, requests, device_augment = build_train_loader(version.store.uri, index, sampler, config, 0, device)
    requests.set_epoch(0)
    streamed = ((batch["images"], labels[batch["positions"]]) for batch in loader)
    streaming = measure(streamed, module, optimizer, device, args.steps, args.warmup, device_augment)

    # The upper bound: one real batch, decoded once and kept on the device (augmented the same way).
    first = next(iter(loader))
    fixed_images, fixed_labels = first["images"].to(device), labels[first["positions"]].to(device)
    in_memory = measure(((fixed_images, fixed_labels) for _ in range(total)), module, optimizer, device,
                        args.steps, args.warmup, device_augment)

    figures = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "cpus": os.cpu_count(), "torch": torch.__version__, "backbone": args.backbone,
               "batch": args.classes * args.images_per_class, "chip": image, "loader_workers": args.loader_workers,
               "streaming": streaming, "in_memory": in_memory,
               "ratio": streaming["images_per_s"] / in_memory["images_per_s"]}
    for name in ("streaming", "in_memory"):
        print(f"{name:>10}: {figures[name]['images_per_s']:8.1f} img/s, busy {figures[name]['busy_fraction']:.2f}")
    print(f"streaming / in-memory: {figures['ratio']:.2f}x (target >= 0.9); {figures['device']}, "
          f"{figures['cpus']} CPUs, {args.loader_workers} loader processes")
    if args.out:
        with open(args.out, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
