"""The HTTP sidecar over real HTTP on loopback: routing, logging, and every kind of bad request."""

from __future__ import annotations

import json
import sys

import httpx
import numpy as np
import pytest

from tracer_wrap import flush

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from _http import serving  # noqa: E402
from _synthetic import fill_store, make_traces  # noqa: E402
from _wait import until  # noqa: E402

from tracer_wrap.engine import TracedTask  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402
from tracer_wrap.ops.server import create_app  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module", autouse=True)
def _no_audits():
    """The sidecar's tasks read their options from the environment: no random audit draws."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACER_WRAP_AUDIT_RATE", "0")
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TraceStore:
    st = TraceStore(tmp_path_factory.mktemp("store"))
    fill_store(st, "intent", 800)
    TracedTask("intent", store=st, embedder=hashing_embedder(), min_traces=50,
               refit_every=None).refit()
    st.append("no-router-yet", "hello there", "greeting")
    return st


@pytest.fixture(scope="module")
def app(store: TraceStore):
    app = create_app(store, token=TOKEN, max_body_bytes=64_000, max_batch=50,
                     embedder="hashing")
    # Made now, with the module's fixtures, so that conftest's _forget_tasks keeps their
    # background jobs (it forgets the tasks a test makes) for every test of the module.
    for task in ("intent", "no-router-yet"):
        app.state.sidecar.task(task)
    return app


@pytest.fixture(scope="module")
def server(app):
    with serving(app) as url:
        yield url


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
    assert set(doc["paths"]) == {
        "/v1/tasks/{task}/route", "/v1/tasks/{task}/route/batch", "/v1/tasks/{task}/traces",
        "/v1/tasks/{task}/traces/batch", "/v1/tasks/{task}/status", "/metrics", "/healthz"}


def test_route_text_matches_the_router_in_process(client: httpx.Client, store: TraceStore) -> None:
    text = "please help lost card urgent stolen card"
    r = client.post("/v1/tasks/intent/route", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "card_lost" and body["version"] == store.current_version("intent")
    plan = TracedTask("intent", store=store, embedder=hashing_embedder()).route(text)
    assert plan.decision is not None
    assert body["local"] == plan.local and body["score"] == pytest.approx(plan.decision.score, 1e-5)


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
    body = r.json()
    assert body.pop("plan")
    assert body == {"label": None, "local": False, "score": None, "audit": False,
                    "reason": "no router fitted yet", "version": None}


def test_log_traces_one_and_batch(client: httpx.Client, store: TraceStore) -> None:
    r = client.post("/v1/tasks/from-node/traces",
                    json={"input": "where is my card", "teacher": "card_lost"})
    assert r.status_code == 201 and r.json() == {"logged": 1, "label": "card_lost"}
    r = client.post("/v1/tasks/from-node/traces/batch", json={"traces": [
        {"input": "refund please", "teacher": "refund", "usage": {"input_tokens": 12}},
        {"input": "fx fee?", "teacher": "exchange_rate", "meta": {"source": "node"}}]})
    assert r.status_code == 201 and r.json() == {"logged": 2, "labels": ["refund", "exchange_rate"]}
    flush()
    traces = {t.input: t for t in store.traces("from-node")}
    assert traces["fx fee?"].meta == {"source": "node"}
    assert traces["refund please"].exchangeable  # no router serves from-node: may calibrate


def test_plans_decide_exchangeability_and_forged_plans_count_for_nothing(
        client: httpx.Client, store: TraceStore) -> None:
    before = len(store.traces("intent"))
    deferred = client.post("/v1/tasks/intent/route", json={"text": "zzz qqq unrelated"}).json()
    assert deferred["local"] is False and deferred["plan"]
    logged = [
        client.post("/v1/tasks/intent/traces", json={
            "input": "a planned deferred one", "teacher": "refund", "plan": deferred["plan"]}),
        client.post("/v1/tasks/intent/traces", json={"input": "an unplanned one",
                                                     "teacher": "refund"})]
    forged = deferred["plan"][:-2] + ("AA" if not deferred["plan"].endswith("AA") else "BB")
    logged.append(client.post("/v1/tasks/intent/traces", json={
        "input": "a forged one", "teacher": "refund", "plan": forged}))
    assert all(r.is_success for r in logged), [r.text for r in logged]
    flush()
    until(lambda: len(store.traces("intent")) >= 3 + before, "the three traces are written")
    traces = {t.input: t for t in store.traces("intent")}
    # A router answers for this task, so what reaches the LLM is the hard share: never calibrates.
    for text in ("a planned deferred one", "an unplanned one", "a forged one"):
        assert not traces[text].exchangeable and traces[text].origin == "llm", text


def test_a_plan_signed_here_without_every_field_counts_for_nothing(
        client: httpx.Client, store: TraceStore) -> None:
    """A token of an older release (no slice mark "m") is properly signed but is not read with
    guessed fields: an audit plan read that way would let its trace calibrate."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    token = client.post("/v1/tasks/intent/route", json={"text": "zzz qqq unrelated"}).json()["plan"]
    body = token.partition(".")[0]
    plan = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    plan["a"] = True
    del plan["m"]
    payload = json.dumps(plan, separators=(",", ":")).encode()
    key = bytes.fromhex(str(store.get_setting("intent", "sidecar_plan_key")))
    old = f"{b64(payload)}.{b64(hmac.new(key, payload, hashlib.sha256).digest()[:16])}"
    r = client.post("/v1/tasks/intent/traces", json={
        "input": "an old audit plan", "teacher": "refund", "plan": old})
    assert r.is_success, r.text
    flush()
    until(lambda: any(t.input == "an old audit plan" for t in store.traces("intent")),
          "the trace is written")
    trace = next(t for t in store.traces("intent") if t.input == "an old audit plan")
    assert not trace.exchangeable and trace.origin == "llm"


def test_audit_plans_mark_audit_traces(tmp_path, monkeypatch) -> None:
    st = TraceStore(tmp_path / "audited")
    fill_store(st, "intent", 800)
    TracedTask("intent", store=st, embedder=hashing_embedder(), min_traces=50,
               refit_every=None).refit()
    monkeypatch.setenv("TRACER_WRAP_AUDIT_RATE", "1")
    with serving(create_app(st, embedder="hashing")) as url:
        text = "please help lost card urgent stolen card"
        routed = httpx.post(f"{url}/v1/tasks/intent/route", json={"text": text}).json()
        assert routed["audit"] is True and routed["local"] is False
        assert routed["label"] == "card_lost" and routed["reason"] == "audit sample"
        httpx.post(f"{url}/v1/tasks/intent/traces",
                   json={"input": text, "teacher": "card_lost", "plan": routed["plan"]})
        status = httpx.get(f"{url}/v1/tasks/intent/status").json()
        # At rate 1 a deferred call is in the audit slice too: a uniform draw of traffic.
        odd = "zzzz qqqq xxxx"
        deferred = httpx.post(f"{url}/v1/tasks/intent/route", json={"text": odd}).json()
        assert deferred["audit"] is False and deferred["local"] is False
        httpx.post(f"{url}/v1/tasks/intent/traces",
                   json={"input": odd, "teacher": "card_lost", "plan": deferred["plan"]})
    trace = next(t for t in st.traces("intent") if t.input == text)
    assert trace.origin == "audit" and trace.exchangeable and trace.router_label == "card_lost"
    trace = next(t for t in st.traces("intent") if t.input == odd)
    assert trace.origin == "llm" and trace.exchangeable and trace.audit_p == 1.0
    assert status["usage"]["audits"] == 1 and status["usage"]["calls"] == 1
    assert status["audit_samples"] == 1 and status["live_agreement"] == 1.0


def test_a_plan_counts_once_for_its_own_input_until_it_expires(tmp_path, monkeypatch) -> None:
    """A signed audit plan replayed, used with another input or after its expiry counts as an
    unplanned LLM answer: one plan is at most one audit sample (replays cannot trip the breaker)."""
    from tracer_wrap.ops.server import PLAN_SECONDS

    st = TraceStore(tmp_path / "audited")
    fill_store(st, "intent", 800)
    TracedTask("intent", store=st, embedder=hashing_embedder(), min_traces=50,
               refit_every=None).refit()
    monkeypatch.setenv("TRACER_WRAP_AUDIT_RATE", "1")
    app = create_app(st, embedder="hashing")
    side = app.state.sidecar
    text = "please help lost card urgent stolen card"
    vector = hashing_embedder().embed([text])[0].tolist()
    with serving(app) as url, httpx.Client(base_url=f"{url}/v1/tasks/intent") as client:
        def plan(**body: object) -> str:
            routed = client.post("/route", json=body).json()
            assert routed["audit"] is True, routed
            return str(routed["plan"])

        def log(token: str, text: str, **extra: object) -> None:
            r = client.post("/traces", json={"input": text, "teacher": "card_lost",
                                             "plan": token, **extra})
            assert r.status_code == 201, r.text

        token = plan(text=text)
        log(token, "another input")  # not the input the plan was made for
        for _ in range(3):  # the first counts; replays are ordinary traces
            log(token, text)
        assert client.get("/status").json()["usage"]["audits"] == 1
        late = plan(text=text)
        now = side.clock()
        side.clock = lambda: now + PLAN_SECONDS + 1
        log(late, text)  # expired
        side.clock = lambda: now
        by_vector = plan(embedding=vector)
        log(by_vector, "the text of that vector", embedding=vector)  # counts
        log(plan(embedding=vector), "without its embedding")  # not the input it was made for
        status = client.get("/status").json()
    assert status["usage"]["audits"] == status["audit_samples"] == 2, status
    assert status["usage"]["llm"] == 7
    origins = [(t.input, t.origin) for t in st.traces("intent") if t.origin == "audit"]
    assert origins == [(text, "audit"), ("the text of that vector", "audit")]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_wrong_or_missing_token_is_401(server: str, headers: dict[str, str]) -> None:
    r = httpx.post(f"{server}/v1/tasks/intent/route", json={"text": "x"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_new_task_routes_to_the_llm_and_unknown_paths_are_404(client: httpx.Client) -> None:
    r = client.post("/v1/tasks/nope/route", json={"text": "x"})
    assert r.status_code == 200 and r.json()["local"] is False
    assert r.json()["reason"] == "no router fitted yet"
    r = client.get("/v1/tasks/never-seen/status")
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
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y", "audit": True}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y", "plan": 5}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y", "usage": {"input_tokens": -1}}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y", "meta": [1]}),
    ("/v1/tasks/intent/traces", {"input": "x", "teacher": "y" * 20_001}),
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

    r = client.post("/v1/tasks/intent/route", content=chunks(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_sidecar_still_serves_after_bad_requests(client: httpx.Client) -> None:
    for _ in range(5):
        client.post("/v1/tasks/intent/route", content=b"garbage")
    r = client.post("/v1/tasks/intent/route", json={"embedding": np.ones(512).tolist()})
    assert r.status_code == 200 and isinstance(r.json()["local"], bool)


# -- security: media type, origins, bad input, tokens, memory ------------------------------------


def test_a_post_that_is_not_json_is_415_and_logs_nothing(client: httpx.Client,
                                                         store: TraceStore) -> None:
    before = store.count("intent")
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = client.post("/v1/tasks/intent/traces", headers=headers,
                        content=json.dumps({"input": "cross site trace", "teacher": "refund"}))
        assert r.status_code == 415, (content_type, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/v1/tasks/intent/route", json={"text": "x"},
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    flush()
    assert store.count("intent") == before


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},  # another port of this machine is another origin
    {"Sec-Fetch-Site": "cross-site"},
])
def test_browser_requests_from_other_origins_are_403(client: httpx.Client, store: TraceStore,
                                                     headers: dict[str, str]) -> None:
    """The simple request a web page can send to 127.0.0.1 without the browser asking first is
    refused, whatever its content type, and logs no trace."""
    before = store.count("intent")
    body = {"input": "page wrote this", "teacher": "refund"}
    r = client.post("/v1/tasks/intent/traces", json=body, headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", r.text
    r = client.post("/v1/tasks/intent/traces", content=json.dumps(body),
                    headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 403
    for path in ("/metrics", "/healthz", "/v1/tasks/intent/status"):  # reading, too
        assert client.get(path, headers=headers).status_code == 403, path
    flush()
    assert store.count("intent") == before


def test_same_origin_and_non_browser_requests_pass(client: httpx.Client, server: str) -> None:
    own = {"Origin": server, "Sec-Fetch-Site": "same-origin"}
    assert client.post("/v1/tasks/intent/route", json={"text": "x"}, headers=own
                       ).status_code == 200
    assert client.get("/metrics", headers=own).status_code == 200
    assert client.post("/v1/tasks/intent/route", json={"text": "x"}).status_code == 200


DEEP = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("path, raw", [
    ("route", b'{"text": "a\\ud800"}'),
    ("route", b'{"texts": ["ok", "\\udfff b"]}'),
    ("traces", b'{"input": "a\\ud800", "teacher": "refund"}'),
    ("traces", b'{"input": "a", "teacher": "x\\udc00"}'),
    ("traces", b'{"input": "a", "teacher": "x", "meta": {"\\ud800": 1}}'),
    ("route", DEEP),
    ("traces", b'{"input": "a", "teacher": "x", "meta": {"k": ' + b"[" * 500 + b"]" * 500
     + b"}}"),
    ("traces", b'{"input": "a", "teacher": "x", "usage": {"input_tokens": ' + b"9" * 4000
     + b"}}"),
    ("traces", b'{"input": "a", "teacher": "x", "usage": {"input_tokens": 1' + b"0" * 30
     + b"}}"),
    ("traces", b'{"input": "a", "teacher": "x", "meta": {"n": 1e999}}'),
    ("route", b'{"embedding": [1e400, 1]}'),
    ("traces", b'{"input": ["a"], "teacher": "x"}'),
    ("traces", b'{"input": "a", "teacher": "x", "usage": {"input_tokens": 1.5}}'),
    ("traces", b'{"input": "a", "teacher": "x", "usage": {"input_tokens": 99999999999999}}'),
    ("traces", b'{"input": "a", "teacher": "x", "plan": "x.y"}'),
])
def test_every_bad_input_is_a_clear_4xx_never_a_500(client: httpx.Client, store: TraceStore,
                                                    path: str, raw: bytes) -> None:
    r = client.post(f"/v1/tasks/intent/{path}" + ("/batch" if b'"texts"' in raw else ""),
                    content=raw, headers={"Content-Type": "application/json"})
    if b'"plan": "x.y"' in raw:  # a forged plan is a valid body: logged as unplanned
        assert r.status_code == 201
        return
    assert 400 <= r.status_code < 500, r.text
    message = r.json()["error"]["message"]
    assert message and len(r.content) < 2_000 and "Traceback" not in r.text


def test_embeddings_beyond_float32_are_422_and_the_connection_stays_open(
        client: httpx.Client) -> None:
    """1e39 is a finite JSON number but overflows float32: a 422, never a 500 that drops the
    keep-alive connection. Numbers within float32 whose squares overflow are scaled fine."""
    for body in ({"embedding": [1e39] * 512}, {"embeddings": [[0.1] * 512, [-1e39] * 512]}):
        path = "/v1/tasks/intent/route" + ("/batch" if "embeddings" in body else "")
        r = client.post(path, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_embedding", r.text
    assert r.headers.get("connection") != "close"
    big = client.post("/v1/tasks/intent/route", json={"embedding": [3e38] * 512})
    small = client.post("/v1/tasks/intent/route", json={"embedding": [1.0] * 512})
    assert big.status_code == small.status_code == 200, big.text
    assert big.json()["label"] == small.json()["label"]
    assert big.json()["score"] == pytest.approx(small.json()["score"], abs=1e-5)


def test_the_embedding_cache_is_bounded_by_bytes(client: httpx.Client, app) -> None:
    """20k-character texts through the sidecar: the embedder's own byte accounting counts the
    texts it holds (not just entries) and stays within its budget."""
    embedder = app.state.sidecar.embedder
    assert embedder.cache_bytes <= 128 * 2**20  # the default: texts and vectors together
    embedder.cache_bytes = 200_000  # ~4 such texts, so the test sees evictions
    try:
        for batch in range(5):
            texts = [f"lost card {batch} {i} " + "z" * 19_900 for i in range(2)]
            r = client.post("/v1/tasks/intent/route/batch", json={"texts": texts})
            assert r.status_code == 200, r.text
            held = sum(sys.getsizeof(t) + v.nbytes for t, v in embedder._cache.items())
            assert 20_000 <= held <= embedder.cache_used <= embedder.cache_bytes
        assert not any(t.startswith("lost card 0 0 ") for t in embedder._cache)
    finally:
        embedder.cache_bytes = 64 * 2**20


def test_beyond_loopback_the_sidecar_refuses_to_start_without_a_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from tracer_wrap.errors import ConfigError
    from tracer_wrap.ops.cli import app as cli_app
    from tracer_wrap.ops.server import run

    monkeypatch.delenv("TRACER_WRAP_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="beyond loopback"):
        run(str(tmp_path / "s"), host="0.0.0.0")
    result = CliRunner().invoke(cli_app, ["--store", str(tmp_path / "s"), "serve",
                                          "--host", "192.0.2.1"])
    assert result.exit_code == 1 and "token" in result.stderr and "Traceback" not in result.stderr
