"""Benchmark: an approximate sharded index vs exact Flat search, through `IndexSearcher`.

Clustered synthetic vectors resemble embeddings (points around class centres); the queries
are held-out points of the same distribution. Both indexes are built with `build_index`
and searched with one batched call; the output gives recall@10 of the approximate index
against exact search, the queries per second of both, and their ratio (target: recall@10 >=
0.95 at >= 10x the queries per second).

    python bench/bench_index.py                                  # 200k x 256, 2000 queries
    python bench/bench_index.py --factory HNSW32 --ef-search 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

from components.index import IndexSearcher, build_index
from common import machine_load  # bench/common.py (scripts run from bench/)


def clustered(n: int, dim: int, classes: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    return centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)


def timed_search(searcher: IndexSearcher, queries: np.ndarray, k: int, **params) -> tuple[np.ndarray, float]:
    searcher.search_arrays(queries[:10], k, **params)  # warm-up (page-in, thread pools)
    start = time.perf_counter()
    _, ids = searcher.search_arrays(queries, k, **params)
    return ids, time.perf_counter() - start



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--classes", type=int, default=2_000)
    parser.add_argument("--noise", type=float, default=1.0, help="spread of points around their centre")
    parser.add_argument("--factory", default="IVF1024,SQ8")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ef-search", type=int, default=None)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = clustered(args.n + args.queries, args.dim, args.classes, args.noise, args.seed)
    vectors, queries = data[: args.n], data[args.n:]
    metadata = pd.DataFrame({"key": np.arange(args.n).astype(str)})
    print(f"data: {args.n:,} x {args.dim} vectors ({args.classes:,} clusters), {args.queries:,} queries, "
          f"k={args.k}; {machine_load()}")

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        build_index(vectors, metadata, f"{root}/flat", factory="Flat", num_shards=args.shards)
        flat_build = time.perf_counter() - start
        start = time.perf_counter()
        build_index(vectors, metadata, f"{root}/approx", factory=args.factory, num_shards=args.shards,
                    train_size=args.train_size, seed=args.seed)
        approx_build = time.perf_counter() - start
        flat = IndexSearcher.load(f"{root}/flat", device="cpu")
        approx = IndexSearcher.load(f"{root}/approx", device="cpu")

        exact_ids, flat_seconds = timed_search(flat, queries, args.k)
        params = {"nprobe": args.nprobe, "ef_search": args.ef_search}
        approx_ids, approx_seconds = timed_search(approx, queries, args.k, **params)

    recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact_ids, approx_ids)])
    flat_qps, approx_qps = args.queries / flat_seconds, args.queries / approx_seconds
    settings = ", ".join(f"{name}={value}" for name, value in params.items() if value is not None)
    print(f"Flat (exact):        build {flat_build:6.1f} s   search {flat_seconds:7.3f} s   "
          f"{flat_qps:10,.0f} queries/s")
    print(f"{args.factory} ({settings}): build {approx_build:6.1f} s   search {approx_seconds:7.3f} s   "
          f"{approx_qps:10,.0f} queries/s")
    print(f"recall@{args.k}: {recall:.4f}   speed-up: {approx_qps / flat_qps:.1f}x   (end: {machine_load()})")


if __name__ == "__main__":
    main()
