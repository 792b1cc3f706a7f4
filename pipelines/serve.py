"""`chipmatch serve`: the search service over the live index, until interrupted.

    CHIPMATCH_SERVE_TOKEN=$(openssl rand -hex 32) chipmatch serve --port 8000
    chipmatch serve --insecure                       # no token: 127.0.0.1 only

Resolves the live index of `--name` (default: `retrain.name`, the pointer `chipmatch retrain`
switches: ``<storage.root>/indexes/<name>/LIVE.json``), starts Ray like every stage
(`StageContext.ensure_ray`: an embedded cluster on 127.0.0.1, or the configured one) and
Ray Serve's HTTP proxy on `--host` (default 127.0.0.1) and `--port`, deploys
`components.serving` and blocks. SIGINT or SIGTERM shut Serve down (replicas finish the
requests they hold) and the stage returns. The token rules are checked before Ray starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from components.errors import ConfigError
from components.release import resolve_live
from components.serving.auth import TOKEN_ENV, require_token
from pipelines.config import Config
from pipelines.context import StageContext

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` subcommand's options."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address Serve's HTTP proxy listens on (default 127.0.0.1; 0.0.0.0 needs a token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument("--name", help="live index name: indexes/<name>/LIVE.json (default: retrain.name)")
    parser.add_argument("--insecure", action="store_true",
                        help=f"run without an API token ({TOKEN_ENV}); allowed on a loopback host only")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often the live pointer is re-read (default 2)")
    parser.add_argument("--replicas", type=int, default=1, help="Serve replicas, each holding the index (default 1)")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where faiss searches (default: a GPU where faiss's GPU build sees one)")


def index_name(config: Config, args: argparse.Namespace) -> str:
    """`--name`, else `retrain.name` (what `chipmatch retrain`, `promote` and `rollback` switch)."""
    return str(args.name) if args.name else config.retrain.name


def start_service(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    """Check the token rules and the live pointer, start Ray and Serve, deploy; what runs where."""
    from ray import serve

    from components.serving.app import APP_NAME, search_application
    from components.serving.live import check_period
    from pipelines.ray_compat import serve_http_address

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {args.replicas}")
    if not args.replica_cpus > 0:
        raise ConfigError(f"--replica-cpus must be positive, got {args.replica_cpus}")
    check_period(args.poll_seconds)   # ConfigError naming poll_seconds, before Ray starts
    required = require_token(args.host, os.environ.get(TOKEN_ENV) or None, args.insecure)
    name = index_name(config, args)
    live_uri = resolve_live(context.store, name)   # FileNotFoundError naming the pointer before Ray starts
    context.ensure_ray()
    running = serve_http_address()
    if running is not None and running != (args.host, args.port):
        # serve.start keeps a running instance's HTTP options (host included) and ignores ours,
        # so the token rule checked above for --host would not hold for where it really listens.
        raise ConfigError(f"Ray Serve already runs on this cluster with its HTTP proxy on {running[0]}:{running[1]}, "
                          f"not --host {args.host} --port {args.port}: pass those, stop it (`serve shutdown`), or "
                          "deploy the RayService manifest (infra/kuberay/rayservice.yaml) instead")
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(search_application(context.store.uri, name, require_token=required, poll_seconds=args.poll_seconds,
                                     device=args.device, num_replicas=args.replicas, num_cpus=args.replica_cpus),
                  name=APP_NAME, route_prefix="/")
    except BaseException:
        serve.shutdown()   # a failed start leaves no proxy or half-deployed app behind
        raise
    host = f"[{args.host}]" if ":" in args.host else args.host
    return {"stage": "serve", "url": f"http://{host}:{args.port}", "name": name, "index": live_uri,
            "token_required": required}


def wait_for_signal(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> str:
    """Block until one of `signals` arrives (main thread only); its name. The previous
    handlers are put back afterwards."""
    received: list[int] = []
    arrived = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        arrived.set()

    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        while not arrived.wait(0.5):   # a bounded wait keeps the main thread responsive to signals
            pass
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return signal.Signals(received[0]).name


def run_serve(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    """Serve until SIGINT/SIGTERM, then shut Serve down; what was served."""
    from ray import serve

    result = start_service(config, context, args)
    auth = "bearer token required" if result["token_required"] else "NO token (--insecure, loopback only)"
    context.console.print(f"search service for [bold]{result['name']}[/] at {result['url']} ({auth}); "
                          f"answering from {result['index']}; Ctrl-C to stop")
    try:
        result["stopped_by"] = wait_for_signal()
    finally:
        serve.shutdown()
    context.console.print(f"search service stopped ({result.get('stopped_by', 'error')})")
    return result
