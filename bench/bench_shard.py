"""Shard throughput: chipmatch's Ray Data ingest vs a naive single-process PIL + tarfile writer.

Both read the same folder of PNG chips (rendered once by the synthetic generator), decode,
convert to grayscale, normalise the size, re-encode PNG and write WebDataset-style tars. The
naive writer does exactly that in one loop; chipmatch additionally hashes inputs, checks
duplicates, splits classes and writes a manifest. Printed: images/s of both and the ratio,
measured in the same run (absolute numbers on shared 2-core machines mean little; Ray's
workers run at the driver's priority, see main), for each
of `--repeats` alternating rounds and their median, with the machine's load, the CPU time per
image of each writer (chipmatch's counts the whole local Ray cluster) and the seconds chipmatch
spent per step (list, load, decide, write, publish), and the cores other processes used during
each measurement. The ratio needs free cores: where other work leaves one core, two workers
cannot beat one loop (CPU µs/img is what compares then). Other work fills whatever cores a
writer leaves idle, so it reads higher beside the one-core loop than beside chipmatch.

    .venv/bin/python bench/bench_shard.py [--images 8000] [--sizes 32 101] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from common import machine_load  # bench/common.py (scripts run from bench/)
from PIL import Image


def write_chips(folder: Path, size: int, count: int) -> int:
    from components.synthetic import get_preset, render_item, synthetic_items

    preset = "small" if size <= 64 else "large"
    spec = get_preset(preset, num_images=count, num_classes=min(100, count // 10), image_size=size)
    for item in synthetic_items(spec):
        path = folder / item.label / f"{item.key.split('/')[-1]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_item(item)).save(path)
    return count


def naive_writer(folder: Path, out: Path, size: int, per_shard: int) -> int:
    out.mkdir(parents=True)
    files = sorted(folder.rglob("*.png"))
    count, shard, tar = 0, 0, None
    for path in files:
        if count % per_shard == 0:
            if tar:
                tar.close()
            tar = tarfile.open(out / f"shard-{shard:05d}.tar", "w")
            shard += 1
        image = Image.open(path).convert("L")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        for suffix, data in (("png", buffer.getvalue()), ("cls", path.parent.name.encode())):
            info = tarfile.TarInfo(f"{path.parent.name}/{path.stem}.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        count += 1
    tar.close()
    return count


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its descendants (the local Ray cluster).

    On a shared machine the wall-clock ratio depends on how many cores are free; CPU seconds
    per image say what each writer costs regardless (Linux /proc; NaN elsewhere).
    """
    try:
        tick, parents, cpu = os.sysconf("SC_CLK_TCK"), {}, {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(pid)], cpu[int(pid)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError):
        return float("nan")
    tree, grew = {os.getpid()}, True
    while grew:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        grew, tree = grown != tree, grown
    return sum(cpu.get(pid, 0.0) for pid in tree)


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (Linux /proc/stat; NaN elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            ticks = [int(value) for value in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait


class Meter:
    """Wall time, CPU of the writer under test, and the cores everything else used meanwhile."""

    def __init__(self, own_cpu) -> None:
        self.own_cpu = own_cpu

    def __enter__(self) -> "Meter":
        self.wall, self.cpu, self.busy = time.perf_counter(), self.own_cpu(), machine_busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = self.own_cpu() - self.cpu
        self.others = max(0.0, machine_busy_seconds() - self.busy - self.cpu) / self.wall   # cores


def chipmatch_ingest(folder: Path, out: Path, size: int, per_shard: int):
    from components.data.ingest import ImageSpec, ingest
    from components.data.sources.folder import FolderConfig, FolderSource
    from components.data.splits import SplitSpec
    from components.storage import Store

    return ingest(FolderSource(FolderConfig(root=str(folder))), Store(str(out)), ImageSpec(size=size, channels=1),
                  SplitSpec(), per_shard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 101])
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Ray starts its workers 15 niceness levels below the driver (RAY_worker_niceness): on a
    # shared machine they would get a fraction of the CPU the naive loop (in this process)
    # gets. Same priority for both writers, or the ratio measures the scheduler.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # address="local": its own cluster, never one a `ray start` on this machine left running.
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    print(f"cpus={os.cpu_count()} ray_cpus={ray.cluster_resources().get('CPU')} images={args.images} "
          f"per_shard={args.per_shard} repeats={args.repeats}; {machine_load()}")
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench_shard_{size}_"))
        try:
            write_chips(work / "chips", size, args.images)
            chipmatch_ingest(work / "chips", work / "warmup", size, args.per_shard)  # warm Ray workers
            ratios = []
            for round_ in range(args.repeats):
                with Meter(time.process_time) as naive:
                    naive_count = naive_writer(work / "chips", work / f"naive{round_}", size, args.per_shard)
                with Meter(tree_cpu_seconds) as chip:
                    result = chipmatch_ingest(work / "chips", work / f"chipmatch{round_}", size, args.per_shard)
                accepted = result.manifest["summary"]["accepted"]
                ratio = (accepted / chip.wall) / (naive_count / naive.wall)
                ratios.append(ratio)
                steps = " ".join(f"{step} {seconds:.2f}" for step, seconds in result.timings.items())
                print(f"{size}x{size} round {round_}: naive {naive_count / naive.wall:,.0f} img/s, "
                      f"{naive.cpu / naive_count * 1e6:.0f} CPU µs/img | chipmatch {accepted / chip.wall:,.0f} img/s, "
                      f"{chip.cpu / accepted * 1e6:.0f} CPU µs/img | ratio {ratio:.2f}x | other work: "
                      f"{naive.others:.1f} / {chip.others:.1f} cores  (chipmatch s: {steps})")
            print(f"{size}x{size}: median ratio {statistics.median(ratios):.2f}x over {len(ratios)} rounds "
                  f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x); {machine_load()}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
