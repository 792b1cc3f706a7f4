"""Training-step cost of every registered loss, as a ratio to cross-entropy, plus WARP
vectorised vs its per-sample loop.

Part 1: one training step (forward + loss incl. mining + backward + optimiser step) of
``TrainModule(model, loss)`` on P×K = 64×4 = 256 grayscale chips, for each loss in the
registry, at 32×32 (120 classes, the small preset's seen classes) and 101×101 (192 classes).
All losses use the same backbone, the same batches and are timed in the same run; steps are
*interleaved* (one step of every loss per round) so a change of machine load hits every loss
alike. Warm-up rounds are dropped; the median step is reported and divided by CE's median.
Target: ≤ 1.15× CE. A step also reads ``loss.diagnostics()``, as the training loop does after
every step. Rows ``<loss>+<miner>`` (``--variants``) time a pair/triplet loss with another miner
from ``components.miners``.

Clock: on CPU, the process's CPU time with one intra-op thread (the shared 2-core machines
run other jobs: wall time there swings by ±100 % between steps, CPU time by a few %; on an
idle single core the two are equal). ``--clock wall`` uses wall time instead. On CUDA, wall
time between device synchronisations.

Part 2: WARP's vectorised ``warp_loss_from_draws`` vs ``reference.warp_loss_loop`` on the same
scores and the same draws, loss alone, forward + backward, batch 256, C = 120 and 1000, in two
score regimes ("random": nearly every first draw violates, the loop's best case; "trained":
the true class is lifted by U[0, 6], so many draws per row). Target: ≥ 20× faster.

    .venv/bin/python bench/bench_losses.py [--device cuda] [--backbone resnet18] [--steps 10]

Only components.losses / models / training are imported (no Ray, MLflow, FAISS, WebDataset),
so it also runs on a lent GPU machine with pytorch-metric-learning installed from a wheel.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from components.losses import available_losses, build_loss, loss_class
from components.losses.base import CONTINUOUS_LABELS
from components.losses.reference import warp_loss_loop
from components.losses.warp import draw_negative_classes, warp_loss_from_draws
from components.models import build_model
from components.training.module import TrainModule
from components.training.optim import build_optimizer
from components.training.sampler import PKBatchSampler

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
SIZES = {32: 120, 101: 192}          # image size → seen classes of the synthetic preset
P, K = 64, 4
TARGET_RATIO, TARGET_WARP = 1.15, 20.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


clock = time.perf_counter  # set in main(): time.process_time for --clock cpu


def paper_params(name: str) -> dict:
    """conf/loss/<name>.yaml's params (the paper defaults). Read here, not in the library."""
    import yaml

    params = yaml.safe_load((CONF / f"{name}.yaml").read_text())["params"] or {}
    return {k: v for k, v in params.items() if v is not None}


def make_batches(num_classes: int, size: int, count: int, device, seed: int = 0):
    """``count`` P×K batches: images, class labels and continuous labels (for log_ratio)."""
    rng = np.random.default_rng(seed)
    dataset_labels = np.repeat(np.arange(num_classes), 8)           # 8 images per class
    attributes = rng.uniform(1.0, 10.0, (num_classes, 2))            # e.g. length, width per class
    sampler = PKBatchSampler(dataset_labels, P, K, seed=seed, batches_per_epoch=count)
    batches = []
    for indices in sampler.global_batches():
        classes = dataset_labels[indices]
        continuous = attributes[classes] + rng.normal(0.0, 0.1, (len(classes), 2))
        batches.append((
            torch.randn(len(classes), 1, size, size, generator=torch.Generator().manual_seed(len(batches))).to(device),
            torch.as_tensor(classes, dtype=torch.long, device=device),
            torch.as_tensor(continuous, dtype=torch.float32, device=device),
        ))
    return batches


def build_step(row, base_model, num_classes, embedding_dim, device):
    """``row``: a loss name, or ``<loss>+<miner>`` for a loss with another miner."""
    name, _, miner = row.partition("+")
    params = paper_params(name)
    if miner:
        params.pop("mining", None)
        params["miner"] = miner
    if loss_class(name).has_parameters:
        params.update(num_classes=num_classes, embedding_dim=embedding_dim)
    loss = build_loss(name, **params)
    module = TrainModule(copy.deepcopy(base_model), loss).to(device).train()
    optimiser = build_optimizer(module.model, loss, "adamw", 1e-3, 1e-4, loss_lr_multiplier=100.0)
    continuous = loss_class(name).label_kind == CONTINUOUS_LABELS

    def step(batch) -> float:
        images, labels, attributes = batch
        sync(device)
        start = clock()
        optimiser.zero_grad(set_to_none=True)
        module(images, attributes if continuous else labels).backward()
        optimiser.step()
        loss.diagnostics()  # the loop logs them after every step (one host transfer)
        sync(device)
        return clock() - start

    return step, loss


def bench_size(size, args, device):
    num_classes = SIZES[size]
    torch.manual_seed(0)
    base_model = build_model(args.backbone, args.embedding_dim, in_channels=1, image_size=size)
    names = [*(args.losses or available_losses()), *args.variants]
    steps = {name: build_step(name, base_model, num_classes, args.embedding_dim, device) for name in names}
    batches = make_batches(num_classes, size, min(8, args.warmup + args.steps), device)
    times = {name: [] for name in names}
    for round_ in range(args.warmup + args.steps):
        print(f"  {size}×{size}: round {round_ + 1}/{args.warmup + args.steps}", end="\r", file=sys.stderr, flush=True)
        for name in names:  # interleaved: one step of every loss per round
            elapsed = steps[name][0](batches[round_ % len(batches)])
            if round_ >= args.warmup:
                times[name].append(elapsed)

    median = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    ce = median["cross_entropy"]
    print(f"\n{size}×{size}, {num_classes} classes, batch {P}×{K}, {args.backbone}, "
          f"median of {args.steps} steps ({args.warmup} warm-up excluded), {device}")
    print(f"{'loss':<26}{'ms/step':>10}{'IQR %':>8}{'× CE':>8}  ≤{TARGET_RATIO}×CE")
    for name in names:
        q1, _, q3 = statistics.quantiles([t * 1e3 for t in times[name]], n=4)
        ratio = median[name] / ce
        print(f"{name:<26}{median[name]:>10.1f}{100 * (q3 - q1) / median[name]:>8.0f}"
              f"{ratio:>8.2f}  {'yes' if ratio <= TARGET_RATIO else 'NO'}")
    for name, (_, loss) in steps.items():
        if not (getattr(loss, "uses_kmeans", False) and hasattr(loss, "reassign")):
            continue
        # k-means runs every reassign_every training steps, so no timed step above contains it:
        # add its amortised cost.
        start = clock()
        loss.reassign()
        kmeans = (clock() - start) * 1e3
        amortised = median[name] + kmeans / loss.reassign_every
        print(f"  {name} k-means reassignment: {kmeans:.1f} ms every {loss.reassign_every} "
              f"steps → {amortised:.1f} ms/step amortised, {amortised / ce:.2f}× CE")


def time_call(fn, repeats, warmup, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return statistics.median(times) * 1e3


def bench_warp(args, device):
    print(f"\nWARP vectorised vs warp_loss_loop, same scores and draws, loss forward + backward, "
          f"batch {P * K}, {device}")
    print(f"{'C':>6} {'scores':<8}{'draws/row':>10}{'loop ms':>10}{'vector ms':>11}{'speed-up':>10}  ≥{TARGET_WARP:.0f}×")
    for num_classes in (120, 1000):
        for regime in ("random", "trained"):
            gen = torch.Generator().manual_seed(num_classes)
            batch = P * K
            labels = torch.randint(0, num_classes, (batch,), generator=gen)
            scores = torch.randn(batch, num_classes, generator=gen)
            if regime == "trained":  # true class ahead of most negatives, by a varying amount
                scores[torch.arange(batch), labels] += 6.0 * torch.rand(batch, generator=gen)
            draws = draw_negative_classes(labels, num_classes, num_classes - 1, gen)
            scores, labels, draws = scores.to(device), labels.to(device), draws.to(device)
            # Mean number of draws a row makes before it stops (violation or C-1 draws).
            violates = scores.gather(1, draws) > scores.gather(1, labels[:, None]) - 1.0
            first = torch.where(violates.any(1), violates.int().argmax(1) + 1, num_classes - 1)

            def run(fn, scores=scores, labels=labels, draws=draws):  # this round's tensors
                leaf = scores.clone().requires_grad_(True)
                value = fn(leaf, labels, draws)
                value.backward()
                return value.detach(), leaf.grad

            fast_value, fast_grad = run(warp_loss_from_draws)
            slow_value, slow_grad = run(warp_loss_loop)
            if not (torch.allclose(fast_value, slow_value, rtol=1e-5) and torch.allclose(fast_grad, slow_grad, atol=1e-6)):
                raise RuntimeError(f"WARP vectorised != loop at C={num_classes} ({regime})")
            loop = time_call(lambda: run(warp_loss_loop), args.loop_repeats, 0, device)
            fast = time_call(lambda: run(warp_loss_from_draws), 30, 5, device)
            speedup = loop / fast
            print(f"{num_classes:>6} {regime:<8}{first.float().mean().item():>10.1f}{loop:>10.1f}{fast:>11.2f}"
                  f"{speedup:>9.0f}×  {'yes' if speedup >= TARGET_WARP else 'NO'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loss (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loss first")
    parser.add_argument("--losses", nargs="+", help="subset (cross_entropy is always added)")
    parser.add_argument("--variants", nargs="*", default=["triplet+batch_hard", "contrastive+batch_hard",
                                                          "multi_similarity+semi_hard"],
                        help="<loss>+<miner> rows: a pair/triplet loss with another miner")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed calls of the WARP loop")
    parser.add_argument("--skip-warp", action="store_true")
    parser.add_argument("--clock", choices=["cpu", "wall"], help="default: cpu on CPU, wall on CUDA")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: 1 with --clock cpu)")
    args = parser.parse_args()
    if args.losses and "cross_entropy" not in args.losses:
        args.losses = ["cross_entropy", *args.losses]
    device = torch.device(args.device)
    global clock
    args.clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu measures host CPU time only; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads or args.clock == "cpu":
        # CPU time of several threads would count their spin-waits too: one thread.
        torch.set_num_threads(args.threads or 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} CPUs, {args.clock} clock")
    for size in args.sizes:
        bench_size(size, args, device)
    if not args.skip_warp:
        bench_warp(args, device)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
