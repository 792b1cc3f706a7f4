"""Benchmark: a sharded index against the same index unsharded, and both against exact search.

Clustered synthetic vectors resemble embeddings (points around class centres); the queries
are held-out points of the same distribution. Every index is built with `build_index` and
searched through `IndexSearcher` with one batched call; each search is timed best-of-
`--repeats`, alternating between the indexes so that load on a shared machine hits them alike.

Printed: queries per second and recall@k (against exact Flat search) of the approximate
index with 1 shard and with `--shards` shards, and the ratio sharded / unsharded
(target: >= 0.9 at equal recall), plus the speed-up over exact search (target: recall@10
>= 0.95 at >= 10x). For reference it also times faiss's own shard containers over the same
shard files (what `IndexSearcher` does instead is in components/index/search.py).

    python bench/bench_index.py                                  # 200k x 256, 2000 queries, 4 shards
    python bench/bench_index.py --n 100000 --train-size 50000 --threads 1   # a busy machine
    python bench/bench_index.py --factory HNSW32 --ef-search 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import faiss
import numpy as np
import pandas as pd
from common import machine_load  # bench/common.py (scripts run from bench/)

from components.index import IndexSearcher, build_index


def clustered(n: int, dim: int, classes: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    return centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)


def best_times(searches: dict[str, Callable[[], np.ndarray]], repeats: int) -> tuple[dict, dict]:
    """Best-of-`repeats` seconds per search, the searches taking turns; and their ids."""
    ids = {name: search() for name, search in searches.items()}  # warm-up (page-in, thread pools)
    seconds = {name: float("inf") for name in searches}
    for _ in range(repeats):
        for name, search in searches.items():
            start = time.perf_counter()
            search()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds, ids


def faiss_containers(root: str, manifest, settings: dict[str, int]) -> dict[str, faiss.Index]:
    """faiss's shard containers over the shard files, for reference (not what the searcher uses)."""
    def shards():
        loaded = [faiss.read_index(f"{root}/{entry.file}") for entry in manifest.shards]
        for shard in loaded:
            if faiss.try_extract_index_ivf(shard) is not None:
                faiss.extract_index_ivf(shard).nprobe = settings["nprobe"]
            elif "efSearch" in settings:
                faiss.downcast_index(faiss.downcast_index(shard).index).hnsw.efSearch = settings["efSearch"]
        return loaded

    containers = {}
    for threaded in (True, False):
        container = faiss.IndexShards(manifest.dim, threaded, False)
        for shard in shards():
            container.add_shard(shard)
        containers[f"faiss.IndexShards(threaded={threaded})"] = container
    loaded = shards()
    ivf = faiss.try_extract_index_ivf(loaded[0])
    if ivf is not None and isinstance(faiss.downcast_index(loaded[0]), faiss.IndexIVF):
        container = faiss.IndexShardsIVF(ivf.quantizer, ivf.nlist, False, False)
        for shard in loaded:
            container.add_shard(shard)
        containers["faiss.IndexShardsIVF (ignores filters)"] = container
    return containers


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
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="faiss OpenMP threads (default: faiss's); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)

    data = clustered(args.n + args.queries, args.dim, args.classes, args.noise, args.seed)
    vectors, queries = data[: args.n], data[args.n:]
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    metadata = pd.DataFrame({"key": np.arange(args.n).astype(str)})
    print(f"data: {args.n:,} x {args.dim} vectors ({args.classes:,} clusters), {args.queries:,} queries, "
          f"k={args.k}, {faiss.omp_get_max_threads()} faiss threads; {machine_load()}")

    params = {"nprobe": args.nprobe, "ef_search": args.ef_search}
    settings = {"nprobe": args.nprobe, **({"efSearch": args.ef_search} if args.ef_search else {})}
    with tempfile.TemporaryDirectory() as root:
        builds = {}
        for name, factory, shards in (("flat", "Flat", 1), ("one", args.factory, 1),
                                      ("sharded", args.factory, args.shards)):
            start = time.perf_counter()
            manifest = build_index(vectors, metadata, f"{root}/{name}", factory=factory, num_shards=shards,
                                   train_size=args.train_size, seed=args.seed)
            builds[name] = (manifest, time.perf_counter() - start)
        searchers = {name: IndexSearcher.load(f"{root}/{name}", device="cpu") for name in builds}
        searches = {
            "flat": lambda: searchers["flat"].search_arrays(queries, args.k)[1],
            "one": lambda: searchers["one"].search_arrays(queries, args.k, **params)[1],
            "sharded": lambda: searchers["sharded"].search_arrays(queries, args.k, **params)[1],
        }
        if args.shards > 1:
            for name, container in faiss_containers(f"{root}/sharded", builds["sharded"][0], settings).items():
                searches[name] = lambda container=container: container.search(unit_queries, args.k)[1]
        seconds, ids = best_times(searches, args.repeats)

    exact = ids["flat"]

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact, found)]))

    labels = {"flat": "Flat (exact), 1 shard", "one": f"{args.factory}, 1 shard",
              "sharded": f"{args.factory}, {args.shards} shards ({searchers['sharded'].layout})"}
    print(f"{'index':58s} {'build s':>8s} {'search s':>9s} {'queries/s':>10s} {'recall@' + str(args.k):>10s}")
    for name in searches:
        build = f"{builds[name][1]:8.1f}" if name in builds else f"{'':8s}"
        print(f"{labels.get(name, '  ' + name):58s} {build} {seconds[name]:9.3f} "
              f"{args.queries / seconds[name]:10,.0f} {recall(ids[name]):10.4f}")
    ratio = seconds["one"] / seconds["sharded"]
    same = np.array_equal(ids["one"], ids["sharded"])
    setting = ", ".join(f"{key}={value}" for key, value in params.items() if value is not None)
    print(f"sharded / unsharded queries/s: {ratio:.2f}x (target >= 0.9; {setting}); "
          f"recall@{args.k} {recall(ids['sharded']):.4f} vs {recall(ids['one']):.4f}"
          f"{' (identical results)' if same else ''}")
    print(f"speed-up over exact search: {seconds['flat'] / seconds['sharded']:.1f}x   (end: {machine_load()})")


if __name__ == "__main__":
    main()
