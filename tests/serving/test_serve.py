"""`chipmatch serve` for real: Ray Serve on 127.0.0.1 over a small FAISS index built with
components.index, started through the stage's own `start_service`.

One Serve application serves the whole module (Serve starts slowly on a busy 2-core machine).
Answers are checked against numpy brute force over the vectors the index was built from; the
last tests switch the live pointer under a stream of requests, then stop the stage by SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from PIL import Image
from rich.console import Console

from components.errors import ConfigError
from components.index import build_index
from components.inference import embed_arrays, load_model, make_bundle, save_bundle
from components.losses import build_loss
from components.models import build_model
from components.release import switch_live
from components.serving.auth import TOKEN_ENV, bearer_token_matches, is_loopback, require_token
from components.storage import Store
from components.storage.layout import INDEX_SOURCE_FILENAME
from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.serve import add_arguments, run_serve, start_service, wait_for_signal

NAME = "serving-test"
TOKEN = "serve-test-" + "5f0c9a7e31d24b68"
SIZE, DIM, COUNT = 16, 16, 240
LABELS = np.array(["sedan", "pickup", "van", "bus"])
START = pd.Timestamp("2024-01-01T00:00:00Z")
SECOND_IDS = 10_000   # the second generation's ids start here: answers show which index gave them


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def metadata_table(count: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "key": [f"chip-{first_id + i:05d}" for i in range(count)],
        "label": LABELS[rng.integers(0, len(LABELS), count)],
        "lon": rng.uniform(-10, 10, count),
        "lat": rng.uniform(40, 50, count),
        "time": START + pd.to_timedelta(rng.integers(0, 365, count), unit="D"),
        "scene_id": [f"scene-{i}" for i in rng.integers(0, 6, count)],
    })


def exact_top_k(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int,
                allowed: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """Brute force: cosine scores of every allowed vector, best first, ties by id."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    keep = np.ones(len(ids), bool) if allowed is None else allowed
    order = np.lexsort((ids[keep], -scores[keep]))[:k]
    return ids[keep][order].tolist(), scores[keep][order]


@dataclass
class Generation:
    """The vectors and metadata an index was built from: the reference for its answers."""

    uri: str
    vectors: np.ndarray
    ids: np.ndarray
    metadata: pd.DataFrame


@dataclass
class Service:
    url: str
    root: str
    first: Generation
    chips: np.ndarray
    model_uri: str
    config: object
    context: StageContext

    def post(self, body: dict, token: str | None = TOKEN, session=requests) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return session.post(f"{self.url}/search", json=body, headers=headers, timeout=30)

    def live(self) -> dict:
        response = requests.get(f"{self.url}/live", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray
    from ray import serve

    root = tmp_path_factory.mktemp("serve_store")
    torch.manual_seed(0)
    model = build_model("small_cnn", embedding_dim=DIM, image_size=SIZE)
    loss = build_loss("cross_entropy", num_classes=len(LABELS), embedding_dim=DIM)
    model_uri = str(root / "models" / "m1")
    save_bundle(make_bundle(model, loss, "cross_entropy", {"num_classes": len(LABELS), "embedding_dim": DIM},
                            LABELS.tolist(), "synthetic", {}, 1), model_uri)
    chips = np.random.default_rng(1).integers(0, 256, (COUNT, SIZE, SIZE), dtype=np.uint8)
    vectors = embed_arrays(load_model(model_uri), chips, taps=("embedding",))["embedding"]
    first_uri = str(root / "indexes" / NAME / "gen-1")
    build_index(vectors, metadata_table(COUNT, seed=2), first_uri, factory="Flat", num_shards=2)
    Store(first_uri).write_json(INDEX_SOURCE_FILENAME, {"model_uri": model_uri, "image": {"size": SIZE, "channels": 1}})
    switch_live(Store(str(root)), NAME, first_uri, keep_generations=3)

    patch = pytest.MonkeyPatch()
    patch.setenv(TOKEN_ENV, TOKEN)
    if ray.is_initialized():   # replicas read the token from the environment Ray starts with
        ray.shutdown()
    config = load_config(None, [f"storage.root={root}", "ray.num_cpus=2"])
    context = StageContext(config, Console(stderr=True), stage="serve", verbose=True)
    port = free_port()
    args = serve_args("--port", str(port), "--name", NAME, "--poll-seconds", "0.5")
    try:
        info = start_service(config, context, args)
        assert info["token_required"] and info["url"] == f"http://127.0.0.1:{port}"
        first = Generation(first_uri, vectors, np.arange(COUNT), metadata_table(COUNT, seed=2))
        yield Service(info["url"], str(root), first, chips, model_uri, config, context)
    finally:
        if ray.is_initialized():   # serve.shutdown() without Ray would start one to look for Serve
            serve.shutdown()
            ray.shutdown()
        patch.undo()


# -- token rules (no server needed) -----------------------------------------------------------
def test_token_rules():
    assert require_token("0.0.0.0", TOKEN, insecure=False) is True
    assert require_token("127.0.0.1", TOKEN, insecure=True) is True   # a token given is always checked
    assert require_token("127.0.0.1", None, insecure=True) is False
    assert require_token("::1", None, insecure=True) is False
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        require_token("127.0.0.1", None, insecure=False)
    for host in ("0.0.0.0", "10.1.2.3", "localhost", "::"):
        with pytest.raises(ConfigError, match="only allowed on a loopback host"):
            require_token(host, None, insecure=True)
    with pytest.raises(ConfigError, match="at least 16"):
        require_token("127.0.0.1", "short", insecure=False)
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and not is_loopback("localhost")
    assert bearer_token_matches(f"Bearer {TOKEN}", TOKEN) and bearer_token_matches(f"bearer  {TOKEN} ", TOKEN)
    assert not bearer_token_matches(f"Basic {TOKEN}", TOKEN) and not bearer_token_matches(None, TOKEN)
    assert not bearer_token_matches(f"Bearer {TOKEN}x", TOKEN) and not bearer_token_matches("Bearer é", TOKEN)


def test_the_stage_refuses_to_start_without_a_token_off_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = load_config(None, [f"storage.root={tmp_path}"])
    context = StageContext(config, Console(stderr=True), stage="serve", verbose=True)
    with pytest.raises(ConfigError, match="only allowed on a loopback host"):
        start_service(config, context, serve_args("--host", "0.0.0.0", "--insecure", "--name", NAME))
    with pytest.raises(ConfigError, match=f"{TOKEN_ENV} is not set"):
        start_service(config, context, serve_args("--name", NAME))
    # Insecure on loopback passes the token rules and stops at the next check: nothing is live here.
    with pytest.raises(FileNotFoundError, match="no live index"):
        start_service(config, context, serve_args("--insecure", "--name", NAME))


# -- the running service ----------------------------------------------------------------------
def test_a_second_start_elsewhere_on_a_cluster_already_serving_is_refused(service):
    """serve.start would keep the running proxy's options and ignore these: refused, naming
    where the running one listens; the service keeps answering."""
    port = int(service.url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"already runs on this cluster with its HTTP proxy on 127.0.0.1:{port}"):
        start_service(service.config, service.context, serve_args("--port", str(port + 1), "--name", NAME))
    assert requests.get(f"{service.url}/healthz", timeout=10).status_code == 200


def test_health_needs_no_token_and_everything_else_does(service):
    assert requests.get(f"{service.url}/healthz", timeout=30).json() == {"status": "ok"}
    body = {"embedding": service.first.vectors[0].tolist(), "k": 3}
    for token in (None, TOKEN + "x", "not-the-token-at-all"):
        refused = service.post(body, token=token)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert "results" not in refused.text
    assert requests.get(f"{service.url}/live", timeout=30).status_code == 401
    assert service.post({"embedding": "not a body"}, token=None).status_code == 401   # refused before parsing
    assert service.post(body).status_code == 200
    live = service.live()
    assert (live["sequence"], live["index"], live["factory"], live["num_vectors"]) == (1, f"indexes/{NAME}/gen-1",
                                                                                    "Flat", COUNT)
    assert live["accepts_images"] and live["model_uri"] == service.model_uri


def test_embedding_queries_equal_exact_search(service):
    rng = np.random.default_rng(3)
    first = service.first
    for query in rng.standard_normal((5, DIM)).astype(np.float32):
        response = service.post({"embedding": query.tolist(), "k": 7})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["generation"] == {"name": NAME, "sequence": 1, "index": f"indexes/{NAME}/gen-1"}
        expected_ids, expected_scores = exact_top_k(first.vectors, first.ids, query, 7)
        rows = answer["results"]
        assert [row["id"] for row in rows] == expected_ids and [row["rank"] for row in rows] == list(range(1, 8))
        np.testing.assert_allclose([row["score"] for row in rows], expected_scores, atol=1e-5)
        np.testing.assert_allclose([row["distance"] for row in rows], 2 - 2 * expected_scores, atol=1e-5)
        for row in rows:
            truth = first.metadata.iloc[row["id"]]
            assert (row["key"], row["label"]) == (truth["key"], truth["label"])
            assert row["metadata"]["scene_id"] == truth["scene_id"]
            assert row["metadata"]["lon"] == pytest.approx(truth["lon"])
            assert pd.Timestamp(row["metadata"]["time"]) == truth["time"]


def test_filters_are_honoured(service):
    first, meta = service.first, service.first.metadata
    query = np.random.default_rng(4).standard_normal(DIM).astype(np.float32)
    in_box = meta["lon"].between(-5, 5) & meta["lat"].between(42, 48)
    in_time = meta["time"].between(pd.Timestamp("2024-03-01T00:00:00Z"), pd.Timestamp("2024-08-31T00:00:00Z"))
    cases = [
        ({"labels": ["van", "bus"]}, meta["label"].isin(["van", "bus"])),
        ({"bbox": [-5, 42, 5, 48]}, in_box),
        ({"time_from": "2024-03-01T00:00:00Z", "time_to": "2024-08-31T00:00:00Z"}, in_time),
        ({"scene_ids": ["scene-1", "scene-4"]}, meta["scene_id"].isin(["scene-1", "scene-4"])),
        ({"labels": ["sedan"], "bbox": [-5, 42, 5, 48], "time_from": "2024-03-01T00:00:00Z"},
         (meta["label"] == "sedan") & in_box & (meta["time"] >= pd.Timestamp("2024-03-01T00:00:00Z"))),
        ({"labels": ["no such class"]}, np.zeros(COUNT, bool)),
    ]
    for conditions, allowed in cases:
        response = service.post({"embedding": query.tolist(), "k": 10, **conditions})
        assert response.status_code == 200, (conditions, response.text)
        expected_ids, _ = exact_top_k(first.vectors, first.ids, query, 10, np.asarray(allowed))
        assert [row["id"] for row in response.json()["results"]] == expected_ids, conditions


def test_image_queries_embed_like_the_indexed_chips(service):
    chip_id = 17
    png = io.BytesIO()
    Image.fromarray(service.chips[chip_id]).save(png, format="PNG")
    response = service.post({"image": base64.b64encode(png.getvalue()).decode(), "k": 5})
    assert response.status_code == 200, response.text
    rows = response.json()["results"]
    assert rows[0]["id"] == chip_id and rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
    expected_ids, _ = exact_top_k(service.first.vectors, service.first.ids, service.first.vectors[chip_id], 5)
    assert [row["id"] for row in rows] == expected_ids


def test_bad_requests_are_refused_with_the_reason(service):
    vector = service.first.vectors[0].tolist()
    cases = [
        ({"embedding": vector[:-1]}, 400, "dimension"),
        ({"embedding": vector, "image": "aGk="}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"image": "%%% not base64"}, 400, "base64"),
        ({"image": base64.b64encode(b"not an image").decode()}, 400, "not a usable chip"),
        ({"embedding": vector, "k": 0}, 422, "k"),
        ({"embedding": vector, "bbox": [5, 42, 4, 100]}, 400, "latitudes"),
        ({"embedding": vector, "colour": "red"}, 422, "colour"),
        ({"embedding": [0.0] * DIM}, 400, "all zeros"),
    ]
    for body, status, words in cases:
        response = service.post(body)
        assert response.status_code == status and words in response.text, (body, response.status_code, response.text)


# -- a switch of the live pointer under load, then SIGTERM --------------------------------------
def test_a_stream_of_requests_across_a_live_switch_never_fails(service):
    rng = np.random.default_rng(5)
    second_vectors = rng.standard_normal((COUNT, DIM)).astype(np.float32)
    second_ids = np.arange(SECOND_IDS, SECOND_IDS + COUNT)
    second_uri = f"{service.root}/indexes/{NAME}/gen-2"
    second_metadata = metadata_table(COUNT, seed=6, first_id=SECOND_IDS)
    build_index(second_vectors, second_metadata, second_uri, factory="Flat",
                ids=second_ids)   # written before the stream starts; no model: embeddings only
    queries = rng.standard_normal((16, DIM)).astype(np.float32)
    vans = ["van", "bus"]   # odd clients filter by label: concurrent filtered searches, each with its selector
    answers: list[tuple[int, float, int, list[int], int]] = []   # (thread, time, sequence, ids, query)
    failures: list[str] = []
    stop = threading.Event()

    def client(thread: int) -> None:
        with requests.Session() as session:
            count = 0
            while not stop.is_set():
                query = queries[(thread + 4 * count) % len(queries)]
                count += 1
                try:
                    labels = {"labels": vans} if thread % 2 else {}
                    response = service.post({"embedding": query.tolist(), "k": 5, **labels}, session=session)
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                answers.append((thread, time.monotonic(), body["generation"]["sequence"],
                                [row["id"] for row in body["results"]], (thread + 4 * (count - 1)) % len(queries)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        switched_at = time.monotonic()
        switch_live(Store(service.root), NAME, second_uri, keep_generations=3)
        deadline = time.monotonic() + 60
        while service.live()["sequence"] != 2:
            assert time.monotonic() < deadline, "the service did not pick up the switch within 60 s"
            time.sleep(0.2)
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    sequences = [answer[2] for answer in answers]
    assert sequences.count(1) >= 4 and sequences.count(2) >= 4, (sequences.count(1), sequences.count(2))
    for thread in range(4):   # per client, once answered by the new index, never by the old one again
        seen = [answer[2] for answer in answers if answer[0] == thread]
        assert seen == sorted(seen)
    assert all(answer[2] == 1 for answer in answers if answer[1] < switched_at)
    for thread, _, sequence, ids, query in answers:   # each answer is the exact one of the index that gave it
        first = service.first
        vectors, index_ids, metadata = ((first.vectors, first.ids, first.metadata) if sequence == 1
                                        else (second_vectors, second_ids, second_metadata))
        allowed = metadata["label"].isin(vans).to_numpy() if thread % 2 else None
        assert ids == exact_top_k(vectors, index_ids, queries[query], 5, allowed)[0]
    live = service.live()
    assert (live["index"], live["accepts_images"], live["last_error"]) == (f"indexes/{NAME}/gen-2", False, None)
    refused = service.post({"image": base64.b64encode(b"x").decode()})
    assert refused.status_code == 400 and "without a model" in refused.text


def send_sigterm_once_waiting(action=None, timeout_s: float = 120.0) -> threading.Thread:
    """A thread that waits until the main thread has installed its own SIGTERM handler (it is
    blocked in `wait_for_signal`), runs `action`, then sends SIGTERM to this process."""
    before = signal.getsignal(signal.SIGTERM)

    def run() -> None:
        deadline = time.monotonic() + timeout_s
        while signal.getsignal(signal.SIGTERM) is before:
            if time.monotonic() > deadline:
                return   # never waiting: the test fails on its own, without a stray signal
            time.sleep(0.1)
        try:
            if action is not None:
                action()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_for_signal_returns_on_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    sender = send_sigterm_once_waiting()
    assert wait_for_signal() == "SIGTERM"
    sender.join(10)
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_serve_answers_until_sigterm_then_shuts_serve_down(service):
    args = serve_args("--port", service.url.rsplit(":", 1)[1], "--name", NAME, "--poll-seconds", "0.5")
    answered: list[int] = []
    body = {"embedding": service.first.vectors[0].tolist(), "k": 1}
    sender = send_sigterm_once_waiting(lambda: answered.append(service.post(body).status_code))
    result = run_serve(service.config, service.context, args)
    sender.join(30)
    assert answered == [200]
    assert result["stopped_by"] == "SIGTERM" and result["name"] == NAME and result["token_required"]
    with pytest.raises(requests.ConnectionError):   # Serve and its HTTP proxy are gone
        requests.get(f"{service.url}/healthz", timeout=5)
