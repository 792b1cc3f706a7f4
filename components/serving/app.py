"""The Ray Serve deployment of the search service, with its FastAPI ingress.

    POST /search    {"embedding": [...]} or {"image": "<base64>"}, "k", filters   (token)
    GET  /live      the generation answering: pointer sequence, index, factory, model (token)
    GET  /healthz   {"status": "ok"} while the replica follows the pointer     (no token:
                    Kubernetes probes cannot send one, and it says nothing about the data)

Every search response names the generation that answered it (``generation.sequence``), so
a client can tell when a switch of the live pointer reached the service.

Each replica holds one `LiveFollower` (`components.serving.live`): the index in memory and
the thread that follows ``LIVE.json``. Endpoints are plain functions, so FastAPI runs them
in its thread pool while faiss and torch work outside the GIL.

The token check is a FastAPI dependency, so a request without the right token is refused
(401) before its body is parsed. The dependency reads the expected token from a module-level
holder that the replica's constructor fills: Ray runs every replica in a process of its own,
so one module holds one replica's token.

`search_application` binds the deployment for `serve.run` (the `serve` stage, tests, the
benchmark); `build_app` is the application builder a Serve config names
(``import_path: components.serving.app:build_app``, e.g. in a KubeRay RayService).

No `from __future__ import annotations` here: Serve re-signs the endpoint methods, and FastAPI
then cannot resolve string annotations (the request body would be taken for a query parameter).
"""

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from components.errors import ConfigError
from components.serving.auth import TOKEN_ENV, bearer_token_matches, require_token
from components.serving.live import LiveFollower
from components.serving.query import QueryError, SearchRequest, query_vector, search_filter

APP_NAME = "chipmatch-search"
DEPLOYMENT_NAME = "ChipmatchSearch"
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_MAX_ONGOING_REQUESTS = 32


class _ReplicaToken:
    """The token this replica's process expects (None: no check, an insecure loopback service)."""

    value: str | None = None


def _check_token(authorization: Annotated[str | None, Header()] = None) -> None:
    expected = _ReplicaToken.value
    if expected is not None and not bearer_token_matches(authorization, expected):
        raise HTTPException(status_code=401, detail="missing or wrong API token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


app = FastAPI(title="chipmatch search", docs_url=None, redoc_url=None, openapi_url=None)
_TOKEN = [Depends(_check_token)]


class SearchReplica:
    """One replica: the live index of `name` under `root`, kept up to date every `poll_seconds`."""

    def __init__(self, root: str, name: str, require_token: bool, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 device: str = "auto") -> None:
        token = os.environ.get(TOKEN_ENV) or None
        if require_token and token is None:
            raise ConfigError(f"{TOKEN_ENV} is not set in the environment of the Ray worker running the search "
                              "service: set it where Ray starts (the pod's env from a Kubernetes secret, or the "
                              "shell that runs `chipmatch serve`)")
        _ReplicaToken.value = token if require_token else None
        self._follower = LiveFollower(root, name, poll_seconds, device)
        self._follower.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's live settings (``user_config``): ``poll_seconds``, changed without a restart."""
        unknown = sorted(set(user_config) - {"poll_seconds"})
        if unknown:
            raise ConfigError(f"unknown user_config keys {unknown} for the search service; known: ['poll_seconds']")
        if "poll_seconds" in user_config:
            self._follower.set_period(user_config["poll_seconds"])

    def check_health(self) -> None:
        """Serve's replica health check: unhealthy once the follower thread is gone."""
        if not self._follower.running:
            raise RuntimeError("the live pointer follower stopped")

    def __del__(self) -> None:   # Serve's graceful shutdown
        follower = getattr(self, "_follower", None)
        if follower is not None:
            follower.stop(timeout_s=2.0)

    @app.get("/healthz")
    def healthz(self) -> Any:
        if not self._follower.running:
            return JSONResponse({"status": "stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/live", dependencies=_TOKEN)
    def live(self) -> dict[str, Any]:
        return {**self._follower.current.describe(), "last_error": self._follower.last_error}

    @app.post("/search", dependencies=_TOKEN)
    def search(self, request: SearchRequest) -> JSONResponse:
        served = self._follower.current   # read once: this request answers from this generation
        searcher = served.searcher
        try:
            vector = query_vector(request, served.model, served.image, searcher.manifest.dim, served.tap)
            scores, ids = searcher.search_arrays(vector, k=request.k, search_filter=search_filter(request),
                                                 nprobe=request.nprobe, ef_search=request.ef_search)
        except (QueryError, ValueError, TypeError) as exc:   # a filter on a column the index lacks, ...
            raise HTTPException(status_code=400, detail=str(exc)) from None
        # A JSONResponse as it is: the rows are JSON values already (FastAPI's encoder would walk them again).
        return JSONResponse({"generation": {"name": served.name, "sequence": served.sequence, "index": served.index},
                             "k": request.k, "results": served.columns.rows(scores[0], ids[0])})


# The deployment: Serve's decorators applied as calls, so type checkers see a Deployment, not the class.
SearchService = serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_wait_loop_s=1,   # a stopping replica finishes the requests it holds first
    graceful_shutdown_timeout_s=30,
)(serve.ingress(app)(SearchReplica))


def search_application(root: str, name: str, *, require_token: bool, poll_seconds: float = DEFAULT_POLL_SECONDS,
                       device: str = "auto", num_replicas: int = 1, num_cpus: float = 1.0,
                       max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS) -> Application:
    """The service bound for `serve.run`: `num_replicas` replicas of `num_cpus` CPUs each."""
    return SearchService.options(
        num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=max_ongoing_requests,
    ).bind(root, name, require_token, poll_seconds, device)


_BUILDER_ARGS = {"storage_root", "name", "host", "insecure", "poll_seconds", "device", "num_replicas", "num_cpus",
                 "max_ongoing_requests"}


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder (a Serve config's ``import_path``; ``args`` from its ``args``):
    storage_root and name (required); host, the address the Serve proxy listens on (default
    0.0.0.0, only for the loopback rule of insecure); insecure (default false); poll_seconds,
    device, num_replicas, num_cpus, max_ongoing_requests. The token comes from the environment."""
    unknown = sorted(set(args) - _BUILDER_ARGS)
    if unknown:
        raise ConfigError(f"unknown args {unknown} for {__name__}:build_app; known: {sorted(_BUILDER_ARGS)}")
    missing = [key for key in ("storage_root", "name") if not args.get(key)]
    if missing:
        raise ConfigError(f"args {missing} are required for {__name__}:build_app (the storage root and the live "
                          "index name, as in indexes/<name>/LIVE.json)")
    required = require_token(str(args.get("host", "0.0.0.0")), os.environ.get(TOKEN_ENV) or None,
                             bool(args.get("insecure", False)))
    return search_application(
        str(args["storage_root"]), str(args["name"]), require_token=required,
        poll_seconds=float(args.get("poll_seconds", DEFAULT_POLL_SECONDS)), device=str(args.get("device", "auto")),
        num_replicas=int(args.get("num_replicas", 1)), num_cpus=float(args.get("num_cpus", 1.0)),
        max_ongoing_requests=int(args.get("max_ongoing_requests", DEFAULT_MAX_ONGOING_REQUESTS)),
    )
