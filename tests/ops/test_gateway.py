"""The gateway over real HTTP on loopback, driven by the official openai and anthropic SDKs.

Two fake upstreams: ``tests/llm_server.py`` (the OpenAI and Anthropic wire protocols, counting the
calls that reach it) and :class:`Recorder` below (raw bytes in, scripted raw bytes out), which
proves that what the gateway forwards and relays is byte for byte what was sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from _http import serving
from _synthetic import LABELS, make_traces
from llm_server import LLMServer, serve_llm
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from typer.testing import CliRunner

from tracer_wrap import flush as flush_everything
from tracer_wrap.accounting import flush_all
from tracer_wrap.errors import ConfigError
from tracer_wrap.model.hashing import hashing_embedder
from tracer_wrap.ops.cli import app as cli_app
from tracer_wrap.ops.gateway import create_app, run
from tracer_wrap.store import TraceStore

pytest.importorskip("uvicorn")

SYSTEM = {"role": "system", "content": "Classify the banking request. Answer with the label only."}
KEY = "sk-test-do-not-log-0123456789"
FAST = {"min_traces": 20, "refit_every": None, "audit_rate": 0.0, "target": 0.9,
        "refresh_seconds": 0}


def teacher(text: str) -> str:
    lowered = text.lower()
    hits = [(lowered.find(word), label) for label, words in LABELS.items() for word in words
            if word in lowered]
    return min(hits)[1] if hits else "refund"


def easy_texts(n: int, seed: int = 7) -> list[str]:
    names = sorted(LABELS)
    return [f"hello {LABELS[names[i % 4]][i % 4]} please {LABELS[names[i % 4]][(i + 1) % 4]}"
            f" #{seed}-{i}" for i in range(n)]


def ask(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


def wait_for(condition: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    """Poll ``condition``; the limit only stops a hang (it is no performance assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def fit_from_store(store: TraceStore, gateway_app: Any, task: str, n: int = 800) -> None:
    """Synthetic traces for ``task`` and a router fitted by the gateway's own task object."""
    for text, label in make_traces(n):
        store.append(task, text, label)
    gateway_app.state.gateway.tasks.task(task).refit()


@pytest.fixture
def upstream() -> Iterator[LLMServer]:
    with serve_llm(teacher) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    return TraceStore(tmp_path / "store")


@contextlib.contextmanager
def gateway(store: TraceStore, openai_base: str, anthropic_base: str, **options: Any
            ) -> Iterator[tuple[str, Any]]:
    """The gateway over ``store`` on a free loopback port: ``(base URL, app)``."""
    options = {**FAST, **options}
    application = create_app(store, openai_upstream=openai_base, anthropic_upstream=anthropic_base,
                             embedder=hashing_embedder(), **options)
    with serving(application) as url:
        yield url, application


@contextlib.contextmanager
def through(upstream: LLMServer, store: TraceStore, **options: Any) -> Iterator[tuple[str, Any]]:
    with gateway(store, upstream.base_url_openai, upstream.base_url_anthropic, **options) as found:
        yield found


def sdk(url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, **kwargs)


def claude(url: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, **kwargs)


def only_task(store: TraceStore) -> str:
    """The one task of ``store``, once its first trace is written (a forwarded answer becomes a
    trace after the caller has it)."""
    wait_for(lambda: bool(store.tasks()), "a first trace")
    (task,) = store.tasks()
    return task


def tasks_of(store: TraceStore, n: int) -> list[str]:
    wait_for(lambda: len(store.tasks()) >= n, f"{n} tasks")
    return store.tasks()


def is_local(obj: Any) -> bool:
    return getattr(obj, "system_fingerprint", None) == "tracer_wrap-local"


# -- a recording upstream: raw bytes in, scripted raw bytes out -------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass
class Scripted:
    """What the recorder answers: ``status``, raw ``headers`` and the body in ``chunks``; before
    the chunk at index ``hold``, it waits until ``release`` is set."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    hold: int | None = None
    release: threading.Event = field(default_factory=threading.Event)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: Callable[[Seen], Scripted] = lambda seen: Scripted(
            headers=[("content-type", "application/json")], chunks=[b'{"ok": true}'])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import anyio.to_thread

        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = Seen(scope["method"], scope["raw_path"].decode(),
                    scope["query_string"].decode(),
                    [(k.decode().lower(), v.decode()) for k, v in scope["headers"]], body)
        self.seen.append(seen)
        scripted = self.script(seen)
        await send({"type": "http.response.start", "status": scripted.status,
                    "headers": [(k.encode(), v.encode()) for k, v in scripted.headers]})
        for i, chunk in enumerate(scripted.chunks):
            if i == scripted.hold:
                await anyio.to_thread.run_sync(scripted.release.wait, 60)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    with serving(rec) as url:
        yield rec, url


# -- the acceptance test: real SDK, traffic, then local answers ------------------------------


def test_after_enough_traffic_classification_calls_are_answered_without_reaching_upstream(
        upstream: LLMServer, store: TraceStore) -> None:
    """The gateway discovers the task, traces every forwarded answer, refits in the background
    by itself, and then answers certified calls locally, as the SDK's own types."""
    # One refit, at 300 traces (by default the first would come at 200).
    with through(upstream, store, routing=True, min_traces=300, refit_every=300) as (url, _):
        client = sdk(url)
        traffic = [text for text, _ in make_traces(300, seed=3)]
        for text in traffic:
            reply = client.chat.completions.create(model="gpt-test", messages=ask(text))
            assert reply.choices[0].message.content == teacher(text)
        assert upstream.calls["chat.completions"] == len(traffic)
        task = only_task(store)
        assert task.startswith("openai.chat:")
        wait_for(lambda: store.current_version(task) is not None, "a refit published a router")

        before = upstream.calls["chat.completions"]
        texts = easy_texts(40)
        replies = [client.chat.completions.create(model="gpt-test", messages=ask(t))
                   for t in texts]
        local = [r for r in replies if is_local(r)]
        assert len(local) >= 30, "the router should answer most easy inputs"
        assert upstream.calls["chat.completions"] - before == len(replies) - len(local)
        for text, reply in zip(texts, replies):
            assert isinstance(reply, ChatCompletion)
            assert reply.choices[0].message.content == teacher(text)
        assert all(r.usage is not None and r.usage.total_tokens == 0 for r in local)

        # Streamed, too: the SDK parses the local server-sent events into its chunks.
        before = upstream.calls["chat.completions"]
        text = easy_texts(1, seed=11)[0]
        chunks = list(client.chat.completions.create(model="gpt-test", messages=ask(text),
                                                     stream=True,
                                                     stream_options={"include_usage": True}))
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
            == teacher(text)
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
        assert upstream.calls["chat.completions"] == before
    flush_all()
    counters = store.counters(task)
    assert counters["llm"] == upstream.calls["chat.completions"]
    assert counters["local"] == len(local) + 1
    assert counters["input_tokens"] > 0  # the forwarded answers' usage was read on the way


def test_routing_is_off_until_the_task_is_switched_on(upstream: LLMServer,
                                                      store: TraceStore, tmp_path: Path) -> None:
    """As in zero-code mode: traced, scored in shadow, never answered until switched on."""
    with through(upstream, store) as (url, application):
        client = sdk(url)
        client.chat.completions.create(model="gpt-test", messages=ask("refund please"))
        task = only_task(store)
        fit_from_store(store, application, task)
        before = upstream.total_calls
        assert not any(is_local(client.chat.completions.create(model="gpt-test",
                                                               messages=ask(t)))
                       for t in easy_texts(10))
        assert upstream.total_calls == before + 10
        result = CliRunner().invoke(cli_app, ["--store", str(store.path), "routing", task, "on"])
        assert result.exit_code == 0, result.output
        assert any(is_local(client.chat.completions.create(model="gpt-test", messages=ask(t)))
                   for t in easy_texts(10, seed=8))


# -- every protocol, JSON and streams, answered locally and forwarded ------------------------


def test_every_protocol_answers_locally_with_the_sdks_own_types(upstream: LLMServer,
                                                                store: TraceStore) -> None:
    with through(upstream, store, routing=True) as (url, application):
        client, messages = sdk(url), claude(url)
        text = easy_texts(1)[0]
        # Forwarded once each (the task keys come from the requests), then fitted.
        client.chat.completions.create(model="gpt-test", messages=ask(text))
        client.responses.create(model="gpt-test", instructions=SYSTEM["content"], input=text)
        messages.messages.create(model="claude-test", max_tokens=64, system=SYSTEM["content"],
                                 messages=[{"role": "user", "content": text}])
        assert upstream.total_calls == 3
        for task in tasks_of(store, 3):
            fit_from_store(store, application, task)
        texts = easy_texts(3, seed=9)

        chat = client.chat.completions.create(model="gpt-test", messages=ask(texts[0]))
        assert is_local(chat) and chat.choices[0].message.content == teacher(texts[0])

        response = client.responses.create(model="gpt-test", instructions=SYSTEM["content"],
                                           input=texts[1])
        assert (response.metadata or {}).get("x-tracer-wrap") == "local"
        assert response.output_text == teacher(texts[1])
        events = list(client.responses.create(model="gpt-test", instructions=SYSTEM["content"],
                                              input=texts[1], stream=True))
        assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
        assert events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        with client.responses.stream(model="gpt-test", instructions=SYSTEM["content"],
                                     input=texts[1]) as stream:
            assert stream.get_final_response().output_text == teacher(texts[1])

        message = messages.messages.create(model="claude-test", max_tokens=64,
                                           system=SYSTEM["content"],
                                           messages=[{"role": "user", "content": texts[2]}])
        assert message.id.startswith("msg_tracerwrap_")
        assert message.content[0].text == teacher(texts[2])  # type: ignore[union-attr]
        with messages.messages.stream(model="claude-test", max_tokens=64,
                                      system=SYSTEM["content"],
                                      messages=[{"role": "user", "content": texts[2]}]) as ms:
            assert ms.get_final_message().content[0].text == teacher(texts[2])  # type: ignore
        assert upstream.total_calls == 3


def test_forwarded_streams_and_forced_tools_become_traces_with_usage(upstream: LLMServer,
                                                                     store: TraceStore) -> None:
    tool = {"type": "function", "function": {"name": "classify", "parameters": {
        "type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}}}
    with through(upstream, store) as (url, _):
        client, messages = sdk(url), claude(url)
        streamed = list(client.chat.completions.create(
            model="gpt-test", messages=ask("my card disappeared"), stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) \
            == "card_lost"
        forced = client.chat.completions.create(model="gpt-tools", messages=ask("fx fee today"),
                                                tools=[tool], tool_choice="required")
        assert forced.choices[0].message.tool_calls
        with messages.messages.stream(model="claude-test", max_tokens=64,
                                      messages=[{"role": "user", "content": "top up failed"}]
                                      ) as ms:
            assert ms.get_final_text() == "top_up"
        wait_for(lambda: sum(store.count(t) for t in store.tasks()) == 3, "three traces")
    by_input = {t.input: t.teacher for task in store.tasks() for t in store.traces(task)}
    assert by_input == {"my card disappeared": "card_lost", "fx fee today": "exchange_rate",
                        "top up failed": "top_up"}
    flush_all()
    for task in store.tasks():
        counters = store.counters(task)
        assert counters["llm"] == 1 and counters["input_tokens"] > 0, (task, counters)


def test_free_form_calls_are_forwarded_untraced(upstream: LLMServer, store: TraceStore) -> None:
    tool = {"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}
    with through(upstream, store, routing=True) as (url, application):
        client = sdk(url)
        # An agent step (free tool choice) and a conversation: no single label. (n=2 is traced,
        # never answered locally: tests/integrations/test_requests_untouched.py.)
        client.chat.completions.create(model="gpt-test", messages=ask("refund"), tools=[tool])
        client.chat.completions.create(model="gpt-test", messages=[
            *ask("refund"), {"role": "assistant", "content": "refund"}])
        # A call that entered the engine would have made its task before its answer was sent.
        assert application.state.gateway.tasks.tasks() == {}
    assert upstream.calls["chat.completions"] == 2
    assert store.tasks() == []


def test_free_form_requests_and_answers_pass_byte_for_byte_and_streams_are_not_buffered(
        recorder: tuple[Recorder, str], store: TraceStore) -> None:
    rec, base = recorder
    body = (b'{"model": "gpt-4o",  "messages": [{"role": "user", "content": "Write a poem"}],'
            b' "tools": [{"type": "function", "function": {"name": "f"}}], "stream": true}')
    frames = [b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Ros"}}]}\n\n',
              b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"es"}}]}\n\n',
              b"data: [DONE]\n\n"]
    script = Scripted(headers=[("content-type", "text/event-stream"), ("x-request-id", "r-1"),
                               ("openai-processing-ms", "12")], chunks=frames, hold=1)
    rec.script = lambda seen: script
    with gateway(store, f"{base}/v1", base) as (url, application), \
            httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions?trace=1", content=body,
                           headers={"Authorization": f"Bearer {KEY}",
                                    "Content-Type": "application/json"}) as response:
            raw = response.iter_raw()
            first = b""
            while len(first) < len(frames[0]):
                first += next(raw)
            # The upstream holds its second frame until the client has the first: a gateway
            # that buffered would never deliver it.
            assert first == frames[0]
            script.release.set()
            rest = b"".join(raw)
        assert first + rest == b"".join(frames)
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "r-1"
        assert response.headers["openai-processing-ms"] == "12"
        assert application.state.gateway.tasks.tasks() == {}
    (seen,) = rec.seen
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "POST", "/v1/chat/completions", "trace=1", body)
    assert seen.header("authorization") == f"Bearer {KEY}"
    assert store.tasks() == []


def test_unknown_paths_are_forwarded_to_the_right_upstream(recorder: tuple[Recorder, str],
                                                           store: TraceStore) -> None:
    rec, base = recorder
    rec.script = lambda seen: Scripted(
        status=200, headers=[("content-type", "application/json"), ("x-echo", seen.path)],
        chunks=[b'{"object": "list", "data": []}'])
    upload = b"x" * 200_000
    with gateway(store, f"{base}/openai/v1", f"{base}/anthropic") as (url, _), \
            httpx.Client(base_url=url, timeout=30) as client:
        models = client.get("/v1/models?limit=2", headers={"Authorization": f"Bearer {KEY}"})
        embeddings = client.post("/v1/embeddings", json={"model": "e", "input": "hi"})
        files = client.post("/v1/files", content=upload,
                            headers={"content-type": "application/octet-stream"})
        anthropic_models = client.get("/v1/models", headers={"x-api-key": KEY,
                                                              "anthropic-version": "2023-06-01"})
        count = client.post("/v1/messages/count_tokens", json={"model": "c", "messages": []})
        stored = client.get("/v1/chat/completions?limit=1")  # a GET on a classification path
    assert [r.headers["x-echo"] for r in (models, embeddings, files, anthropic_models, count,
                                          stored)] \
        == ["/openai/v1/models", "/openai/v1/embeddings", "/openai/v1/files",
            "/anthropic/v1/models", "/anthropic/v1/messages/count_tokens",
            "/openai/v1/chat/completions"]
    assert models.json() == {"object": "list", "data": []}
    assert rec.seen[0].query == "limit=2" and rec.seen[0].method == "GET"
    assert rec.seen[0].body == b"" and rec.seen[0].header("transfer-encoding") is None
    assert rec.seen[2].body == upload
    assert rec.seen[3].header("x-api-key") == KEY


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,status", [("429", 429), ("500", 500)])
def test_upstream_errors_reach_the_sdks_unchanged_and_log_no_trace(
        upstream: LLMServer, store: TraceStore, kind: str, status: int) -> None:
    with through(upstream, store) as (url, _):
        client, messages = sdk(url), claude(url)
        upstream.fail(kind, times=3)  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError) as chat_error:
            client.chat.completions.create(model="gpt-test", messages=ask("refund"))
        with pytest.raises(openai.APIStatusError) as stream_error:
            client.chat.completions.create(model="gpt-test", messages=ask("refund"), stream=True)
        with pytest.raises(anthropic.APIStatusError) as message_error:
            messages.messages.create(model="claude-test", max_tokens=64,
                                     messages=[{"role": "user", "content": "refund"}])
    for error in (chat_error.value, stream_error.value):
        assert error.status_code == status
        assert error.response.headers["retry-after"] == "0"
        assert error.body == {"message": f"injected {status}", "code": None, "param": None,
                              "type": {429: "rate_limit_error", 500: "api_error"}[status]}
    assert message_error.value.status_code == status
    assert message_error.value.body == {"type": "error", "error": {
        "type": {429: "rate_limit_error", 500: "api_error"}[status],
        "message": f"injected {status}"}}
    assert message_error.value.response.headers["retry-after"] == "0"
    assert all(store.count(t) == 0 for t in store.tasks())


def test_an_unreachable_upstream_is_a_502_in_the_providers_shape(store: TraceStore) -> None:
    from _http import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with gateway(store, f"{dead}/v1", dead) as (url, _):
        with pytest.raises(openai.InternalServerError) as chat:
            sdk(url).chat.completions.create(model="gpt-test", messages=ask("refund"))
        with pytest.raises(anthropic.APIStatusError) as message:
            claude(url).messages.create(model="c", max_tokens=64,
                                        messages=[{"role": "user", "content": "refund"}])
    assert chat.value.status_code == 502 and "unreachable" in chat.value.message
    assert message.value.status_code == 502
    assert message.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_garbage_from_upstream_is_relayed_and_logs_no_trace(upstream: LLMServer,
                                                            store: TraceStore) -> None:
    with through(upstream, store) as (url, _), httpx.Client(base_url=url) as client:
        upstream.fail("garbage")
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": ask("refund")})
        assert r.status_code == 200 and r.content == b"<html>upstream garbage, not json"
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": ask("refund")})
        assert r.json()["choices"][0]["message"]["content"] == "refund"
        task = only_task(store)
        wait_for(lambda: store.count(task) == 1, "the good answer's trace")


# -- keys and tokens --------------------------------------------------------------------------


def test_the_callers_key_is_forwarded_untouched_and_never_stored_or_logged(
        recorder: tuple[Recorder, str], store: TraceStore, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    rec, base = recorder
    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "refund"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    rec.script = lambda seen: Scripted(headers=[("content-type", "application/json")],
                                       chunks=[json.dumps(answer).encode()])
    caplog.set_level(logging.DEBUG)
    with gateway(store, f"{base}/v1", base, token="gw-token") as (url, _):
        client = sdk(url, default_headers={"X-Tracer-Wrap-Token": "gw-token",
                                           "X-Tracer-Wrap-Task": "refunds"})
        assert client.chat.completions.create(model="m", messages=ask("give me my money back")
                                              ).choices[0].message.content == "refund"
        wait_for(lambda: store.count(only_task(store)) == 1, "a trace")
    (seen,) = rec.seen
    assert seen.header("authorization") == f"Bearer {KEY}"
    assert seen.header("x-tracer-wrap-token") is None  # the gateway's secret stays here
    assert seen.header("x-tracer-wrap-task") is None
    assert KEY not in caplog.text
    store.close()
    for path in Path(store.path).rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_the_gateway_token_is_required_when_set(upstream: LLMServer, store: TraceStore) -> None:
    with through(upstream, store, token="gw-token") as (url, _), \
            httpx.Client(base_url=url) as client:
        body = {"model": "m", "messages": ask("refund")}
        assert client.get("/tracer-wrap/healthz").json()["status"] == "ok"
        missing = client.post("/v1/chat/completions", json=body)
        wrong = client.post("/v1/chat/completions", json=body,
                            headers={"X-Tracer-Wrap-Token": "nope"})
        other = client.get("/v1/models", headers={"Authorization": "Bearer gw-token"})
        good = client.post("/v1/chat/completions", json=body,
                           headers={"X-Tracer-Wrap-Token": "gw-token"})
    assert missing.status_code == wrong.status_code == other.status_code == 401
    assert "x-tracer-wrap-token" in missing.json()["error"]["message"]
    assert good.status_code == 200
    assert upstream.total_calls == 1


def test_beyond_loopback_the_gateway_refuses_to_start_without_a_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRACER_WRAP_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="beyond loopback"):
        run(str(tmp_path / "s"), host="0.0.0.0")
    result = CliRunner().invoke(cli_app, ["--store", str(tmp_path / "s"), "gateway",
                                          "--host", "::"])
    assert result.exit_code == 1 and "token" in result.stderr


# -- wire shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["gateway", "serve"])
def test_no_listening_banner_before_a_refusal_to_start(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The banner says the server listens: it comes after the token rule's refusal, not before;
    a usable start prints it once."""
    monkeypatch.delenv("TRACER_WRAP_TOKEN", raising=False)
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    store_args = ["--store", str(tmp_path / "store"), command, "--embedder", "hashing"]
    refused = CliRunner().invoke(cli_app, [*store_args, "--host", "0.0.0.0"])
    assert refused.exit_code == 1 and "token" in refused.stderr, refused.output
    assert " on http://" not in refused.stderr and started == []
    served = CliRunner().invoke(cli_app, store_args)
    assert served.exit_code == 0, served.output
    assert served.stderr.count(" on http://127.0.0.1:") == 1 and len(started) == 1


@pytest.mark.parametrize("option", ["--openai-upstream", "--anthropic-upstream"])
@pytest.mark.parametrize("url", ["notaurl", "ftp://example.com/v1", "http://"])
def test_an_upstream_that_is_no_http_url_is_a_usage_error(
        option: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    result = CliRunner().invoke(cli_app, ["--store", str(tmp_path / "store"), "gateway",
                                          option, url])
    assert result.exit_code == 2 and started == [], result.output
    assert result.stderr.strip().count("\n") == 0 and option in result.stderr
    with pytest.raises(ConfigError, match="upstream"):
        run(str(tmp_path / "store"), **{option[2:].replace("-", "_"): url})


def test_local_answers_have_the_wire_shape_of_the_real_apis(upstream: LLMServer,
                                                            store: TraceStore) -> None:
    """Every key a local answer sends is one the API sends too, and the required ones are all
    there (the fake upstream sends what the real APIs send)."""
    def keys(value: Any, prefix: str = "") -> set[str]:
        if isinstance(value, dict):
            return {f"{prefix}{k}" for k in value} | {
                key for k, v in value.items() for key in keys(v, f"{prefix}{k}.")}
        if isinstance(value, list) and value:
            return keys(value[0], f"{prefix}0.")
        return set()

    requests = [("/v1/chat/completions", {"model": "m", "messages": ask("hello refund")}),
                ("/v1/responses", {"model": "m", "input": "hello refund"}),
                ("/v1/messages", {"model": "c", "max_tokens": 64,
                                  "messages": [{"role": "user", "content": "hello refund"}]})]
    with through(upstream, store, routing=True) as (url, application), \
            httpx.Client(base_url=url) as client:
        remote = [client.post(path, json=body) for path, body in requests]
        for task in tasks_of(store, 3):
            fit_from_store(store, application, task)
        local = [client.post(path, json={**body, "messages": ask(easy_texts(1)[0])}
                             if "messages" in body and path != "/v1/messages" else
                             {**body, "input": easy_texts(1)[0]} if "input" in body else
                             {**body, "messages": [{"role": "user", "content": easy_texts(1)[0]}]})
                 for path, body in requests]
    for theirs, ours in zip(remote, local):
        assert ours.headers["x-tracer-wrap"] == "local"
        assert ours.headers["content-type"] == "application/json"
        extra = keys(ours.json()) - keys(theirs.json())
        assert extra <= {"metadata", "metadata.x-tracer-wrap", "choices.0.message.tool_calls"}
        missing = keys(theirs.json()) - keys(ours.json())
        assert not {k for k in missing if k.count(".") == 0} - {"service_tier"}, missing


def test_a_forwarded_responses_stream_becomes_a_trace(recorder: tuple[Recorder, str],
                                                      store: TraceStore) -> None:
    """The Responses API's events, as its documentation shows them, tapped on the way."""
    rec, base = recorder
    done = {"id": "resp_1", "object": "response", "created_at": 1741290958, "status": "completed",
            "model": "gpt-4.1", "output": [{
                "id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "refund", "annotations": []}]}],
            "usage": {"input_tokens": 37, "output_tokens": 2, "total_tokens": 39}}
    events = [("response.created", {"response": {**done, "status": "in_progress",
                                                  "output": []}}),
              ("response.output_text.delta", {"item_id": "msg_1", "output_index": 0,
                                              "content_index": 0, "delta": "refund"}),
              ("response.completed", {"response": done})]
    frames = [f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': i, **data})}"
              f"\n\n".encode() for i, (kind, data) in enumerate(events)]
    rec.script = lambda seen: Scripted(headers=[("content-type", "text/event-stream")],
                                       chunks=frames)
    with gateway(store, f"{base}/v1", base) as (url, _):
        streamed = list(sdk(url).responses.create(model="gpt-4.1", input="money back please",
                                                  stream=True))
        assert [e.type for e in streamed] == [kind for kind, _ in events]
        task = only_task(store)
        wait_for(lambda: store.count(task) == 1, "the trace")
    assert [(t.input, t.teacher) for t in store.traces(task)] == [("money back please",
                                                                   "refund")]
    assert rec.seen[0].header("accept-encoding") is None  # a traced answer must be readable
    flush_all()
    assert store.counters(task)["input_tokens"] == 37


def test_the_gateway_command_serves_several_worker_processes(upstream: LLMServer,
                                                             tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from _http import free_port

    from tracer_wrap.engine import TracedTask
    from tracer_wrap.integrations._prompt import openai_chat_view

    request = {"model": "gpt-test", "messages": ask("refund")}
    view = openai_chat_view(request)
    assert view is not None
    store = TraceStore(tmp_path / "store")
    for text, label in make_traces(800):
        store.append(view.task_key, text, label)
    TracedTask(view.task_key, store=store, embedder=hashing_embedder(), target=0.9,
               min_traces=20, refit_every=None).refit()
    store.set_setting(view.task_key, "routing", True)
    port = free_port()
    env = {**os.environ, "TRACER_WRAP_EMBEDDER": "hashing", "TRACER_WRAP_AUDIT_RATE": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer_wrap.ops.cli", "--store", str(tmp_path / "store"),
         "gateway", "--port", str(port), "--workers", "2",
         "--openai-upstream", upstream.base_url_openai],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            try:
                return httpx.get(f"{url}/tracer-wrap/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, "the gateway's workers started")
        client = sdk(url)
        replies = [client.chat.completions.create(model="gpt-test", messages=ask(t))
                   for t in easy_texts(20)]
        assert sum(map(is_local, replies)) >= 15
        assert upstream.calls["chat.completions"] == 20 - sum(map(is_local, replies))
        forwarded = httpx.post(f"{url}/v1/embeddings", json={"model": "e", "input": "x"})
        assert forwarded.status_code == 404 and "no route" in forwarded.text  # the fake's own
    finally:
        proc.terminate()
        proc.wait(60)


# -- failing open ---------------------------------------------------------------------------


def test_when_tracer_wrap_is_disabled_the_gateway_is_a_plain_proxy(
        upstream: LLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disabled, the gateway never creates, opens or writes its store: not at start, not on a
    call, not from the background worker."""
    import tracer_wrap.ops.gateway as gateway_module

    monkeypatch.setenv("TRACER_WRAP_DISABLE", "1")
    where = tmp_path / "never"
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    gateway_module.run(str(where), openai_upstream=upstream.base_url_openai)
    application = create_app(str(where), openai_upstream=upstream.base_url_openai,
                             anthropic_upstream=upstream.base_url_anthropic,
                             embedder=hashing_embedder(), routing=True, **FAST)
    with serving(application) as url:
        for text in ("refund", "refund please", "my money back"):
            reply = sdk(url).chat.completions.create(model="gpt-test", messages=ask(text))
            assert reply.choices[0].message.content == "refund"
    flush_everything()
    assert len(started) == 1 and upstream.total_calls == 3
    assert not where.exists()


def test_the_gateway_refuses_to_start_on_a_store_it_cannot_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `tracer-wrap serve` does: a store that is a regular file (or cannot be written) stops
    the start with one line and exit code 1, instead of an untraced proxy that says it is
    healthy."""
    from tracer_wrap.errors import StoreError

    monkeypatch.delenv("TRACER_WRAP_DISABLE", raising=False)
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    a_file = tmp_path / "a-file"
    a_file.write_text("hi\n", encoding="utf-8")
    with pytest.raises(StoreError, match="not writable"):
        run(str(a_file))
    result = CliRunner().invoke(cli_app, ["--store", str(a_file), "gateway"])
    assert result.exit_code == 1 and "not writable" in result.stderr, result.output
    assert "Traceback" not in result.stderr and started == []
    run(str(tmp_path / "fresh"))  # a usable store is created, as serve creates it
    assert len(started) == 1 and (tmp_path / "fresh").is_dir()


def test_a_broken_store_never_fails_a_call(upstream: LLMServer, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """The store cannot even be opened (a file where its directory should be): every call is
    forwarded and answered as if the gateway were a plain proxy; the fault is logged."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("", encoding="utf-8")
    application = create_app(str(blocked / "store"), openai_upstream=upstream.base_url_openai,
                             anthropic_upstream=upstream.base_url_anthropic,
                             embedder=hashing_embedder(), routing=True, **FAST)
    with serving(application) as url:
        client, messages = sdk(url), claude(url)
        for text in easy_texts(3):
            reply = client.chat.completions.create(model="gpt-test", messages=ask(text))
            assert reply.choices[0].message.content == teacher(text)
            streamed = list(client.chat.completions.create(model="gpt-test", messages=ask(text),
                                                           stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) \
                == teacher(text)
        message = messages.messages.create(model="claude-test", max_tokens=64,
                                           messages=[{"role": "user", "content": "refund"}])
        assert message.content[0].text == "refund"  # type: ignore[union-attr]
    assert upstream.total_calls == 7
    assert "tracer_wrap" in caplog.text and "failed" in caplog.text


# -- reading streams ------------------------------------------------------------------------


def test_server_sent_events_are_read_whatever_the_chunk_boundaries() -> None:
    from tracer_wrap.ops.gateway import _SSE

    stream = (b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\n: a comment\n\n"
              b"data: {\"b\":\ndata: 2}\n\ndata:[DONE]\r\r")
    expected = [("message_start", '{"a": 1}'), ("", '{"b":\n2}'), ("", "[DONE]")]
    for size in (1, 2, 3, 7, len(stream)):
        parser = _SSE()
        events = [e for i in range(0, len(stream), size)
                  for e in parser.feed(stream[i:i + size])]
        assert events == expected, size
    parser = _SSE()  # a multi-byte character split across chunks; a Unicode line separator
    word = "data: {\"t\": \"caf\u00e9\u2028\"}\n\n".encode()
    cut = word.index(b"\xc3") + 1
    assert parser.feed(word[:cut]) + parser.feed(word[cut:]) == [
        ("", '{"t": "caf\u00e9\u2028"}')]


def test_a_stream_cut_at_odd_places_is_relayed_whole_and_traced(
        recorder: tuple[Recorder, str], store: TraceStore) -> None:
    rec, base = recorder
    events = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
              for delta in ({"role": "assistant", "content": ""}, {"content": "ref"},
                            {"content": "und"})]
    events.append({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 1,
                                            "total_tokens": 12}})
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    raw += b"data: [DONE]\r\n\r\n"
    chunks = [raw[i:i + 13] for i in range(0, len(raw), 13)]
    rec.script = lambda seen: Scripted(headers=[("content-type", "text/event-stream")],
                                       chunks=chunks)
    with gateway(store, f"{base}/v1", base) as (url, _), httpx.Client(base_url=url) as client:
        r = client.post("/v1/chat/completions", json={
            "model": "m", "messages": ask("money back"), "stream": True})
        assert r.content == raw
        task = only_task(store)
        wait_for(lambda: store.count(task) == 1, "the trace")
    assert [(t.input, t.teacher) for t in store.traces(task)] == [("money back", "refund")]
    flush_all()
    assert store.counters(task)["input_tokens"] == 11


def test_a_stream_the_upstream_cuts_reaches_the_caller_cut_and_logs_one_line(
        recorder: tuple[Recorder, str], store: TraceStore,
        caplog: pytest.LogCaptureFixture) -> None:
    rec, base = recorder

    async def cut(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: {\"a\": 1}\n\n",
                    "more_body": True})
        # returns without finishing the body: uvicorn closes the connection mid-answer

    with serving(cut) as cutting, gateway(store, f"{cutting}/v1", cutting) as (url, _), \
            httpx.Client(base_url=url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/chat/completions",
                        json={"model": "m", "messages": ask("refund"), "stream": True})
        assert client.get("/tracer-wrap/healthz").status_code == 200
    assert "Exception in ASGI application" not in caplog.text
    assert "the upstream's answer was cut" in caplog.text


def test_a_header_names_the_task(upstream: LLMServer,
                                                          store: TraceStore) -> None:
    with through(upstream, store) as (url, _):
        client = sdk(url, default_headers={"X-Tracer-Wrap-Task": "support-intent"})
        client.chat.completions.create(model="gpt-test", messages=ask("my card was stolen"))
        client.chat.completions.create(model="other-model", messages=[
            {"role": "user", "content": "Label this: refund please"}])
        wait_for(lambda: store.count("support-intent") == 2, "two traces in the named task")
    assert store.tasks() == ["support-intent"]


def test_the_task_header_is_read_as_utf8_within_the_sidecars_limit(upstream: LLMServer,
                                                                    store: TraceStore) -> None:
    from tracer_wrap.ops._http import MAX_TASK_CHARS

    body = {"model": "m", "messages": ask("refund please")}
    with through(upstream, store) as (url, _), httpx.Client(base_url=url) as client:
        def post(name: bytes) -> httpx.Response:
            return client.post("/v1/chat/completions", json=body,
                               headers={"X-Tracer-Wrap-Task": name})

        assert post("intención".encode()).status_code == 200
        assert post(b"x" * MAX_TASK_CHARS).status_code == 200
        for bad in (b"x" * (MAX_TASK_CHARS + 1), "intención".encode("latin-1")):
            r = post(bad)
            assert r.status_code == 400 and "x-tracer-wrap-task" in r.json()["error"]["message"]
        assert upstream.total_calls == 2
        wait_for(lambda: len(store.tasks()) == 2, "two traces")
    assert sorted(store.tasks()) == sorted(["intención", "x" * MAX_TASK_CHARS])


# -- browsers and bad input --------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"},
                                     {"Sec-Fetch-Site": "cross-site"}])
def test_browser_requests_from_other_origins_are_403(upstream: LLMServer, store: TraceStore,
                                                     headers: dict[str, str]) -> None:
    body = {"model": "m", "messages": ask("refund")}
    with through(upstream, store) as (url, _), httpx.Client(base_url=url) as client:
        classify = client.post("/v1/chat/completions", json=body, headers=headers)
        plain = client.post("/v1/chat/completions", content=json.dumps(body),
                            headers={**headers, "Content-Type": "text/plain"})
        other = client.get("/v1/models", headers=headers)
        health = client.get("/tracer-wrap/healthz", headers=headers)
        own = client.post("/v1/chat/completions", json=body, headers={"Origin": url})
        own_health = client.get("/tracer-wrap/healthz", headers={"Origin": url})
    assert classify.status_code == plain.status_code == other.status_code == 403
    assert health.status_code == 403 and own_health.status_code == 200
    assert "origin" in classify.json()["error"]["message"] or "cross-site" in \
        classify.json()["error"]["message"]
    assert own.status_code == 200
    assert upstream.total_calls == 1  # only the same-origin call went out


def test_bodies_tracer_wrap_cannot_read_are_forwarded_untouched_and_untraced(
        upstream: LLMServer, store: TraceStore) -> None:
    """Not JSON by its content type, a lone surrogate, nesting deeper than 64 levels, a huge
    integer: the upstream gets the bytes as sent and answers; no trace, never a gateway 500."""
    text_plain = json.dumps({"model": "m", "messages": ask("refund")}).encode()
    surrogate = b'{"model": "m", "messages": [{"role": "user", "content": "refund \\ud800"}]}'
    deep = (b'{"model": "m", "messages": [{"role": "user", "content": "refund"}], "x": '
            + b"[" * 200 + b"]" * 200 + b"}")
    huge = (b'{"model": "m", "messages": [{"role": "user", "content": "refund"}], "seed": '
            + b"9" * 30 + b"}")
    with through(upstream, store) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        statuses = [client.post("/v1/chat/completions", content=raw,
                                headers={"Content-Type": kind}).status_code
                    for raw, kind in ((text_plain, "text/plain"),
                                      (surrogate, "application/json"),
                                      (deep, "application/json"),
                                      (huge, "application/json"))]
        good = client.post("/v1/chat/completions", json={"model": "m", "messages": ask("hi")})
        assert good.status_code == 200
        task = only_task(store)
    assert upstream.total_calls == 5, statuses  # every body reached the upstream
    flush_all()
    assert store.counters(task)["llm"] == 1 and store.count(task) == 1


def test_options_a_local_answer_cannot_honour_always_reach_the_upstream(
        upstream: LLMServer, store: TraceStore) -> None:
    """The SDK wrappers' rule (local_answer_blocker) read on the wire body: n > 1, logprobs,
    store, a stop sequence that would cut the label, a background response, thinking; such a call
    is traced, and the upstream answers it, while the same call without the option is local."""
    named = {"X-Tracer-Wrap-Task": "intent"}
    with through(upstream, store, routing=True) as (url, application):
        client, messages = sdk(url, default_headers=named), claude(url, default_headers=named)
        fit_from_store(store, application, "intent")
        text = "hello lost card please stolen card #blocked"

        def chat(**options: Any) -> Any:
            return client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=ask(text), **options)

        def responses(**options: Any) -> Any:
            return client.responses.with_raw_response.create(
                model="gpt-test", instructions=SYSTEM["content"], input=text, **options)

        def claude_call(**options: Any) -> Any:
            return messages.messages.with_raw_response.create(
                model="claude-test", max_tokens=2000, system=SYSTEM["content"],
                messages=[{"role": "user", "content": text}], **options)

        for plain in (chat, responses, claude_call):  # without the option: answered locally
            assert plain().headers.get("x-tracer-wrap") == "local", plain
        blocked = [chat(n=3), chat(logprobs=True, top_logprobs=2), chat(store=True),
                   chat(stop=["_"]), chat(extra_body={"logprobs": True}),
                   responses(background=True), responses(store=True),
                   claude_call(thinking={"type": "enabled", "budget_tokens": 1024})]
        assert [r.headers.get("x-tracer-wrap") for r in blocked] == [None] * len(blocked)
        assert upstream.total_calls == len(blocked)
    flush_all()  # the server has stopped: every answer it relayed is recorded
    counters = store.counters("intent")
    assert counters["llm"] == len(blocked) and counters["local"] == 3
