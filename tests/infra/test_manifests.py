"""What the pipeline relies on in infra/: every manifest, YAML and Dockerfile parsed and checked.

Images, entrypoints, Ray token authentication from Kubernetes secrets, GPU worker groups,
schedules, probes, and that no secret is ever written into a committed file. Where a check
can be made against the real thing (Ray's cluster-config schema, Ray's and MLflow's lists of
unauthenticated health paths, the project's pinned versions) it is.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
RAY_KINDS = {"RayCluster", "RayJob", "RayCronJob"}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL|_KEY$", re.IGNORECASE)


def pinned(package: str) -> str:
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        match = re.match(rf"^{re.escape(package)}==(\S+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned in infra/constraints.txt")


def k8s_objects() -> list[tuple[Path, dict]]:
    objects = []
    for path in sorted(INFRA.rglob("*.yaml")):
        if path.parent.name == "ray":  # the cluster launcher config is not a Kubernetes object
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                objects.append((path, document))
    return objects


def of_kind(kind: str) -> list[dict]:
    return [obj for _, obj in k8s_objects() if obj["kind"] == kind]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for _, obj in k8s_objects():
        if obj["kind"] == "RayCluster":
            specs.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] == "RayJob":
            specs.append((obj["metadata"]["name"], obj["spec"]["rayClusterSpec"]))
        elif obj["kind"] == "RayCronJob":
            specs.append((obj["metadata"]["name"], obj["spec"]["jobTemplate"]["rayClusterSpec"]))
    return specs


def ray_job_specs() -> list[tuple[str, dict]]:
    jobs = [(o["metadata"]["name"], o["spec"]) for o in of_kind("RayJob")]
    return jobs + [(o["metadata"]["name"], o["spec"]["jobTemplate"]) for o in of_kind("RayCronJob")]


def containers_of(obj: dict) -> list[dict]:
    """Every container spec anywhere inside a Kubernetes object."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(obj)
    return found


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in (INFRA / "docker" / name).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def args(instructions, keyword: str) -> list[str]:
    return [rest for key, rest in instructions if key == keyword]


# -- every file parses ---------------------------------------------------------------------
def test_every_manifest_parses_and_is_a_kubernetes_object():
    objects = k8s_objects()
    assert {obj["kind"] for _, obj in objects} >= {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Deployment", "Service"}
    for path, obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), path


def test_shell_scripts_parse():
    scripts = sorted(INFRA.rglob("*.sh"))
    assert {p.name for p in scripts} >= {"server.sh", "retrain.sh", "setup_env.sh"}
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)


# -- secrets ----------------------------------------------------------------------------------
def test_no_secret_is_committed():
    assert of_kind("Secret") == []
    for path, obj in k8s_objects():
        for container in containers_of(obj):
            for name, entry in env_of(container).items():
                if SECRET_NAME.search(name):
                    assert "value" not in entry, f"{path}: {name} has a literal value; take it from a secret"
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{path}: {name} must come from a secret"
    for name in ("Dockerfile", "Dockerfile.cuda", "Dockerfile.mlflow"):
        for key, rest in dockerfile(name):
            if key in ("ENV", "ARG"):
                assert not SECRET_NAME.search(rest.split("=")[0]), f"{name}: {key} {rest} puts a secret in the image"
    text = "\n".join(p.read_text() for p in INFRA.rglob("*") if p.is_file())
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # no AWS access key id anywhere


def test_ray_token_authentication_in_every_ray_container():
    ray_objects = [obj for _, obj in k8s_objects() if obj["kind"] in RAY_KINDS]
    submitters = [o for o in of_kind("CronJob")]
    assert len(ray_objects) == 3 and submitters
    for obj in ray_objects + submitters:
        containers = containers_of(obj)
        assert containers
        for container in containers:
            env = env_of(container)
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (obj["metadata"]["name"], container["name"])
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "chipmatch-ray-token", "key": "auth_token"}


def test_every_ray_job_submitter_carries_the_token():
    for name, job in ray_job_specs():
        (submitter,) = job["submitterPodTemplate"]["spec"]["containers"]
        assert "RAY_AUTH_TOKEN" in env_of(submitter), name


# -- clusters, images, resources, probes ------------------------------------------------------
def test_clusters_have_a_gpu_worker_group_on_the_cuda_image():
    ray_version = pinned("ray")
    specs = ray_cluster_specs()
    assert len(specs) == 3
    for name, spec in specs:
        assert spec["rayVersion"] == ray_version, name
        (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
        assert gpu_groups, f"{name} has no GPU worker group"
        for group in gpu_groups:
            (worker,) = group["template"]["spec"]["containers"]
            assert worker["image"] == head["image"] == "chipmatch:cuda", name  # one Python across the cluster
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
            assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"]  # extended resources: equal
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"


def test_dashboard_and_job_api_are_not_exposed_outside_the_cluster():
    for name, spec in ray_cluster_specs():
        assert spec["headGroupSpec"].get("serviceType") == "ClusterIP", name
    for service in of_kind("Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert of_kind("Ingress") == []


def _public_paths(module: str) -> str:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).read_text()


def test_ray_probes_use_health_endpoints_ray_serves_without_a_token():
    head_source = _public_paths("ray.dashboard.http_server_head")
    from ray.dashboard.http_server_agent import PUBLIC_EXACT_PATHS

    for name, spec in ray_cluster_specs():
        (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            get = head[probe]["httpGet"]
            assert (get["path"], get["port"]) == ("/api/gcs_healthz", 8265), name
            assert f'"{get["path"]}",  # GCS health check' in head_source
            for group in spec["workerGroupSpecs"]:
                worker_get = group["template"]["spec"]["containers"][0][probe]["httpGet"]
                assert (worker_get["path"], worker_get["port"]) == ("/api/local_raylet_healthz", 52365), name
                assert worker_get["path"] in PUBLIC_EXACT_PATHS


def test_mlflow_deployment_probes_secrets_and_auth():
    (deployment,) = of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("chipmatch-mlflow:") and container["image"].endswith(pinned("mlflow"))
    env = env_of(container)
    assert "MLFLOW_INSECURE_NO_AUTH" not in env  # 0.0.0.0 is only allowed because auth is on
    assert env["MLFLOW_HOST"]["value"] == "0.0.0.0"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert {"secretRef": {"name": "chipmatch-mlflow-server"}} in container["envFrom"]
    auth_source = _public_paths("mlflow.server.auth")  # read, not imported: it needs Flask-WTF
    unprotected = re.search(r"_UNPROTECTED_PATH_PREFIXES = \(([^)]*)\)", auth_source).group(1)
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and f'"{get["path"]}"' in unprotected
        assert get["port"] == container["ports"][0]["containerPort"]
        host = {h["name"]: h["value"] for h in get["httpHeaders"]}["Host"]
        allowed = env["MLFLOW_ALLOWED_HOSTS"]["value"].split(",")
        assert any(re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), host) for pattern in allowed)
    # The Ray side authenticates as an MLflow user from its own secret.
    for _, obj in k8s_objects():
        if obj["kind"] in RAY_KINDS:
            for container in containers_of(obj):
                if container["name"] != "ray-job-submitter":
                    assert {"secretRef": {"name": "chipmatch-mlflow-client"}} in container["envFrom"]


# -- entrypoints and schedules ----------------------------------------------------------------
def _cli_words(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "chipmatch"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["chipmatch"] == "pipelines.cli:main"
    config = words[words.index("--config") + 1]
    assert (REPO / config).is_file(), f"{config} does not exist"
    return words


def test_entrypoints_run_the_pipeline_and_the_retrain():
    (job,) = of_kind("RayJob")
    assert _cli_words(job["spec"]["entrypoint"])[1] == "run"
    (cron,) = of_kind("RayCronJob")
    words = _cli_words(cron["spec"]["jobTemplate"]["entrypoint"])
    assert words[1] == "retrain" and "--json" in words
    assert any(w.startswith("storage.root=s3://") for w in words)
    (cronjob,) = of_kind("CronJob")
    (submit,) = containers_of(cronjob)
    assert submit["command"] == ["infra/schedule/retrain.sh"] and submit["workingDir"] == "/opt/chipmatch"
    env = env_of(submit)
    assert (REPO / env["CHIPMATCH_CONFIG"]["value"]).is_file()
    assert env["RAY_ADDRESS"]["value"] == f"http://{of_kind('RayCluster')[0]['metadata']['name']}-head-svc:8265"
    script = (INFRA / "schedule" / "retrain.sh").read_text()
    assert 'STAGE="${CHIPMATCH_STAGE:-retrain}"' in script and "export RAY_AUTH_MODE=token" in script


CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expression: str) -> bool:
    fields = expression.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, CRON_RANGES):
        if not CRON_FIELD.match(field):
            return False
        if any(not low <= int(n) <= high for n in re.findall(r"(?<![/\d])\d+", field)):
            return False
    return True


def test_schedules_are_valid_and_agree():
    assert valid_cron("*/15 0-6 * * 1,3") and not valid_cron("61 2 * * *") and not valid_cron("0 2 * *")
    (cron,) = of_kind("RayCronJob")
    (cronjob,) = of_kind("CronJob")
    line = [text for text in (INFRA / "schedule" / "chipmatch-retrain.cron").read_text().splitlines()
            if text and not text.startswith("#") and "=" not in text.split()[0]][0]
    schedules = {cron["spec"]["schedule"], cronjob["spec"]["schedule"], " ".join(line.split()[:5])}
    assert len(schedules) == 1 and valid_cron(schedules.pop())
    for obj in (cron, cronjob):
        ZoneInfo(obj["spec"]["timeZone"])
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["shutdownAfterJobFinishes"] is True
    assert "retrain.sh" in line and "flock -n" in line


# -- Ray cluster launcher ---------------------------------------------------------------------
def test_cluster_launcher_config_is_valid_for_ray_with_a_gpu_group_and_token_auth():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's own schema
    gpu_types = [t for t in raw["available_node_types"].values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and all("--gpus all" in t["docker"]["worker_run_options"] for t in gpu_types)
    assert raw["docker"]["image"] == "chipmatch:cuda"
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert raw["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token ray start --address" in " ".join(raw["worker_start_ray_commands"])
    # That variable pins every Ray port to loopback: right for tests, fatal for a cluster.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in (INFRA / "ray" / "cluster.yaml").read_text()


# -- Dockerfiles ------------------------------------------------------------------------------
def _dockerignore(name: str) -> set[str]:
    return set((INFRA / "docker" / f"{name}.dockerignore").read_text().split())


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_project_images_install_the_pinned_environment(name):
    steps = dockerfile(name)
    run = " ".join(args(steps, "RUN"))
    assert "infra/setup_env.sh" in run
    assert "/etc/profile.d/" in run  # KubeRay's login shell keeps the venv on PATH
    assert args(steps, "ENTRYPOINT") == ['["chipmatch"]']
    assert args(steps, "USER") == ["chipmatch"]
    assert {".venv", ".git", "*.env", "chipmatch-data"} <= _dockerignore(name)
    for source in (rest.split()[0] for rest in args(steps, "COPY")):
        assert (REPO / source).exists()


def test_cpu_image():
    steps = dockerfile("Dockerfile")
    assert args(steps, "FROM")[0].startswith("python:3.11")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in [f"{k} {r}" for k, r in steps]


def test_cuda_image_matches_torch_and_faiss_to_cuda_13():
    steps = dockerfile("Dockerfile.cuda")
    base = args(steps, "ARG")
    assert "CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04" in base  # glibc 2.39 for faiss's wheel
    assert "FAISS_GPU=faiss-gpu-cu13-cuvs==1.15.0" in base
    assert pinned("torch") == "2.13.0"  # PyPI's torch 2.13.0 is the CUDA 13.0 build
    env = " ".join(args(steps, "ENV"))
    assert "PYTHON=python3.12" in env and "TORCH_INDEX_URL" not in env  # the wheel is cp312 only
    run = " ".join(args(steps, "RUN"))
    assert "python3.12-venv" in run
    assert "pip uninstall -y faiss-cpu" in run and 'install --no-deps "$FAISS_GPU"' in run
    assert "StandardGpuResources" in run  # the build fails if GPU faiss does not load


def test_mlflow_image():
    steps = dockerfile("Dockerfile.mlflow")
    run = " ".join(args(steps, "RUN"))
    assert f'"mlflow[auth]=={pinned("mlflow")}"' in run and "psycopg2-binary" in run and "boto3" in run
    assert args(steps, "ENTRYPOINT") == ['["/opt/mlflow/server.sh"]']
    assert args(steps, "USER") == ["mlflow"]


# -- the MLflow server script -----------------------------------------------------------------
def _server(env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {"PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([str(INFRA / "mlflow" / "server.sh")], env={**base, **env}, capture_output=True,
                          text=True, timeout=timeout)


STORES = {"MLFLOW_BACKEND_STORE_URI": "sqlite:////tmp/x.db", "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/art"}


def test_server_refuses_to_run_without_authentication_off_loopback():
    result = _server({**STORES, "MLFLOW_INSECURE_NO_AUTH": "1", "MLFLOW_HOST": "0.0.0.0"})
    assert result.returncode == 2 and "only allowed on a loopback host" in result.stderr
    result = _server({**STORES, "MLFLOW_HOST": "0.0.0.0", "MLFLOW_AUTH_DATABASE_URI": "sqlite:////tmp/a.db",
                      "MLFLOW_AUTH_ADMIN_USERNAME": "admin"})
    assert result.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr
    result = _server({"MLFLOW_ARTIFACTS_DESTINATION": "/tmp/art"})
    assert result.returncode == 2 and "MLFLOW_BACKEND_STORE_URI" in result.stderr


def test_server_with_basic_auth_refuses_anonymous_requests(tmp_path):
    import signal
    import socket
    import time
    import urllib.error
    import urllib.request
    from base64 import b64encode

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    password = "chipmatch-" + os.urandom(8).hex()
    env = {
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/auth.db",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
        "TMPDIR": str(tmp_path),
    }
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(INFRA / "mlflow" / "server.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def status(path: str, auth: str | None = None) -> int:
        request = urllib.request.Request(url + path)
        if auth:
            request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        deadline = time.monotonic() + 55
        while True:
            try:
                if status("/health") == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "server not up in 55 s: " + (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status(search) == 401
        assert status(search, f"admin:{password}x") == 401
        assert status(search, f"admin:{password}") == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
        log.close()
