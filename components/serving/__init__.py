"""The search service: `chipmatch serve` answers k-NN queries from the live index over HTTP.

What this package owns:
- the API token rules (`auth`): a bearer token from the environment (``CHIPMATCH_SERVE_TOKEN``),
  compared in constant time; without one the service starts only with an explicit
  ``insecure`` on a loopback host;
- following the live index pointer (`live`): the index (and model) the pointer names,
  loaded in full, and a background check that loads the next generation and swaps one
  reference, so requests in flight finish on the generation they started with;
- the request and response shapes (`query`): an embedding or a base64 image, k, the
  metadata filters of `components.index.SearchFilter`, and result rows with ids,
  scores, distances, labels and metadata;
- the Ray Serve deployment with its FastAPI ingress (`app`): POST /search, GET /live,
  GET /healthz, and `build_app`, the import path a Serve config (RayService) names.

Ray Serve is the serving library: the stages already run on Ray, so the service deploys to
the same cluster (KubeRay's RayService) with replicas, health checks and graceful shutdown
that need no code here.

What it may import: `components.index` (search), `components.inference` (models and the
one embedding path), `components.release` (the live pointer), `components.storage`, and
`components.data.decode` (with its `Rejection`, `components.data.records`) only, to turn a
query image into a chip exactly as ingest did;
plus the shared `components.errors` / `components.constants` / `components.lazy` (the lazy exports). Never `pipelines`: the
`serve` stage starts this service, not the other way round.

Public API (imported lazily, so importing the package does not load Ray Serve or faiss):
    TOKEN_ENV, require_token, bearer_token_matches, is_loopback   (components.serving.auth)
    ServedIndex, LiveFollower, load_live                          (components.serving.live)
    SearchRequest, search_filter, ResultColumns                   (components.serving.query)
    SearchService, search_application, build_app                  (components.serving.app)
"""

from __future__ import annotations

from typing import Any

from components.lazy import lazy_attribute

_EXPORTS = {
    "TOKEN_ENV": "components.serving.auth",
    "require_token": "components.serving.auth",
    "bearer_token_matches": "components.serving.auth",
    "is_loopback": "components.serving.auth",
    "ServedIndex": "components.serving.live",
    "LiveFollower": "components.serving.live",
    "load_live": "components.serving.live",
    "SearchRequest": "components.serving.query",
    "search_filter": "components.serving.query",
    "ResultColumns": "components.serving.query",
    "SearchService": "components.serving.app",
    "search_application": "components.serving.app",
    "build_app": "components.serving.app",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _EXPORTS, name)
