"""The search service's KubeRay manifest (infra/kuberay/rayservice.yaml), checked against the
real things it names: Ray Serve's own config schema, the application builder it imports (called
the way Serve calls it), the FastAPI routes its probes hit, Ray's unauthenticated health paths,
and the project's pinned Ray version and images."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from components.errors import ConfigError
from components.serving.auth import TOKEN_ENV

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "infra" / "kuberay" / "rayservice.yaml"
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def pinned(package: str) -> str:
    for line in (REPO / "infra" / "constraints.txt").read_text().splitlines():
        match = re.match(rf"^{re.escape(package)}==(\S+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned in infra/constraints.txt")


def memory_bytes(quantity: str | int) -> int:
    text = str(quantity)
    for suffix, factor in QUANTITY.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


@pytest.fixture(scope="module")
def service() -> dict:
    (obj,) = [o for o in yaml.safe_load_all(MANIFEST.read_text()) if o]
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayService"
    return obj


@pytest.fixture(scope="module")
def serve_config(service):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))   # Serve's own schema


def containers(service) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    found = list(cluster["headGroupSpec"]["template"]["spec"]["containers"])
    for group in cluster["workerGroupSpecs"]:
        found += group["template"]["spec"]["containers"]
    return found


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_cluster_runs_the_pinned_ray_on_the_project_image(service):
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == pinned("ray")
    standing = yaml.safe_load((REPO / "infra" / "kuberay" / "raycluster.yaml").read_text())
    (standing_head,) = standing["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    for container in containers(service):
        assert container["image"] == standing_head["image"] == "chipmatch:cuda", container["name"]
        assert container["workingDir"] == "/opt/chipmatch"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_tokens_come_from_secrets_and_ray_auth_is_on(service):
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "chipmatch-ray-token"}
    for container in containers(service):
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "chipmatch-ray-token", "key": "auth_token"}
        assert "value" not in env[TOKEN_ENV]   # the replicas read the API token from here (components.serving.auth)
        assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {"name": "chipmatch-serve-token", "key": "token"}
        assert {"secretRef": {"name": "chipmatch-storage"}} in container["envFrom"]


def test_serve_config_imports_the_builder_and_builds_the_deployment(serve_config, monkeypatch):
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from components.serving.app import APP_NAME, DEPLOYMENT_NAME, build_app

    (application,) = serve_config.applications
    assert (application.name, application.route_prefix) == (APP_NAME, "/")
    assert import_attr(application.import_path) is build_app
    assert application.args["storage_root"].startswith("s3://") and application.args["name"] == "chipmatch"
    monkeypatch.setenv(TOKEN_ENV, "k8s-secret-" + "0" * 32)
    built = call_user_app_builder_with_args_if_necessary(build_app, application.args)   # as Serve calls it
    assert built._bound_deployment.name == DEPLOYMENT_NAME
    assert [d.name for d in application.deployments] == [DEPLOYMENT_NAME]
    # The proxy listens on 0.0.0.0: without the token in the environment the builder refuses.
    assert serve_config.http_options.host == application.args["host"] == "0.0.0.0"
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        call_user_app_builder_with_args_if_necessary(build_app, application.args)


def test_user_config_is_what_the_replica_reconfigures(serve_config):
    from components.serving.app import SearchReplica

    (deployment,) = serve_config.applications[0].deployments
    periods: list[float] = []
    SearchReplica.reconfigure(SimpleNamespace(_follower=SimpleNamespace(set_period=periods.append)),
                              deployment.user_config)
    assert periods == [deployment.user_config["poll_seconds"]]


def test_resources_fit_the_replicas(service, serve_config):
    (deployment,) = serve_config.applications[0].deployments
    actor = deployment.ray_actor_options.model_dump()
    for container in containers(service):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
        assert memory_bytes(resources["limits"]["memory"]) >= memory_bytes(resources["requests"]["memory"])
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    capacity = 0.0
    for group in workers:
        (worker,) = group["template"]["spec"]["containers"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        cpus, memory = float(worker["resources"]["requests"]["cpu"]), memory_bytes(worker["resources"]["requests"]["memory"])
        assert cpus >= actor["num_cpus"] and memory >= actor["memory"]
        capacity += group["replicas"] * min(cpus // actor["num_cpus"], memory // actor["memory"])
    assert capacity >= deployment.num_replicas   # the initial workers hold every replica


def test_probes_hit_the_unauthenticated_health_routes(service, serve_config):
    from ray.dashboard.http_server_agent import PUBLIC_EXACT_PATHS

    from components.serving import app as serving

    # FastAPI's own description of the routes: the token dependency adds the Authorization header.
    paths = serving.app.openapi()["paths"]

    def checks_token(path: str, method: str = "get") -> bool:
        return {"name": "authorization", "in": "header"} in [
            {"name": p["name"], "in": p["in"]} for p in paths[path][method].get("parameters", [])]

    assert not checks_token("/healthz") and checks_token("/search", "post") and checks_token("/live")
    head_source = Path(importlib.util.find_spec("ray.dashboard.http_server_head").origin).read_text()
    cluster = service["spec"]["rayClusterConfig"]
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    groups = [group["template"]["spec"]["containers"][0] for group in cluster["workerGroupSpecs"]]
    for container in [head, *groups]:
        ready = container["readinessProbe"]["httpGet"]
        assert (ready["path"], ready["port"]) == ("/healthz", serve_config.http_options.port)
        assert {"containerPort": ready["port"], "name": "serve"} in container["ports"]
    assert head["livenessProbe"]["httpGet"] == {"path": "/api/gcs_healthz", "port": 8265}
    assert '"/api/gcs_healthz",  # GCS health check' in head_source
    for worker in groups:
        assert worker["livenessProbe"]["httpGet"] == {"path": "/api/local_raylet_healthz", "port": 52365}
        assert "/api/local_raylet_healthz" in PUBLIC_EXACT_PATHS
