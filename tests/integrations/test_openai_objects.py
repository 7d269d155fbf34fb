"""OpenAI objects: labels read from real responses, local answers that are genuine SDK objects."""

from __future__ import annotations

import asyncio
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion
from openai.types.responses import Response

from tracer_wrap.integrations import (
    LOCAL_FINGERPRINT,
    build_async_chat_completion_stream,
    build_async_chat_stream_manager,
    build_chat_completion,
    build_chat_completion_stream,
    build_chat_stream_manager,
    build_parsed_chat_completion,
    build_response,
    is_local,
    label_from_chat_completion,
    label_from_response,
    openai_chat_view,
    usage_of,
)

# tests/ holds the shared local LLM server; it is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_server import LLMServer, serve_llm  # noqa: E402


class Intent(enum.Enum):
    refund = "refund"
    other = "other"


class IntentAnswer(pydantic.BaseModel):
    intent: Intent


def teacher(text: str) -> str:
    return "refund" if "money" in text else "other"


TOOL = {"type": "function", "function": {"name": "route", "strict": True, "parameters": {
    "type": "object", "additionalProperties": False, "required": ["intent"],
    "properties": {"intent": {"type": "string", "enum": ["refund", "other"]}}}}}
FORCE = {"type": "function", "function": {"name": "route"}}


def request(text: str = "I want my money back", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "system", "content": "Route the ticket."},
                                              {"role": "user", "content": text}], **extra}


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


@pytest.fixture
def client(server: LLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="test", max_retries=0) as oai:
        yield oai


@pytest.mark.parametrize("extra", [{}, {"response_format": {"type": "json_object"}},
                                   {"tools": [TOOL], "tool_choice": FORCE}],
                         ids=["text", "json_object", "forced_tool"])
def test_local_completion_matches_what_the_llm_sends(client: openai.OpenAI, server: LLMServer,
                                                     extra: dict[str, Any]) -> None:
    kwargs = request(**extra)
    real = client.chat.completions.create(**kwargs)
    local = build_chat_completion(label_from_chat_completion(real), kwargs)
    assert server.calls["chat.completions"] == 1
    assert type(local) is ChatCompletion and is_local(local) and not is_local(real)
    assert label_from_chat_completion(real) == label_from_chat_completion(local) == "refund"
    real_msg, local_msg = real.choices[0].message, local.choices[0].message
    assert local_msg.content == real_msg.content
    if real_msg.tool_calls:
        assert local_msg.tool_calls[0].function.name == real_msg.tool_calls[0].function.name
        assert json.loads(local_msg.tool_calls[0].function.arguments) == json.loads(
            real_msg.tool_calls[0].function.arguments)
    assert local.usage.total_tokens == 0 and local.system_fingerprint == LOCAL_FINGERPRINT
    assert local.model == "gpt-test"
    # Round trip through JSON, as a user who caches or logs responses does.
    assert ChatCompletion.model_validate_json(local.model_dump_json()) == local


def test_local_parsed_completion_equals_sdk_parse(client: openai.OpenAI) -> None:
    kwargs = request(response_format=IntentAnswer)
    real = client.chat.completions.parse(**kwargs)
    local = build_parsed_chat_completion("refund", kwargs)
    assert isinstance(local, ParsedChatCompletion) and isinstance(local, ChatCompletion)
    assert local.choices[0].message.parsed == real.choices[0].message.parsed == IntentAnswer(
        intent=Intent.refund)
    assert isinstance(local.choices[0].message.parsed, IntentAnswer)
    assert json.loads(local.choices[0].message.content) == json.loads(
        real.choices[0].message.content)
    assert label_from_chat_completion(real) == "refund"
    with pytest.raises(pydantic.ValidationError):
        build_parsed_chat_completion("not-an-intent", kwargs)


def test_local_parsed_tool_call_carries_parsed_arguments(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(IntentAnswer, name="route")
    kwargs = request(tools=[tool], tool_choice=FORCE)
    real = client.chat.completions.parse(**kwargs)
    local = build_parsed_chat_completion("other", request("hello", tools=[tool], tool_choice=FORCE))
    real_args = real.choices[0].message.tool_calls[0].function.parsed_arguments
    local_args = local.choices[0].message.tool_calls[0].function.parsed_arguments
    assert real_args == IntentAnswer(intent=Intent.refund)
    assert local_args == IntentAnswer(intent=Intent.other)
    strict = build_parsed_chat_completion("other", request(tools=[TOOL], tool_choice=FORCE))
    assert strict.choices[0].message.tool_calls[0].function.parsed_arguments == {"intent": "other"}


def test_local_stream_is_a_real_stream_and_reassembles_like_the_llms(client: openai.OpenAI) -> None:
    kwargs = request(stream=True, stream_options={"include_usage": True})
    real_text = "".join(c.choices[0].delta.content or ""
                        for c in client.chat.completions.create(**kwargs) if c.choices)
    stream = build_chat_completion_stream(real_text, kwargs)
    assert isinstance(stream, openai.Stream) and is_local(stream)
    assert stream.response.headers["x-tracer-wrap"] == "local"
    with stream as entered:
        assert entered is stream
        chunks = list(stream)
    assert all(type(c) is ChatCompletionChunk and c.system_fingerprint == LOCAL_FINGERPRINT
               for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "refund"
    assert (chunks[-1].choices == []
            and usage_of(chunks[-1]) == {"input_tokens": 0, "output_tokens": 0})


def test_local_stream_next_and_close_stop_iteration() -> None:
    stream = build_chat_completion_stream("refund", request(stream=True))
    assert next(stream).choices[0].delta.role == "assistant"
    stream.close()
    assert list(stream) == []
    tools = build_chat_completion_stream("other", request(stream=True, tools=[TOOL],
                                                          tool_choice="required"))
    calls = [c.choices[0].delta.tool_calls[0] for c in tools
             if c.choices and c.choices[0].delta.tool_calls]
    assert (calls[0].function.name == "route"
            and json.loads(calls[0].function.arguments) == {"intent": "other"})


def test_async_local_stream() -> None:
    async def run() -> tuple[str, list[Any]]:
        stream = build_async_chat_completion_stream("refund", request(stream=True))
        assert isinstance(stream, openai.AsyncStream)
        async with stream:
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
        closed = build_async_chat_completion_stream("refund", request(stream=True))
        await closed.__anext__()
        await closed.aclose()
        return text, [c async for c in closed]

    assert asyncio.run(run()) == ("refund", [])


def test_stream_managers_give_the_sdks_events_and_final_completion() -> None:
    kwargs = request(response_format=IntentAnswer)
    with build_chat_stream_manager("refund", kwargs) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.done" in events
    assert final.choices[0].message.parsed == IntentAnswer(intent=Intent.refund)

    async def run() -> Any:
        async with build_async_chat_stream_manager("other", kwargs) as astream:
            async for _ in astream:
                pass
            return (await astream.get_final_completion()).choices[0].message.parsed

    assert asyncio.run(run()) == IntentAnswer(intent=Intent.other)


def test_responses_labels_and_local_response(client: openai.OpenAI, server: LLMServer) -> None:
    schema = IntentAnswer.model_json_schema()
    for kwargs in ({"model": "m", "input": "money please"},
                   {"model": "m", "input": "money please",
                    "text": {"format": {"type": "json_schema", "name": "a", "schema": schema}}},
                   {"model": "m", "input": "money please",
                    "tool_choice": {"type": "function", "name": "route"},
                    "tools": [{"type": "function", "name": "route",
                               "parameters": TOOL["function"]["parameters"]}]}):
        real = client.responses.create(**kwargs)
        local = build_response(label_from_response(real), kwargs)
        assert isinstance(local, Response) and is_local(local) and not is_local(real)
        assert label_from_response(local) == label_from_response(real) == "refund"
        assert local.output[0].type == real.output[0].type and local.output_text == real.output_text
        assert usage_of(local) == {"input_tokens": 0, "output_tokens": 0}
        assert usage_of(real)["input_tokens"] > 0
    assert server.calls["responses"] == 3


def test_labels_of_odd_completions() -> None:
    base = build_chat_completion("x", request())
    refusal = base.model_copy(deep=True)
    refusal.choices[0].message.refusal, refusal.choices[0].message.content = "I can't help", None
    assert label_from_chat_completion(refusal) is None
    fake_json = base.model_copy(deep=True)
    fake_json.choices[0].message.content = " {not json} "
    assert label_from_chat_completion(fake_json) == "{not json}"
    empty = base.model_copy(update={"choices": []})
    assert label_from_chat_completion(empty) is None


def test_builders_refuse_requests_that_are_not_one_label() -> None:
    kwargs = request(tools=[TOOL])  # the model may answer or call the tool
    assert openai_chat_view(kwargs) is None
    with pytest.raises(ValueError):
        build_chat_completion("refund", kwargs)


def test_usage_of_real_completion(client: openai.OpenAI) -> None:
    real = client.chat.completions.create(**request())
    assert usage_of(real) == {"input_tokens": real.usage.prompt_tokens,
                              "output_tokens": real.usage.completion_tokens}
    assert usage_of(real)["input_tokens"] > 0
