"""The HTTP sidecar over real HTTP on loopback: routing, logging, and every kind of bad request."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from _synthetic import fill_store, make_traces  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402
from tracer_wrap.engine import TracedTask  # noqa: E402
from tracer_wrap.ops.server import create_app  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TraceStore:
    st = TraceStore(tmp_path_factory.mktemp("store"))
    fill_store(st, "intent", 800)
    TracedTask("intent", store=st, embedder=hashing_embedder(), min_traces=50,
               refit_every=None).refit()
    st.append("no-router-yet", "hello there", "greeting")
    return st


@pytest.fixture(scope="module")
def server(store: TraceStore):
    port = _free_port()
    app = create_app(store, token=TOKEN, max_body_bytes=64_000, max_batch=50)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("sidecar did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


@pytest.fixture()
def client(server: str):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10) as c:
        yield c


def test_healthz_needs_no_token(server: str) -> None:
    r = httpx.get(f"{server}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_openapi_document_lists_every_endpoint(server: str) -> None:
    doc = httpx.get(f"{server}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/tasks/{task}/route", "/v1/tasks/{task}/route/batch", "/v1/tasks/{task}/traces",
            "/v1/tasks/{task}/traces/batch", "/healthz"} <= set(doc["paths"])


def test_route_text_matches_the_router_in_process(client: httpx.Client, store: TraceStore) -> None:
    text = "please help lost card urgent stolen card"
    r = client.post("/v1/tasks/intent/route", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "card_lost" and body["version"] == store.current_version("intent")
    local = TracedTask("intent", store=store, embedder=hashing_embedder()).route(text)
    assert body["handled"] == local.local and body["score"] == pytest.approx(local.score, 1e-5)


def test_route_embedding_and_batches(client: httpx.Client) -> None:
    emb = hashing_embedder()
    texts = [t for t, _ in make_traces(5, seed=42)]
    vectors = emb.embed(texts)
    one = client.post("/v1/tasks/intent/route", json={"embedding": vectors[0].tolist()}).json()
    batch = client.post("/v1/tasks/intent/route/batch", json={"texts": texts}).json()
    by_vec = client.post("/v1/tasks/intent/route/batch",
                         json={"embeddings": vectors.tolist()}).json()
    assert len(batch["decisions"]) == len(by_vec["decisions"]) == 5
    assert [d["label"] for d in batch["decisions"]] == [d["label"] for d in by_vec["decisions"]]
    assert one["label"] == batch["decisions"][0]["label"]


def test_task_without_router_defers(client: httpx.Client) -> None:
    r = client.post("/v1/tasks/no-router-yet/route", json={"text": "hi"})
    assert r.status_code == 200
    assert r.json() == {"label": None, "handled": False, "score": None,
                        "reason": "no router fitted yet", "version": None}


def test_log_traces_one_and_batch(client: httpx.Client, store: TraceStore) -> None:
    r = client.post("/v1/tasks/from-node/traces", json={"input": "where is my card", "teacher": "card_lost"})
    assert r.status_code == 201 and r.json() == {"logged": 1}
    r = client.post("/v1/tasks/from-node/traces/batch", json={"traces": [
        {"input": "refund please", "teacher": "refund"},
        {"input": "fx fee?", "teacher": "exchange_rate", "audit": True, "router_label": "refund"}]})
    assert r.status_code == 201 and r.json() == {"logged": 2}
    traces = {t.input: t for t in store.traces("from-node")}
    assert traces["fx fee?"].origin == "audit" and traces["fx fee?"].router_label == "refund"
    assert traces["refund please"].exchangeable  # no router serves from-node: may calibrate


def test_traces_logged_while_serving_are_not_exchangeable(client: httpx.Client,
                                                           store: TraceStore) -> None:
    client.post("/v1/tasks/intent/traces", json={"input": "a deferred one", "teacher": "refund"})
    client.post("/v1/tasks/intent/traces", json={"input": "an audit one", "teacher": "refund",
                                                 "audit": True, "router_label": "refund"})
    traces = {t.input: t for t in store.traces("intent")}
    assert not traces["a deferred one"].exchangeable
    assert traces["an audit one"].exchangeable


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_wrong_or_missing_token_is_401(server: str, headers: dict[str, str]) -> None:
    r = httpx.post(f"{server}/v1/tasks/intent/route", json={"text": "x"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_unknown_task_and_path_are_404(client: httpx.Client) -> None:
    r = client.post("/v1/tasks/nope/route", json={"text": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_task"
    r = client.get("/v2/whatever")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/tasks/intent/route")
    assert r.status_code == 405


@pytest.mark.parametrize("raw, status", [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b"\xff\xfe", 400),
    (b'{"text": NaN}', 400),
    (b"{}", 422),
    (b'{"text": ""}', 422),
    (b'{"text": 5}', 422),
    (b'{"text": "a", "embedding": [1]}', 422),
    (b'{"embedding": [1, 2, 3]}', 422),
    (b'{"embedding": "abc"}', 422),
    (b'{"embedding": null}', 422),
    (b'{"txt": "typo"}', 422),
])
def test_bad_route_bodies_get_clear_4xx(client: httpx.Client, raw: bytes, status: int) -> None:
    r = client.post("/v1/tasks/intent/route", content=raw,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


@pytest.mark.parametrize("path, body", [
    ("/v1/tasks/intent/traces", {"input": "x"}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": 3}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y", "audit": "yes"}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y", "meta": [1]}),
    ("/v1/tasks/intent/traces/batch", {"traces": []}),
    ("/v1/tasks/intent/traces/batch", {"traces": ["x"]}),
    ("/v1/tasks/intent/traces/batch", {"traces": [{"input": "a", "teacher": "b"}] * 51}),
    ("/v1/tasks/intent/route/batch", {"texts": "not a list"}),
    ("/v1/tasks/intent/route/batch", {"texts": ["ok", ""]}),
    ("/v1/tasks/intent/route/batch", {"embeddings": [[0.1] * 512, [0.1] * 2]}),
])
def test_bad_trace_and_batch_bodies_are_422(client: httpx.Client, path: str, body: dict) -> None:
    r = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_oversize_body_is_413(client: httpx.Client) -> None:
    r = client.post("/v1/tasks/intent/route", json={"text": "x" * 100_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(100):
            yield b" " * 1000

    r = client.post("/v1/tasks/intent/route", content=chunks())
    assert r.status_code == 413


def test_sidecar_still_serves_after_bad_requests(client: httpx.Client) -> None:
    for _ in range(5):
        client.post("/v1/tasks/intent/route", content=b"garbage")
    r = client.post("/v1/tasks/intent/route", json={"embedding": np.ones(512).tolist()})
    assert r.status_code == 200 and isinstance(r.json()["handled"], bool)
