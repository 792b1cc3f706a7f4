"""Benchmark: `chipmatch serve` on 127.0.0.1 over an IVF…,SQ8 index of synthetic vectors.

Builds (once; a re-run with the same sizes reuses it through `build_index`'s own
completion check) an `IVF{nlist},SQ8` index of `--vectors` clustered `--dim`-d vectors under
`--cache`, plus a second generation (a byte copy in another folder, so a switch loads a
full-size index), makes one live, and starts the service through the stage's own
`start_service` (Ray on 127.0.0.1, token required). Then, over HTTP with top-`--k`
embedding queries (held-out points of the same distribution):

1. one client, `--requests` requests in turn: p50 / p99 latency (target p99 <= 20 ms at k=10);
2. `--clients` concurrent clients for `--seconds`: queries per second;
3. the same load for `--seconds` while the live pointer is switched to the other generation
   a third of the way in: failed requests (must be 0), and how long until answers come from
   the new generation.

Latency is measured at the client: JSON over HTTP, Serve's proxy, the replica, faiss. The
clients share the machine with the service, so on a small machine they take CPU from it.
Also measured: recall@k of the served answers against exact search on 200 queries. Prints
one table and writes the figures with the machine to `--out` (default: <cache>/bench_serve.json).

    python bench/bench_serve.py --cache /tmp/serve-bench                          # 1 M x 128
    nice -n 19 python bench/bench_serve.py --cache /tmp/serve-bench --vectors 20000 --requests 500 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine_load  # bench/common.py (scripts run from bench/)

NAME = "bench-serve"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="folder for the indexes (kept and reused between runs)")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=None,
                        help="IVF lists (default: the power of two nearest 4 sqrt(vectors): 4096 at 1 M)")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000, help="single-client requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the QPS run and of the switch run")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON with the figures (default: <cache>/bench_serve.json)")
    return parser.parse_args()


def nlist_for(vectors: int) -> int:
    return max(16, 2 ** round(math.log2(4 * math.sqrt(vectors))))


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    """Points around `count // 500` centres (embedding-like); generated in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(count // 500, 8), dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 200_000):
        stop = min(count, start + 200_000)
        out[start:stop] = centres[rng.integers(0, len(centres), stop - start)]
        out[start:stop] += 0.6 * rng.standard_normal((stop - start, dim)).astype(np.float32)
    return out


def build_generations(args: argparse.Namespace, nlist: int) -> tuple[str, list[str], np.ndarray, float]:
    """Storage root, the two generation folders (relative), the vectors, build seconds (0: reused)."""
    from components.index import build_index
    from components.storage import Store

    root = str(Path(args.cache).resolve())
    factory = f"IVF{nlist},SQ8"
    tag = f"{args.vectors}x{args.dim}-IVF{nlist}-SQ8-p{args.nprobe}-s{args.seed}"
    folders = [f"indexes/{NAME}/{tag}-a", f"indexes/{NAME}/{tag}-b"]
    vectors = clustered(args.vectors + 10_000, args.dim, args.seed)   # the last 10 000: queries
    metadata = pd.DataFrame({"key": [f"v{i}" for i in range(args.vectors)],
                             "label": (np.arange(args.vectors) % 1000).astype(str)})
    started = time.perf_counter()
    store = Store(root)
    reused = store.exists(f"{folders[0]}/index.json")
    build_index(vectors[:args.vectors], metadata, store.uri_of(folders[0]), factory=factory,
                train_size=min(args.vectors, 50 * nlist), seed=args.seed, nprobe=args.nprobe)
    copy = Store(store.uri_of(folders[1]))
    if not copy.exists("index.json"):   # a byte copy: the same answers, a full-size load at the switch
        source = Store(store.uri_of(folders[0]))
        for name in sorted(source.list(), key=lambda n: n == "index.json"):   # the manifest last
            copy.write_bytes(name, source.read_bytes(name))
    return root, folders, vectors, 0.0 if reused else time.perf_counter() - started


async def stream(url: str, token: str, queries: np.ndarray, k: int, clients: int, *, count: int | None = None,
                 seconds: float | None = None, on_tick=None) -> list[tuple[float, float, int, int | None]]:
    """(start, latency s, HTTP status or -1, answering generation) per request, over `clients`
    concurrent clients, for `count` requests in all or for `seconds`."""
    import aiohttp

    records: list[tuple[float, float, int, int | None]] = []
    bodies = [json.dumps({"embedding": q.tolist(), "k": k}) for q in queries]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    deadline = None if seconds is None else time.perf_counter() + seconds
    issued = 0

    async def client(session, offset: int) -> None:
        nonlocal issued
        turn = offset
        while True:
            if (count is not None and issued >= count) or (deadline is not None and time.perf_counter() >= deadline):
                return
            issued += 1
            body = bodies[turn % len(bodies)]
            turn += clients
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/search", data=body, headers=headers) as response:
                    payload = await response.json(content_type=None)
                    status = response.status
                sequence = payload.get("generation", {}).get("sequence") if status == 200 else None
            except Exception:
                status, sequence = -1, None
            records.append((start, time.perf_counter() - start, status, sequence))

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        tasks = [asyncio.create_task(client(session, i)) for i in range(clients)]
        if on_tick is not None:
            tasks.append(asyncio.create_task(on_tick()))
        await asyncio.gather(*tasks)
    return records


def percentiles_ms(records) -> tuple[float, float]:
    latencies = np.array([r[1] for r in records if r[2] == 200]) * 1000
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def recall_at_k(url: str, token: str, base: np.ndarray, queries: np.ndarray, k: int) -> float:
    import requests

    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    hits = 0
    with requests.Session() as session:
        for query in queries:
            exact = np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")[:k]
            answer = session.post(f"{url}/search", json={"embedding": query.tolist(), "k": k},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=60).json()
            hits += len(set(exact.tolist()) & {row["id"] for row in answer["results"]})
    return hits / (k * len(queries))


def main() -> int:
    args = parse_args()
    from ray import serve
    from rich.console import Console

    from components.release import read_pointer, switch_live
    from components.serving.auth import TOKEN_ENV
    from components.storage import Store
    from pipelines.config import load_config
    from pipelines.context import StageContext
    from pipelines.serve import add_arguments, start_service

    nlist = args.nlist or nlist_for(args.vectors)
    load_at_start = machine_load()
    print(f"index: {args.vectors:,} x {args.dim} vectors, IVF{nlist},SQ8, nprobe {args.nprobe}; "
          f"{load_at_start}", flush=True)
    root, folders, vectors, build_s = build_generations(args, nlist)
    print(f"index built in {build_s:.0f} s" if build_s else "index reused from the cache", flush=True)
    store = Store(root)
    pointer = read_pointer(store, NAME)
    if pointer is None or pointer.live.index not in folders:
        switch_live(store, NAME, store.uri_of(folders[0]), keep_generations=3)
    live_before = read_pointer(store, NAME).live.index
    target = folders[1] if live_before == folders[0] else folders[0]
    queries = vectors[args.vectors:]

    token = secrets.token_hex(32)
    os.environ[TOKEN_ENV] = token   # before Ray starts: the replicas inherit it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = load_config(None, [f"storage.root={root}"])
    context = StageContext(config, Console(stderr=True), stage="serve", verbose=True)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    serve_args = parser.parse_args(["--port", str(port), "--name", NAME, "--poll-seconds", "0.5",
                                    "--replicas", str(args.replicas), "--device", "cpu"])
    started = time.perf_counter()
    info = start_service(config, context, serve_args)
    startup_s = time.perf_counter() - started
    url = info["url"]
    try:
        asyncio.run(stream(url, token, queries[:100], args.k, 1, count=100))   # warm-up
        single = asyncio.run(stream(url, token, queries, args.k, 1, count=args.requests))
        p50, p99 = percentiles_ms(single)
        loaded = asyncio.run(stream(url, token, queries, args.k, args.clients, seconds=args.seconds))
        qps = sum(r[2] == 200 for r in loaded) / args.seconds
        lp50, lp99 = percentiles_ms(loaded)

        switch_at: list[float] = []

        async def switch_later() -> None:
            await asyncio.sleep(args.seconds / 3)
            switch_at.append(time.perf_counter())
            await asyncio.to_thread(switch_live, store, NAME, store.uri_of(target), keep_generations=3)

        switching = asyncio.run(stream(url, token, queries, args.k, args.clients, seconds=args.seconds,
                                       on_tick=switch_later))
        new_sequence = read_pointer(store, NAME).live.sequence
        failed = sum(r[2] != 200 for r in switching)
        sp50, sp99 = percentiles_ms(switching)
        first_new = min((r[0] + r[1] for r in switching if r[3] == new_sequence), default=None)
        picked_up_s = None if first_new is None else first_new - switch_at[0]
        recall = recall_at_k(url, token, vectors[:args.vectors], queries[:200], args.k)
    finally:
        serve.shutdown()

    figures = {
        "vectors": args.vectors, "dim": args.dim, "factory": f"IVF{nlist},SQ8", "nprobe": args.nprobe, "k": args.k,
        "index_build_s": round(build_s, 1), "service_startup_s": round(startup_s, 1),
        "single_client": {"requests": len(single), "failed": sum(r[2] != 200 for r in single),
                          "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)},
        "concurrent": {"clients": args.clients, "seconds": args.seconds, "requests": len(loaded),
                       "failed": sum(r[2] != 200 for r in loaded), "qps": round(qps, 1),
                       "p50_ms": round(lp50, 2), "p99_ms": round(lp99, 2)},
        "switch": {"clients": args.clients, "seconds": args.seconds, "requests": len(switching), "failed": failed,
                   "from": live_before, "to": target, "new_sequence": new_sequence,
                   "answered_by_new": sum(r[3] == new_sequence for r in switching),
                   "p50_ms": round(sp50, 2), "p99_ms": round(sp99, 2),
                   "new_generation_answering_after_s": None if picked_up_s is None else round(picked_up_s, 2)},
        f"recall@{args.k}_vs_exact": round(recall, 4),
        "replicas": args.replicas,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "load_start": load_at_start, "load_end": machine_load(),
                    "loadavg_1m_end": round(os.getloadavg()[0], 2)},
    }
    print()
    print(f"{'measure':44s} {'value':>12s}")
    rows = [
        ("index build (s, 0 = reused)", f"{build_s:.0f}"),
        ("service start (s)", f"{startup_s:.1f}"),
        (f"1 client: p50 latency, top-{args.k} (ms)", f"{p50:.2f}"),
        (f"1 client: p99 latency, top-{args.k} (ms)", f"{p99:.2f}   (target <= 20)"),
        (f"{args.clients} clients: queries per second", f"{qps:.1f}"),
        (f"{args.clients} clients: p50 / p99 latency (ms)", f"{lp50:.1f} / {lp99:.1f}"),
        ("switch under load: requests", f"{len(switching)}"),
        ("switch under load: failed requests", f"{failed}   (must be 0)"),
        ("switch under load: answered by the new index", f"{figures['switch']['answered_by_new']}"),
        ("switch under load: p50 / p99 latency (ms)", f"{sp50:.1f} / {sp99:.1f}"),
        ("switch: first answer from the new index (s)", "never" if picked_up_s is None else f"{picked_up_s:.2f}"),
        (f"recall@{args.k} of served answers vs exact", f"{recall:.3f}"),
    ]
    for label, value in rows:
        print(f"{label:44s} {value:>12s}")
    print(f"(end: {machine_load()}; {platform.platform()})")
    out = Path(args.out or Path(root) / "bench_serve.json")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0 if failed == 0 and picked_up_s is not None else 1


if __name__ == "__main__":
    sys.exit(main())
