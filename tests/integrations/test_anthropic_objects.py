"""Anthropic objects: labels read from real messages, local answers that are genuine SDK objects."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, RawMessageStartEvent, TextBlock, ToolUseBlock

from tracer_wrap.integrations import (
    LOCAL_ID_PREFIX,
    anthropic_messages_view,
    build_async_message_stream,
    build_async_message_stream_manager,
    build_message,
    build_message_stream,
    build_message_stream_manager,
    is_local_message,
    label_from_message,
    usage_of,
)

# tests/ holds the shared local LLM server; it is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_server import LLMServer, serve_llm  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["category"],
          "properties": {"category": {"type": "string", "enum": ["bug", "question"]}}}
TOOL = {"name": "file_ticket", "input_schema": SCHEMA}


def teacher(text: str) -> str:
    return "bug" if "crash" in text else "question"


def request(text: str = "the app crashes on start", **extra: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 16, "system": "Triage the ticket.",
            "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


@pytest.fixture
def client(server: LLMServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="test",
                             max_retries=0) as claude:
        yield claude


@pytest.mark.parametrize("extra", [
    {},
    {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "file_ticket"}},
    {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
], ids=["text", "forced_tool", "json_schema"])
def test_local_message_matches_what_the_llm_sends(client: anthropic.Anthropic, server: LLMServer,
                                                  extra: dict[str, Any]) -> None:
    kwargs = request(**extra)
    real = client.messages.create(**kwargs)
    label = label_from_message(real)
    local = build_message(label, kwargs)
    assert server.calls["messages"] == 1
    assert label == label_from_message(local) == "bug"
    assert type(local) is Message and local.id.startswith(LOCAL_ID_PREFIX)
    assert is_local_message(local) and not is_local_message(real)
    assert [type(b) for b in local.content] == [type(b) for b in real.content]
    assert local.stop_reason == real.stop_reason
    block, real_block = local.content[0], real.content[0]
    if isinstance(block, TextBlock):
        assert block.text == real_block.text
    else:
        assert (isinstance(block, ToolUseBlock)
                and (block.name, block.input) == (real_block.name, real_block.input))
    assert usage_of(local) == {"input_tokens": 0, "output_tokens": 0}
    assert usage_of(real)["input_tokens"] > 0 and usage_of(real)["output_tokens"] > 0
    assert Message.model_validate_json(local.model_dump_json()) == local


def test_local_event_stream_matches_real_event_sequence(client: anthropic.Anthropic) -> None:
    real_types = [e.type for e in client.messages.create(**request(), stream=True)
                  if e.type != "ping"]
    stream = build_message_stream("bug", request(stream=True))
    assert isinstance(stream, anthropic.Stream) and is_local_message(stream)
    with stream as entered:
        assert entered is stream
        events = list(stream)
    # The server splits the text into two deltas, the local stream sends one.
    assert [e.type for e in events] == [t for i, t in enumerate(real_types)
                                        if not (t == "content_block_delta"
                                                and real_types[i - 1] == t)]
    assert (isinstance(events[0], RawMessageStartEvent)
            and events[0].message.id.startswith(LOCAL_ID_PREFIX))
    assert usage_of(events[0]) == {"input_tokens": 0, "output_tokens": 0}
    closing = build_message_stream("bug", request(stream=True))
    next(closing)
    closing.close()
    assert list(closing) == []


def test_stream_manager_accumulates_local_events_like_real_ones(
        client: anthropic.Anthropic) -> None:
    tool_kwargs = request(tools=[TOOL], tool_choice={"type": "tool", "name": "file_ticket"})
    with client.messages.stream(**tool_kwargs) as real_stream:
        real = real_stream.get_final_message()
    with build_message_stream_manager("bug", tool_kwargs) as local_stream:
        local = local_stream.get_final_message()
    assert local.content[0].input == real.content[0].input == {"category": "bug"}
    with build_message_stream_manager("question", request()) as text_stream:
        assert "".join(text_stream.text_stream) == "question"


def test_async_local_streams() -> None:
    async def run() -> tuple[str, str, list[Any]]:
        stream = build_async_message_stream("bug", request(stream=True))
        assert isinstance(stream, anthropic.AsyncStream)
        async with stream:
            deltas = [e.delta.text async for e in stream if e.type == "content_block_delta"]
        async with build_async_message_stream_manager("question", request()) as managed:
            text = "".join([t async for t in managed.text_stream])
        closed = build_async_message_stream("bug", request(stream=True))
        await closed.__anext__()
        await closed.aclose()
        return "".join(deltas), text, [e async for e in closed]

    assert asyncio.run(run()) == ("bug", "question", [])


def test_view_and_builder_refuse_a_free_tool_choice() -> None:
    kwargs = request(tools=[TOOL])
    assert anthropic_messages_view(kwargs) is None
    with pytest.raises(ValueError):
        build_message("bug", kwargs)


def test_label_from_message_reads_json_text_and_leaves_fake_json() -> None:
    def message(text: str) -> Message:
        return build_message("x", request()).model_copy(
            update={"content": [TextBlock(type="text", text=text)]})

    assert label_from_message(message(json.dumps({"category": "bug",
                                                  "why": "it crashed"}))) == "bug"
    assert label_from_message(message("{oops}")) == "{oops}"
    assert label_from_message(message("  ")) is None


def test_faults_from_the_server_are_the_sdks_errors(client: anthropic.Anthropic,
                                                    server: LLMServer) -> None:
    server.fail("429")
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(**request())
    server.fail("timeout", delay=2.0)
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.2).messages.create(**request())
    assert server.calls["messages"] == 2
