"""wrap_anthropic against the real anthropic SDK over real HTTP to the local LLM server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import anthropic
import pytest
from _support import TASK_OPTIONS, easy_texts, fitted, teacher
from anthropic.types import Message

from tracer_wrap import flush
from tracer_wrap.errors import MissingExtraError
from tracer_wrap.integrations import is_local_message, wrap_anthropic

LABELS = ["card_lost", "exchange_rate", "refund", "top_up"]
SYSTEM = "Classify the banking request. Answer with the label only."


def ask(text: str) -> dict:
    return {"model": "claude-test", "max_tokens": 64, "system": SYSTEM,
            "messages": [{"role": "user", "content": text}]}



@pytest.fixture
def client(server, store, embedder) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t", max_retries=0) as raw:
        yield wrap_anthropic(raw, task="intent", labels=LABELS, store=store, embedder=embedder,
                             **TASK_OPTIONS)


def test_create_stream_and_manager_are_traced_then_answered_locally(client, server, store):
    assert isinstance(client, anthropic.Anthropic) and client.models is not None
    message = client.messages.create(**ask("refund please #1"))
    assert isinstance(message, Message) and message.content[0].text == "refund"
    with client.messages.create(**ask("top up #2"), stream=True) as stream:
        assert isinstance(stream, anthropic.Stream)
        events = list(stream)
    assert events[-1].type == "message_stop"
    with client.messages.stream(**ask("fx fee #3")) as stream:
        assert "".join(stream.text_stream) == "exchange_rate"
    flush()
    assert [t.teacher for t in store.traces("intent")] == ["refund", "top_up", "exchange_rate"]
    flush()
    flush()
    counters = store.counters("intent")
    assert counters["llm"] == 3 and counters["input_tokens"] > 0 and counters["output_tokens"] > 0

    fitted(store, client.tracer_wrap_tasks, "intent")
    calls = server.calls["messages"]
    text = easy_texts(1)[0]
    message = client.messages.create(**ask(text))
    assert is_local_message(message) and message.content[0].text == teacher(text)
    assert message.usage.input_tokens == 0
    with client.messages.create(**ask(text), stream=True) as stream:
        assert [e.type for e in stream][-1] == "message_stop"
    with client.messages.stream(**ask(text)) as stream:
        assert stream.get_final_message().content[0].text == teacher(text)
    assert server.calls["messages"] == calls
    assert client.with_options(timeout=3).tracer_wrap_tasks is client.tracer_wrap_tasks


def test_async_client(server, store, embedder):
    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                            max_retries=0) as raw:
            client = wrap_anthropic(raw, task="intent", labels=LABELS, store=store,
                                    embedder=embedder, **TASK_OPTIONS)
            assert isinstance(client, anthropic.AsyncAnthropic)
            message = await client.messages.create(**ask("refund #a1"))
            assert message.content[0].text == "refund"
            async with client.messages.stream(**ask("top up #a2")) as stream:
                assert (await stream.get_final_message()).content[0].text == "top_up"
            stream = await client.messages.create(**ask("fx fee #a3"), stream=True)
            async with stream:
                assert [e.type async for e in stream][-1] == "message_stop"
            flush()
            assert [t.teacher for t in store.traces("intent")] == \
                ["refund", "top_up", "exchange_rate"]
            fitted(store, client.tracer_wrap_tasks, "intent")
            calls = server.calls["messages"]
            text = easy_texts(1)[0]
            assert is_local_message(await client.messages.create(**ask(text)))
            async with client.messages.stream(**ask(text)) as stream:
                assert (await stream.get_final_message()).content[0].text == teacher(text)
            assert server.calls["messages"] == calls

    asyncio.run(main())


@pytest.mark.parametrize("fault, error", [("429", anthropic.RateLimitError),
                                          ("500", anthropic.InternalServerError),
                                          ("timeout", anthropic.APITimeoutError)])
def test_sdk_errors_pass_through_and_log_no_trace(client, server, store, fault, error):
    server.fail(fault, delay=1.0)
    with pytest.raises(error) as caught:
        client.with_options(timeout=0.3).messages.create(**ask("refund #e"))
    flush()
    assert type(caught.value) is error and store.count("intent") == 0


def test_invalid_output_is_logged_invalid_and_returned(client, server, store):
    server.teacher = lambda text: "banana"
    assert client.messages.create(**ask("refund #i")).content[0].text == "banana"
    flush()
    (trace,) = store.traces("intent")
    assert not trace.valid


def test_missing_sdk_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "anthropic" or m.startswith("anthropic.")
                 or m.startswith("tracer_wrap.integrations._anthropic")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "anthropic", None)
    with pytest.raises(MissingExtraError) as caught:
        wrap_anthropic(object())
    assert caught.value.extra == "anthropic" and "tracer-wrap[anthropic]" in str(caught.value)
