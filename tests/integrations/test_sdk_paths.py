"""The call shapes added for the Responses API, raw and streamed responses and Anthropic's parse
helpers, through the real SDKs over real HTTP: traced on the LLM path, answered locally with the
SDK's own types (the provider's request count proves the call was avoided), or, for raw HTTP
responses, always sent to the LLM."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from _support import TASK_OPTIONS, easy_texts, fitted, teacher
from anthropic.types import Message, ParsedMessage
from openai.types.chat import ChatCompletion
from openai.types.responses import ParsedResponse, Response, ResponseStreamEvent

from tracer_wrap import flush
from tracer_wrap.integrations import is_local, is_local_message, wrap_anthropic, wrap_openai
from tracer_wrap.integrations.zero_code import autolog
from tracer_wrap.store import TraceStore

INSTRUCTIONS = "Classify the banking request. Answer with the label only."
SYSTEM = {"role": "system", "content": INSTRUCTIONS}


class Intent(pydantic.BaseModel):
    label: str


TOOL = {"type": "function", "name": "classify", "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["label"],
                       "properties": {"label": {"type": "string"}}}}
FORCED = {"type": "function", "name": "classify"}



@pytest.fixture
def client(server, store, embedder) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        yield wrap_openai(raw, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)


@pytest.fixture
def claude(server, store, embedder) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                             max_retries=0) as raw:
        yield wrap_anthropic(raw, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)


def local_text(tasks: Any, seed: int = 7) -> str:
    """A fresh text the task "intent" answers locally."""
    task = tasks.task("intent")
    return next(t for t in easy_texts(20, seed=seed) if task.route(t).local)


def teachers(store: TraceStore) -> list[str]:
    flush()
    return [t.teacher for t in store.traces("intent")]


# -- OpenAI Responses API --------------------------------------------------------------------------


def test_responses_parse_stream_and_streamed_create_on_both_paths(client, server, store):
    parsed = client.responses.parse(model="m", instructions=INSTRUCTIONS, input="top up #p1",
                                    text_format=Intent)
    assert isinstance(parsed, ParsedResponse) and parsed.output_parsed == Intent(label="top_up")
    events = list(client.responses.create(model="m", instructions=INSTRUCTIONS,
                                          input="fx fee #p2", stream=True))
    assert events[-1].type == "response.completed"
    with client.responses.stream(model="m", instructions=INSTRUCTIONS, input="lost card #p3",
                                 tools=[TOOL], tool_choice=FORCED) as stream:
        final = stream.get_final_response()
    assert final.output[0].parsed_arguments == {"label": "card_lost"}
    assert teachers(store) == ["top_up", "exchange_rate", "card_lost"]
    assert server.calls["responses"] == 3

    fitted(store, client.tracer_wrap_tasks, "intent")
    text = local_text(client.tracer_wrap_tasks)
    parsed = client.responses.parse(model="m", instructions=INSTRUCTIONS, input=text,
                                    text_format=Intent)
    assert isinstance(parsed, ParsedResponse) and is_local(parsed)
    assert parsed.output_parsed == Intent(label=teacher(text))
    stream = client.responses.create(model="m", instructions=INSTRUCTIONS, input=text,
                                     stream=True)
    assert isinstance(stream, openai.Stream) and is_local(stream)
    events = list(stream)
    assert all(isinstance(e, tuple(ResponseStreamEvent.__args__[0].__args__)) for e in events)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        teacher(text)
    with client.responses.stream(model="m", instructions=INSTRUCTIONS, input=text,
                                 text_format=Intent) as stream:
        deltas = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in deltas and final.output_parsed == \
        Intent(label=teacher(text))
    with client.responses.stream(model="m", instructions=INSTRUCTIONS, input=text,
                                 tools=[TOOL], tool_choice=FORCED) as stream:
        call = stream.get_final_response().output[0]
    assert call.type == "function_call" and call.parsed_arguments == {"label": teacher(text)}
    assert server.calls["responses"] == 3


def test_responses_parse_takes_the_task_option(server, store, embedder):
    with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        client = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)
        parsed = client.responses.parse(model="m", input="refund #t1", text_format=Intent,
                                        tracer_wrap_task="named")
    assert parsed.output_parsed == Intent(label="refund")
    assert "tracer_wrap_task" not in server.requests[-1][1]
    flush()
    assert [t.teacher for t in store.traces("named")] == ["refund"]


def test_async_responses_paths(server, store, embedder):
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as raw:
            client = wrap_openai(raw, task="intent", store=store, embedder=embedder,
                                 **TASK_OPTIONS)
            parsed = await client.responses.parse(model="m", input="top up #a1",
                                                  text_format=Intent)
            assert parsed.output_parsed == Intent(label="top_up")
            stream = await client.responses.create(model="m", input="fx fee #a2", stream=True)
            assert [e.type async for e in stream][-1] == "response.completed"
            async with client.responses.stream(model="m", input="refund #a3") as stream:
                assert (await stream.get_final_response()).output_text == "refund"
            assert teachers(store) == ["top_up", "exchange_rate", "refund"]
            fitted(store, client.tracer_wrap_tasks, "intent")
            calls = server.calls["responses"]
            text = local_text(client.tracer_wrap_tasks, seed=11)
            parsed = await client.responses.parse(model="m", input=text, text_format=Intent)
            assert is_local(parsed) and parsed.output_parsed == Intent(label=teacher(text))
            stream = await client.responses.create(model="m", input=text, stream=True)
            assert isinstance(stream, openai.AsyncStream) and is_local(stream)
            assert [e async for e in stream][-1].response.output_text == teacher(text)
            async with client.responses.stream(model="m", input=text,
                                               text_format=Intent) as stream:
                final = await stream.get_final_response()
            assert final.output_parsed == Intent(label=teacher(text))
            assert server.calls["responses"] == calls

    asyncio.run(main())


# -- raw and streamed HTTP responses ---------------------------------------------------------------


def test_with_streaming_response_is_traced_and_always_asks_the_llm(client, server, store):
    fitted(store, client.tracer_wrap_tasks, "intent")
    text = local_text(client.tracer_wrap_tasks)
    flush()
    traced = store.count("intent")
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=[SYSTEM, {"role": "user", "content": text}]) as response:
        assert isinstance(response, openai._response.APIResponse)
        assert response.headers.get("x-request-id")
        completion = response.parse()
    assert isinstance(completion, ChatCompletion) and not is_local(completion)
    with client.responses.with_streaming_response.create(model="m", input="fx fee #r1") as resp:
        assert json.loads(resp.read())["output"][0]["content"][0]["text"] == "exchange_rate"
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=[SYSTEM, {"role": "user", "content": "top up #r2"}],
            stream=True) as response:
        pieces = [c.choices[0].delta.content or "" for c in response.parse() if c.choices]
    assert "".join(pieces) == "top_up"
    with client.chat.completions.with_streaming_response.parse(
            model="m", messages=[SYSTEM, {"role": "user", "content": "refund #r3"}],
            response_format=Intent) as response:
        assert response.parse().choices[0].message.parsed == Intent(label="refund")
    assert server.calls["chat.completions"] == 3 and server.calls["responses"] == 1
    assert teachers(store)[traced:] == [teacher(text), "exchange_rate", "top_up", "refund"]
    # A body the caller only iterates is not traced (nothing is parsed behind its back).
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=[SYSTEM, {"role": "user", "content": "refund #r4"}]) as resp:
        assert b"refund" in b"".join(resp.iter_bytes())
    flush()
    assert store.count("intent") == traced + 4


def test_async_with_streaming_response(server, store, embedder):
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as raw:
            client = wrap_openai(raw, task="intent", store=store, embedder=embedder,
                                 **TASK_OPTIONS)
            async with client.responses.with_streaming_response.create(
                    model="m", input="top up #s1") as response:
                assert (await response.parse()).output_text == "top_up"
            async with client.chat.completions.with_streaming_response.create(
                    model="m", messages=[SYSTEM, {"role": "user", "content": "refund #s2"}]
            ) as response:
                assert (await response.json())["choices"][0]["message"]["content"] == "refund"

    asyncio.run(main())
    assert teachers(store) == ["top_up", "refund"]


def test_raw_responses_of_every_traced_method(client, claude, server, store):
    raw = client.responses.with_raw_response.parse(model="m", input="fx fee #w1",
                                                   text_format=Intent)
    assert raw.parse().output_parsed == Intent(label="exchange_rate")
    raw = claude.messages.with_raw_response.create(
        model="c", max_tokens=64, messages=[{"role": "user", "content": "refund #w2"}])
    assert isinstance(raw.parse(), Message) and raw.http_response.status_code == 200
    # Two clients, two task objects: each writes its traces in order, not in order of the other.
    assert sorted(teachers(store)) == ["exchange_rate", "refund"]


def test_async_anthropic_raw_response_is_traced_without_warnings(server, store, embedder):
    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                            max_retries=0) as raw:
            client = wrap_anthropic(raw, task="intent", store=store, embedder=embedder,
                                    **TASK_OPTIONS)
            response = await client.messages.with_raw_response.create(
                model="c", max_tokens=64, messages=[{"role": "user", "content": "top up #w3"}])
            assert (await response.parse()).content[0].text == "top_up"
            async with client.messages.with_streaming_response.create(
                    model="c", max_tokens=64,
                    messages=[{"role": "user", "content": "fx fee #w4"}]) as streamed:
                assert (await streamed.parse()).content[0].text == "exchange_rate"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert teachers(store) == ["top_up", "exchange_rate"]


def test_anthropic_raw_responses_read_only_for_their_headers_are_traced(claude, server, store,
                                                                        embedder):
    # anthropic marks with_raw_response "raw" (openai: "true"); a caller reading only the
    # headers (a request id, rate limits) never calls parse(): the answer is traced all the same.
    raw = claude.messages.with_raw_response.create(
        model="c", max_tokens=64, messages=[{"role": "user", "content": "refund #h1"}])
    assert raw.headers["content-type"].startswith("application/json")

    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                            max_retries=0) as sdk:
            client = wrap_anthropic(sdk, task="intent", store=store, embedder=embedder,
                                    **TASK_OPTIONS)
            response = await client.messages.with_raw_response.create(
                model="c", max_tokens=64, messages=[{"role": "user", "content": "top up #h2"}])
            assert response.http_response.status_code == 200

    asyncio.run(main())
    assert sorted(teachers(store)) == ["refund", "top_up"]
    assert store.counters("intent")["llm"] == 2


# -- Anthropic parse and structured streams --------------------------------------------------------


def test_anthropic_parse_and_structured_stream_on_both_paths(claude, server, store):
    def request(text: str) -> dict[str, Any]:
        return {"model": "claude-test", "max_tokens": 64, "system": INSTRUCTIONS,
                "messages": [{"role": "user", "content": text}], "output_format": Intent}

    parsed = claude.messages.parse(**request("lost card #c1"))
    assert isinstance(parsed, ParsedMessage) and parsed.parsed_output == Intent(label="card_lost")
    with claude.messages.stream(**request("refund #c2")) as stream:
        assert stream.get_final_message().parsed_output == Intent(label="refund")
    assert teachers(store) == ["card_lost", "refund"]
    fitted(store, claude.tracer_wrap_tasks, "intent")
    calls = server.calls["messages"]
    text = local_text(claude.tracer_wrap_tasks)
    parsed = claude.messages.parse(**request(text))
    assert isinstance(parsed, ParsedMessage) and is_local_message(parsed)
    assert parsed.parsed_output == Intent(label=teacher(text))
    with claude.messages.stream(**request(text)) as stream:
        assert stream.get_final_message().parsed_output == Intent(label=teacher(text))
    assert server.calls["messages"] == calls


def test_async_anthropic_parse(server, store, embedder):
    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                            max_retries=0) as raw:
            claude = wrap_anthropic(raw, task="intent", store=store, embedder=embedder,
                                    **TASK_OPTIONS)
            parsed = await claude.messages.parse(
                model="c", max_tokens=64, output_format=Intent,
                messages=[{"role": "user", "content": "top up #c3"}])
            assert parsed.parsed_output == Intent(label="top_up")
            fitted(store, claude.tracer_wrap_tasks, "intent")
            calls = server.calls["messages"]
            text = local_text(claude.tracer_wrap_tasks)
            parsed = await claude.messages.parse(
                model="c", max_tokens=64, output_format=Intent,
                messages=[{"role": "user", "content": text}])
            assert is_local_message(parsed) and parsed.parsed_output == Intent(label=teacher(text))
            assert server.calls["messages"] == calls

    asyncio.run(main())


# -- zero-code -------------------------------------------------------------------------------------


def test_autolog_traces_the_parse_helpers_of_both_sdks(server, store, embedder):
    tasks = autolog(store=store, embedder=embedder, **TASK_OPTIONS)
    try:
        with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as oai, \
                anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                                    max_retries=0) as claude:
            for i in range(3):
                oai.responses.parse(model="m", instructions=INSTRUCTIONS, input=f"refund #{i}",
                                    text_format=Intent)
                claude.messages.parse(model="c", max_tokens=64, output_format=Intent,
                                      messages=[{"role": "user", "content": f"top up #{i}"}])
            for i in range(2):  # stream() sends create(stream=True, text=...): its own template
                with oai.responses.stream(model="m", instructions=INSTRUCTIONS,
                                          input=f"fx fee #s{i}", text_format=Intent) as stream:
                    final = stream.get_final_response()
                    assert final.output_parsed == Intent(label="exchange_rate")
    finally:
        autolog.disable()
    # Each template is traced from its second call on.
    flush()
    found = {name: [t.teacher for t in store.traces(name)] for name in tasks.tasks()}
    assert sorted(found.values()) == [["exchange_rate"], ["refund", "refund"],
                                      ["top_up", "top_up"]]


def test_genuine_types_of_local_answers(client, claude, server, store):
    """Every local answer is an instance of the class the SDK returns for the same call."""
    fitted(store, client.tracer_wrap_tasks, "intent")
    claude.tracer_wrap_tasks.task("intent").serving.refresh()  # serve the new version now
    text = local_text(client.tracer_wrap_tasks)
    calls = server.total_calls
    assert type(client.responses.create(model="m", input=text)) is Response
    assert type(client.chat.completions.create(
        model="m", messages=[SYSTEM, {"role": "user", "content": text}])) is ChatCompletion
    assert type(claude.messages.create(model="c", max_tokens=64,
                                       messages=[{"role": "user", "content": text}])) is Message
    assert server.total_calls == calls
