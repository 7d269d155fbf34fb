"""The local LLM server speaks the wire protocol the real openai/anthropic SDKs expect."""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Iterator

import anthropic
import openai
import pydantic
import pytest
from llm_server import LLMServer, serve_llm


def teacher(text: str) -> str:
    return ("positive" if any(word in text.lower() for word in ("good", "great", "love"))
            else "negative")


class Sentiment(enum.Enum):
    positive = "positive"
    negative = "negative"


class Verdict(pydantic.BaseModel):
    sentiment: Sentiment


CLASSIFY_TOOL = {
    "type": "function",
    "function": {
        "name": "classify",
        "parameters": {"type": "object",
                       "properties": {"label": {"type": "string",
                                                "enum": ["positive", "negative"]}},
                       "required": ["label"]},
    },
}


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


@pytest.fixture
def oai(server: LLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(server: LLMServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="test",
                             max_retries=0) as client:
        yield client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Classify the sentiment."},
            {"role": "user", "content": text}]


# -- OpenAI chat completions ---------------------------------------------------------------------


def test_chat_create_labels_the_last_user_message_and_counts_the_call(oai: openai.OpenAI,
                                                                       server: LLMServer) -> None:
    good = oai.chat.completions.create(model="gpt-test", messages=user("a great film"))
    bad = oai.chat.completions.create(model="gpt-test", messages=[
        {"role": "user", "content": "I love it"}, {"role": "assistant", "content": "positive"},
        {"role": "user", "content": [{"type": "text", "text": "dull and slow"}]}])
    assert isinstance(good, openai.types.chat.ChatCompletion)
    assert good.choices[0].message.content == "positive"
    assert bad.choices[0].message.content == "negative"
    assert good.usage is not None and good.usage.prompt_tokens > good.usage.completion_tokens > 0
    assert server.calls["chat.completions"] == 2 and server.total_calls == 2
    assert server.requests[0][1]["model"] == "gpt-test"


def test_chat_stream_iterates_chunks_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="m", messages=user("good"), stream=True,
                                         stream_options={"include_usage": True})
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "positive"
    assert (chunks[-1].choices == [] and chunks[-1].usage is not None
            and chunks[-1].usage.total_tokens > 0)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_chat_stream_as_context_manager_and_helper(oai: openai.OpenAI) -> None:
    with oai.chat.completions.create(model="m", messages=user("bad"), stream=True) as stream:
        first = next(stream)
        assert first.choices[0].delta.role == "assistant"
    with oai.chat.completions.stream(model="m", messages=user("good"),
                                     response_format=Verdict) as helper:
        for _ in helper:
            pass
        final = helper.get_final_completion()
    assert final.choices[0].message.parsed == Verdict(sentiment=Sentiment.positive)


def test_async_chat_create_and_stream() -> None:
    async def run(server: LLMServer) -> tuple[str | None, str]:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="test",
                                      max_retries=0) as client:
            completion = await client.chat.completions.create(model="m", messages=user("good"))
            stream = await client.chat.completions.create(model="m", messages=user("bad"),
                                                          stream=True)
            async with stream:
                text = "".join([c.choices[0].delta.content or ""
                                async for c in stream if c.choices])
            return completion.choices[0].message.content, text

    with serve_llm(teacher) as server:
        assert asyncio.run(run(server)) == ("positive", "negative")
        assert server.calls["chat.completions"] == 2


def test_parse_with_pydantic_model_returns_parsed_enum(oai: openai.OpenAI,
                                                       server: LLMServer) -> None:
    completion = oai.chat.completions.parse(model="m", messages=user("bad"),
                                            response_format=Verdict)
    assert completion.choices[0].message.parsed == Verdict(sentiment=Sentiment.negative)
    body = server.requests[-1][1]
    assert body["response_format"]["type"] == "json_schema"


def test_forced_tool_call_has_json_arguments(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="m", messages=user("great"), tools=[CLASSIFY_TOOL],
        tool_choice={"type": "function", "function": {"name": "classify"}})
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "classify"
    assert json.loads(call.function.arguments) == {"label": "positive"}


def test_forced_tool_call_streams_as_tool_call_deltas(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="m", messages=user("meh"), tools=[CLASSIFY_TOOL],
                                         tool_choice="required", stream=True)
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in stream if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(arguments) == {"label": "negative"}


def test_free_text_without_forced_tool_is_plain_content(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="m", messages=user("good"),
                                             tools=[CLASSIFY_TOOL])
    assert completion.choices[0].message.content == "positive"
    assert completion.choices[0].message.tool_calls is None


# -- OpenAI Responses API ------------------------------------------------------------------------


def test_responses_create_text_json_and_tool(oai: openai.OpenAI, server: LLMServer) -> None:
    plain = oai.responses.create(model="m", input="good", instructions="Classify.")
    assert plain.output_text == "positive" and plain.usage.input_tokens > 0
    structured = oai.responses.create(
        model="m", input=[{"role": "user", "content": [{"type": "input_text", "text": "bad"}]}],
        text={"format": {"type": "json_schema", "name": "v", "strict": True,
                         "schema": Verdict.model_json_schema()}})
    assert json.loads(structured.output_text) == {"sentiment": "negative"}
    tool = oai.responses.create(
        model="m", input="love", tool_choice={"type": "function", "name": "classify"},
        tools=[{"type": "function", "name": "classify", "strict": True,
                "parameters": CLASSIFY_TOOL["function"]["parameters"]}])
    assert tool.output[0].type == "function_call"
    assert json.loads(tool.output[0].arguments) == {"label": "positive"}
    assert server.calls["responses"] == 3


def test_responses_stream_events_and_helpers(oai: openai.OpenAI, server: LLMServer) -> None:
    events = list(oai.responses.create(model="m", input="good", stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "positive" and events[-1].response.usage
    with oai.responses.stream(model="m", input="bad", text_format=Verdict) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == Verdict(sentiment=Sentiment.negative)
    tool = {"type": "function", "name": "classify", "strict": True,
            "parameters": {**CLASSIFY_TOOL["function"]["parameters"],
                           "additionalProperties": False}}
    with oai.responses.stream(model="m", input="love", tools=[tool],
                              tool_choice={"type": "function", "name": "classify"}) as stream:
        assert "response.function_call_arguments.delta" in [e.type for e in stream]
        call = stream.get_final_response().output[0]
    assert call.parsed_arguments == {"label": "positive"}
    parsed = oai.responses.parse(model="m", input="meh", text_format=Verdict)
    assert parsed.output_parsed == Verdict(sentiment=Sentiment.negative)
    assert server.calls["responses"] == 4


def test_requests_are_recorded_and_the_system_prompt_can_be_classified(
        oai: openai.OpenAI, claude: anthropic.Anthropic, server: LLMServer) -> None:
    server.classify = "system"
    chat = oai.chat.completions.create(model="m", messages=[
        {"role": "system", "content": "Label this: great"}, {"role": "user", "content": "bad"}])
    response = oai.responses.create(model="m", instructions="Label this: love it", input="dull")
    message = claude.messages.create(model="c", max_tokens=8, system="Label this: good",
                                     messages=[{"role": "user", "content": "awful"}])
    assert (chat.choices[0].message.content, response.output_text,
            message.content[0].text) == ("positive", "positive", "positive")
    assert server.requests[1] == ("responses", {"model": "m", "instructions": "Label this: love it",
                                                "input": "dull"})


# -- Anthropic messages ---------------------------------------------------------------------------


def test_anthropic_create_and_stream(claude: anthropic.Anthropic, server: LLMServer) -> None:
    message = claude.messages.create(model="claude-test", max_tokens=8, system="Classify.",
                                     messages=[{"role": "user", "content": "good"}])
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].text == "positive" and message.usage.input_tokens > 0
    events = list(claude.messages.create(model="claude-test", max_tokens=8, stream=True,
                                         messages=[{"role": "user", "content": "bad"}]))
    assert [e.type for e in events] == ["message_start", "content_block_start",
                                        "content_block_delta", "content_block_delta",
                                        "content_block_stop", "message_delta", "message_stop"]
    with claude.messages.stream(model="claude-test", max_tokens=8,
                                messages=[{"role": "user", "content": "great"}]) as stream:
        assert "".join(stream.text_stream) == "positive"
        final = stream.get_final_message()
    assert final.usage.output_tokens > 0
    assert server.calls["messages"] == 3


def test_anthropic_forced_tool(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-test", max_tokens=8, messages=[{"role": "user", "content": "meh"}],
        tools=[{"name": "classify", "input_schema": CLASSIFY_TOOL["function"]["parameters"]}],
        tool_choice={"type": "tool", "name": "classify"})
    assert message.stop_reason == "tool_use"
    assert message.content[0].input == {"label": "negative"}


def test_async_anthropic_stream() -> None:
    async def run(server: LLMServer) -> str:
        async with anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="test",
                                            max_retries=0) as client:
            async with client.messages.stream(model="c", max_tokens=8,
                                              messages=[{"role": "user",
                                                         "content": "good"}]) as stream:
                return "".join([text async for text in stream.text_stream])

    with serve_llm(teacher) as server:
        assert asyncio.run(run(server)) == "positive"


# -- faults ----------------------------------------------------------------------------------------


def test_faults_surface_as_the_sdks_own_errors(oai: openai.OpenAI, server: LLMServer) -> None:
    server.fail("429")
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="m", messages=user("good"))
    server.fail("500")
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=user("good"))
    server.fail("timeout", delay=2.0)
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.2).chat.completions.create(model="m", messages=user("good"))
    # The SDK does not wrap an unparseable 200 body; the JSON error reaches the caller as is.
    server.fail("garbage")
    with pytest.raises(json.JSONDecodeError):
        oai.chat.completions.create(model="m", messages=user("good"))
    assert oai.chat.completions.create(
        model="m", messages=user("good")).choices[0].message.content == "positive"
    assert server.calls["chat.completions"] == 5


def test_fault_lasts_n_calls_or_until_cleared(oai: openai.OpenAI, claude: anthropic.Anthropic,
                                              server: LLMServer) -> None:
    server.fail("500", times=2)
    for _ in range(2):
        with pytest.raises(anthropic.InternalServerError):
            claude.messages.create(model="c", max_tokens=8,
                                   messages=[{"role": "user", "content": "x"}])
    assert claude.messages.create(model="c", max_tokens=8,
                                  messages=[{"role": "user", "content": "x"}]).content[0].text == \
        "negative"
    server.fail("429", times=None)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            oai.responses.create(model="m", input="good")
    server.clear_faults()
    assert oai.responses.create(model="m", input="good").output_text == "positive"
    assert server.calls == {"messages": 3, "responses": 4}


def test_fail_rejects_unknown_fault(server: LLMServer) -> None:
    with pytest.raises(ValueError):
        server.fail("418")  # type: ignore[arg-type]
