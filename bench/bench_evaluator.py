"""Benchmark: the exact streaming evaluator vs a per-query scikit-learn loop.

The baseline is what one writes without the evaluator: score the gallery (one matrix product
for the timed queries), then for each query drop the query itself and call
`sklearn.metrics.average_precision_score`. It is timed on a random subset of queries and
extrapolated to all N (the output says so); the evaluator always runs on all N queries.

Both sides get the same L2-normalised float32 features (the evaluator with normalize=False)
and treat tied scores alike (one threshold per distinct score), so AP values can be compared
query by query. The scores themselves may differ in their last bit: BLAS rounds differently
for products of different shapes (the baseline scores its 1,000 queries in one product, the
evaluator in blocks) and cuBLAS differs from CPU BLAS, which can swap near-tied items; the
output reports the largest per-query difference, and separately for queries where a relevant
item ties exactly with another item in the baseline's scores.

    python bench/bench_evaluator.py                       # N=20,000, 256-d, 100 classes, CPU
    python bench/bench_evaluator.py --n 60000 --device cuda
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch
from common import machine_load  # bench/common.py (scripts run from bench/)
from sklearn.metrics import average_precision_score

from components.constants import METRIC_MAP
from components.evaluation import evaluate_retrieval


def clustered_embeddings(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random class centres; the spread gives a mid-range mAP (~0.4)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    features = centres[labels] * 0.026 + rng.standard_normal((n, dim)).astype(np.float32) / 16
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features.astype(np.float32), labels


class PeakRss:
    """Peak resident memory above the level at start, sampled every 2 ms (Linux /proc)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self) -> "PeakRss":
        self.start = self._rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def increase(self) -> int:
        return self.peak - self.start


def run_evaluator(features: np.ndarray, labels: np.ndarray, device: str):
    """(result, wall seconds, CPU seconds of the process, peak memory bytes, memory kind)."""
    if device == "cuda":
        data = torch.from_numpy(features).to("cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, cpu = time.perf_counter(), time.process_time()
        result = evaluate_retrieval(data, labels, normalize=False, device="cuda")
        torch.cuda.synchronize()
        return (result, time.perf_counter() - start, time.process_time() - cpu,
                torch.cuda.max_memory_allocated() - base, "GPU memory (torch allocator)")
    with PeakRss() as memory:
        start, cpu = time.perf_counter(), time.process_time()
        result = evaluate_retrieval(features, labels, normalize=False, device="cpu")
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return result, seconds, cpu_seconds, memory.increase, "process RSS"


def run_sklearn(features: np.ndarray, labels: np.ndarray, queries: np.ndarray):
    """Per-query baseline: (wall s, CPU s, AP per query, True where a relevant item has a tied score).

    The subset's scores come from one float32 matrix product (numpy's BLAS, like the
    evaluator's CPU path); its time is part of the baseline.
    """
    n = features.shape[0]
    ap = np.empty(queries.shape[0])
    start, cpu = time.perf_counter(), time.process_time()
    scores = features[queries] @ features.T
    for position, query in enumerate(queries):
        keep = np.arange(n) != query
        relevant = labels[keep] == labels[query]
        ap[position] = average_precision_score(relevant, scores[position, keep])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    has_tie = np.zeros(queries.shape[0], dtype=bool)
    for position, query in enumerate(queries):  # diagnostics, outside the timed loop
        keep = np.arange(n) != query
        relevant = labels[keep] == labels[query]
        _, group, size = np.unique(scores[position, keep], return_inverse=True, return_counts=True)
        has_tie[position] = bool((relevant & (size[group] > 1)).any())  # a relevant item in a tie
    return seconds, cpu_seconds, ap, has_tie


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sklearn-queries", type=int, default=1000,
                        help="queries timed with scikit-learn (0: all N), extrapolated to N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but CUDA is not available")

    features, labels = clustered_embeddings(args.n, args.dim, args.classes, args.seed)
    print(f"data: N={args.n:,} dim={args.dim} classes={args.classes} device={args.device} "
          f"threads={torch.get_num_threads()}; {machine_load()}")

    # The evaluator runs before and after the baseline; the faster run counts (both printed),
    # which damps the load swings of a shared machine.
    result, eval_seconds, eval_cpu, peak_bytes, memory_kind = run_evaluator(features, labels, args.device)
    full_matrix = args.n * args.n * 4

    subset_size = args.n if args.sklearn_queries in (0, None) else min(args.sklearn_queries, args.n)
    rng = np.random.default_rng(args.seed + 1)
    queries = np.sort(rng.choice(args.n, size=subset_size, replace=False))
    sk_seconds, sk_cpu, sk_ap, has_tie = run_sklearn(features, labels, queries)
    scale = args.n / subset_size
    sk_total, sk_cpu_total = sk_seconds * scale, sk_cpu * scale
    extrapolated = subset_size < args.n
    _, eval_seconds_2, eval_cpu_2, _, _ = run_evaluator(features, labels, args.device)
    best_seconds = min(eval_seconds, eval_seconds_2)

    ours = result.average_precision[queries]  # query_index is 0..N-1 in leave-one-out
    valid = ~np.isnan(ours)
    map_difference = abs(float(np.mean(ours[valid])) - float(np.mean(sk_ap[valid])))
    differences = np.abs(ours - sk_ap)
    tie_free = valid & ~has_tie
    largest_tie_free = float(differences[tie_free].max()) if tie_free.any() else 0.0
    largest_tied = float(differences[valid & has_tie].max()) if (valid & has_tie).any() else 0.0

    print(f"evaluator ({args.device}):  {best_seconds:8.2f} s wall (runs: {eval_seconds:.2f} s, "
          f"{eval_seconds_2:.2f} s; CPU {eval_cpu:.2f} s, {eval_cpu_2:.2f} s)   all {args.n:,} queries, "
          f"{METRIC_MAP}={result.metrics[METRIC_MAP]:.6f}")
    how = (f"{sk_seconds:.2f} s for {subset_size:,} random queries, extrapolated x{scale:.1f}"
           if extrapolated else "all queries")
    print(f"sklearn per query:   {sk_total:8.2f} s wall, {sk_cpu_total:.2f} s CPU   ({how})")
    print(f"speed-up:            {sk_total / best_seconds:8.1f}x wall   "
          f"({sk_cpu_total / min(eval_cpu, eval_cpu_2):.1f}x in CPU time)")
    print(f"mAP over the {subset_size:,} sklearn queries: evaluator {np.mean(ours[valid]):.9f}  "
          f"sklearn {np.mean(sk_ap[valid]):.9f}  |difference| {map_difference:.2e}")
    print(f"largest per-query |AP difference|: {largest_tie_free:.2e} on {int(tie_free.sum()):,} queries without "
          f"ties, {largest_tied:.2e} on {int((valid & has_tie).sum()):,} queries where a relevant item has a tied "
          "score (both put tied items at one threshold; differences come from last-bit score rounding)")
    print(f"evaluator peak memory ({memory_kind}): {peak_bytes / 2**20:,.0f} MiB; "
          f"an N x N float32 score matrix would need {full_matrix / 2**20:,.0f} MiB")
    print(f"end: {machine_load()}")


if __name__ == "__main__":
    main()
