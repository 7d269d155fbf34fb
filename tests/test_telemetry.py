"""OpenTelemetry spans of traced calls (GenAI conventions plus tracer_wrap's own attributes),
read back with the SDK's in-memory exporter; a no-op without ``opentelemetry-api``; never raising
into a call."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from _wait import until

pytest.importorskip("opentelemetry.sdk")

from _synthetic import fill_store  # noqa: E402
from llm_server import LLMServer, serve_llm  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from tracer_wrap import telemetry  # noqa: E402
from tracer_wrap.engine import TracedTask  # noqa: E402
from tracer_wrap.integrations import wrap_anthropic, wrap_openai  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OPTIONS: dict[str, Any] = {"min_traces": 20, "refit_every": None, "audit_rate": 0.0}
SYSTEM = {"role": "system", "content": "Classify the banking request. Answer with the label only."}
WORDS = {"card_lost": "lost card", "refund": "refund", "top_up": "top up",
         "exchange_rate": "fx fee"}


def teacher(text: str) -> str:
    return next((label for label, word in WORDS.items() if word in text), "refund")


def ask(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


@pytest.fixture
def client(server, store, embedder) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        yield wrap_openai(raw, task="intent", store=store, embedder=embedder, **OPTIONS)


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    exporter.clear()
    return span


def fit(client: Any, store: Any) -> str:
    """Fit the router of task "intent"; return a text it answers locally."""
    fill_store(store, "intent", n=800)
    task = client.tracer_wrap_tasks.task("intent")
    task.refit()
    return next(f"hello {word} please {word} #{i}" for i, word in enumerate(WORDS.values())
                if task.route(f"hello {word} please {word} #{i}").local)


def test_an_llm_answer_is_one_client_span_with_genai_attributes(client, spans, server):
    client.chat.completions.create(model="gpt-test", messages=ask("refund please"),
                                   temperature=0.2, max_tokens=5)
    span = only(spans)
    attributes = dict(span.attributes or {})
    assert span.name == "chat gpt-test" and span.kind == SpanKind.CLIENT
    assert span.status.status_code == StatusCode.UNSET
    assert {k: attributes[k] for k in (
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", "gen_ai.request.model",
        "gen_ai.response.model", "gen_ai.response.finish_reasons", "gen_ai.request.max_tokens",
        "gen_ai.request.temperature", "tracer_wrap.task", "tracer_wrap.answered_locally",
        "tracer_wrap.label", "tracer_wrap.traced", "tracer_wrap.target")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-test",
        "gen_ai.response.model": "gpt-test", "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.request.max_tokens": 5, "gen_ai.request.temperature": 0.2,
        "tracer_wrap.task": "intent", "tracer_wrap.answered_locally": False,
        "tracer_wrap.label": "refund", "tracer_wrap.traced": True, "tracer_wrap.target": 0.95}
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"]
    assert attributes["gen_ai.response.id"].startswith("chatcmpl-")
    assert attributes["openai.response.system_fingerprint"] == "fp_llm_server"
    assert attributes["tracer_wrap.reason"] == "no router fitted yet"
    assert "tracer_wrap.router.version" not in attributes


def test_a_local_answer_reports_version_coverage_and_zero_usage(client, spans, server, store):
    text = fit(client, store)
    spans.clear()
    calls = server.total_calls
    client.chat.completions.create(model="gpt-test", messages=ask(text))
    assert server.total_calls == calls
    attributes = dict(only(spans).attributes or {})
    assert attributes["tracer_wrap.answered_locally"] is True
    assert attributes["tracer_wrap.router.version"] == store.current_version("intent")
    assert 0 < attributes["tracer_wrap.certified_coverage"] <= 1
    assert attributes["tracer_wrap.label"] == attributes["tracer_wrap.router.label"] == \
        teacher(text)
    assert 0 <= attributes["tracer_wrap.router.score"] <= 1
    assert attributes["gen_ai.usage.input_tokens"] == attributes["gen_ai.usage.output_tokens"] == 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "tracer_wrap.reason" not in attributes and attributes["tracer_wrap.audit"] is False


def test_a_span_reads_the_certified_coverage_from_memory_never_from_the_store(
        client, spans, server, store, embedder, monkeypatch):
    text = fit(client, store)
    from tracer_wrap.versions import certified_coverage

    expected = certified_coverage(store.manifest("intent", store.current_version("intent")), 0.9)
    with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        other = wrap_openai(raw, task="intent", store=store, embedder=embedder,
                            **{**OPTIONS, "target": 0.9})
        task = other.tracer_wrap_tasks.task("intent")
        until(lambda: task.router is not None, "the version loaded")

        def no_store_read(*args, **kwargs):
            raise AssertionError("a call read a manifest")

        monkeypatch.setattr(TraceStore, "manifest", no_store_read)
        spans.clear()
        other.chat.completions.create(model="gpt-test", messages=ask(text))
    assert only(spans).attributes["tracer_wrap.certified_coverage"] == expected


def test_the_reason_for_deferring_is_reported(client, spans, server, store, embedder):
    text = fit(client, store)
    spans.clear()
    client.chat.completions.create(model="gpt-test", messages=ask(text), logprobs=True)
    attributes = dict(only(spans).attributes or {})
    assert attributes["tracer_wrap.answered_locally"] is False
    assert attributes["tracer_wrap.reason"].startswith("logprobs: ")
    auditing = wrap_openai(client, task="intent", store=store, embedder=embedder,
                           **{**OPTIONS, "audit_rate": 1.0})
    auditing.chat.completions.create(model="gpt-test", messages=ask(text))
    attributes = dict(only(spans).attributes or {})
    assert attributes["tracer_wrap.audit"] is True and attributes["tracer_wrap.reason"] == \
        "audit sample"
    client.chat.completions.create(model="gpt-test", messages=ask("zzz unknown words"))
    attributes = dict(only(spans).attributes or {})
    assert attributes["tracer_wrap.answered_locally"] is False and attributes["tracer_wrap.reason"]


def test_an_llm_error_marks_the_span_and_propagates(client, spans, server):
    server.fail("500")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-test", messages=ask("refund"))
    span = only(spans)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "openai.InternalServerError"
    assert [e.name for e in span.events] == ["exception"]


def wait_for_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one finished span, once the garbage collector has ended it (a condition, polled with
    the clock running: on a busy machine a hundred back-to-back collections once passed before
    the span ended, so something else held the stream for a moment)."""
    until(lambda: gc.collect() >= 0 and exporter.get_finished_spans(), "the span ended")
    return only(exporter)


def test_a_stream_ends_its_span_when_read_or_abandoned(client, spans, server):
    stream = client.chat.completions.create(model="gpt-test", messages=ask("top up"),
                                            stream=True, stream_options={"include_usage": True})
    assert spans.get_finished_spans() == ()  # open while the caller reads
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "top_up"
    attributes = dict(only(spans).attributes or {})
    assert attributes["tracer_wrap.label"] == "top_up" and attributes["gen_ai.usage.input_tokens"]
    assert "tracer_wrap.abandoned" not in attributes
    # Closed after one chunk, then dropped: the span ends, marked abandoned, with no label.
    with client.chat.completions.create(model="gpt-test", messages=ask("refund"),
                                        stream=True) as stream:
        next(iter(stream))
    del stream
    attributes = dict(wait_for_span(spans).attributes or {})
    assert attributes["tracer_wrap.abandoned"] is True and "tracer_wrap.label" not in attributes
    # Never read at all: ends when collected.
    stream = client.chat.completions.create(model="gpt-test", messages=ask("refund"), stream=True)
    del stream
    assert wait_for_span(spans).attributes["tracer_wrap.abandoned"] is True
    # A stream manager never entered ends when collected too.
    manager = client.chat.completions.stream(model="gpt-test", messages=ask("refund"))
    del manager
    assert wait_for_span(spans).attributes["tracer_wrap.abandoned"] is True


def test_an_async_stream_abandoned_ends_its_span(server, store, embedder, spans):
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as raw:
            client = wrap_openai(raw, task="intent", store=store, embedder=embedder, **OPTIONS)
            stream = await client.chat.completions.create(model="gpt-test", stream=True,
                                                          messages=ask("refund"))
            async with stream:
                async for _ in stream:
                    break
            del stream

    asyncio.run(main())  # closing the loop finalises its async generators
    attributes = dict(wait_for_span(spans).attributes or {})
    assert attributes["tracer_wrap.abandoned"] is True and "tracer_wrap.label" not in attributes


def test_async_and_anthropic_calls_have_spans(server, store, embedder, spans):
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as raw, \
                anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                         max_retries=0) as raw_claude:
            client = wrap_openai(raw, task="intent", store=store, embedder=embedder, **OPTIONS)
            claude = wrap_anthropic(raw_claude, task="intent", store=store, embedder=embedder,
                                    **OPTIONS)
            await client.responses.create(model="gpt-r", input="fx fee")
            async with claude.messages.stream(model="claude-test", max_tokens=8,
                                              messages=[{"role": "user", "content": "refund"}]
                                              ) as stream:
                await stream.get_final_message()

    asyncio.run(main())
    by_name = {s.name: dict(s.attributes or {}) for s in spans.get_finished_spans()}
    assert set(by_name) == {"chat gpt-r", "chat claude-test"}
    assert by_name["chat gpt-r"]["gen_ai.response.finish_reasons"] == ("completed",)
    assert by_name["chat claude-test"]["gen_ai.provider.name"] == "anthropic"
    assert by_name["chat claude-test"]["tracer_wrap.label"] == "refund"
    assert by_name["chat claude-test"]["gen_ai.request.stream"] is True
    assert by_name["chat claude-test"]["gen_ai.usage.output_tokens"] > 0


def test_paths_that_are_no_sdk_call_are_spans_named_after_the_task(store, embedder, spans):
    task = TracedTask("tickets", store=store, embedder=embedder, **OPTIONS)
    assert task.call("refund please", lambda: "refund") == "refund"
    span = only(spans)
    assert span.name == "classify tickets" and span.attributes["tracer_wrap.label"] == "refund"
    task.route_many(["a", "b"])  # the sidecar: one span per routed input
    assert [s.name for s in spans.get_finished_spans()] == ["classify tickets"] * 2


def test_spans_are_children_of_the_callers_span(client, spans):
    tracer = telemetry._get_tracer()
    with tracer.start_as_current_span("handle request") as parent:
        client.chat.completions.create(model="gpt-test", messages=ask("refund"))
    call, outer = spans.get_finished_spans()
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    assert outer.name == "handle request"


def test_telemetry_never_raises_into_a_call(client, server, caplog):
    class Broken:
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            return self

        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter down")

    telemetry.use_tracer_provider(Broken())
    try:
        reply = client.chat.completions.create(model="gpt-test", messages=ask("refund"))
    finally:
        telemetry.use_tracer_provider(None)
    assert reply.choices[0].message.content == "refund"
    assert "telemetry failed" in caplog.text


def test_without_opentelemetry_spans_are_no_ops(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None  # not installed
        from tracer_wrap import telemetry
        from tracer_wrap.engine import TracedTask
        task = TracedTask("t", store=sys.argv[1], embedder="hashing", min_traces=20)
        assert task.call("refund please", lambda: "refund") == "refund"
        assert type(telemetry.start_call("t", task.options, {})) is telemetry.CallSpan
        assert type(telemetry.current_call()) is telemetry.CallSpan
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_gateway_calls_have_the_same_request_attributes_as_sdk_calls(server, store, spans):
    pytest.importorskip("uvicorn")
    from _http import serving

    from tracer_wrap.model.hashing import hashing_embedder
    from tracer_wrap.ops.gateway import create_app

    application = create_app(store, openai_upstream=server.base_url_openai,
                             anthropic_upstream=server.base_url_anthropic,
                             embedder=hashing_embedder(), **OPTIONS)
    with serving(application) as url, \
            openai.OpenAI(base_url=f"{url}/v1", api_key="t", max_retries=0) as through:
        through.chat.completions.create(model="gpt-test", messages=ask("refund please"),
                                        temperature=0.2, max_tokens=5)
        until(spans.get_finished_spans, "the gateway's span ended")
    attributes = dict(only(spans).attributes or {})
    assert {k: attributes.get(k) for k in (
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", "gen_ai.request.model",
        "gen_ai.request.max_tokens", "gen_ai.request.temperature", "gen_ai.request.stream",
        "tracer_wrap.api", "tracer_wrap.label")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-test",
        "gen_ai.request.max_tokens": 5, "gen_ai.request.temperature": 0.2,
        "gen_ai.request.stream": False, "tracer_wrap.api": "openai.chat",
        "tracer_wrap.label": "refund"}
