"""Anthropic objects: read the label out of a real ``Message``, and build genuine ones locally.

Built objects are instances of the SDK's classes (``Message``, ``ParsedMessage`` made by the
SDK's own parsing, ``anthropic.Stream`` / ``anthropic.AsyncStream`` of raw stream events, the
SDK's ``MessageStreamManager``, with ``output_format`` parsing as the SDK does).

Marker: a ``Message`` has no system fingerprint, so a local answer is marked in its ``id``, which
starts with :data:`LOCAL_ID_PREFIX` (``"msg_tracerwrap_"``; real ids start with ``"msg_"`` followed
by the provider's own id). Usage is zero. A local stream's ``response`` is a synthetic HTTP
response with the header ``x-tracer-wrap: local``.

Imports ``anthropic`` at import time: import this module only when the user's client is anthropic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import anthropic
from anthropic.lib._parse._response import parse_response
from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager
from anthropic.types import (
    Message,
    MessageDeltaUsage,
    ParsedMessage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.input_json_delta import InputJSONDelta
from anthropic.types.raw_message_delta_event import Delta

from ..labels import label_from_json, label_from_text
from ._prompt import OutputShape, anthropic_output_shape

__all__ = [
    "LOCAL_ID_PREFIX",
    "AsyncLocalMessageStream",
    "LocalMessageStream",
    "build_async_message_stream",
    "build_async_message_stream_manager",
    "build_message",
    "build_message_stream",
    "build_message_stream_manager",
    "build_parsed_message",
    "describe_message",
    "is_local_message",
    "label_from_message",
    "message_answer_text",
]

#: Prefix of the ``id`` of every ``Message`` answered locally.
LOCAL_ID_PREFIX = "msg_tracerwrap_"
LOCAL_HEADER = "x-tracer-wrap"

# The SDK's HTTP library (httpx, or its fork httpx2 in newer releases), for a synthetic response.
_http: Any = (getattr(anthropic._streaming, "httpx2", None)
             or anthropic._streaming.httpx)  # type: ignore[attr-defined]


def label_from_message(message: Message) -> str | None:
    """The raw label of a ``Message``: the first tool_use block's label input, else the joined
    text blocks (the label field if the text is a JSON object). None for an empty answer or an
    ambiguous JSON object."""
    texts: list[str] = []
    for block in message.content:
        if block.type == "tool_use":
            return label_from_json(block.input)
        if block.type == "text":
            texts.append(block.text)
    return label_from_text("".join(texts))


def describe_message(message: Any) -> dict[str, Any]:
    """The ``gen_ai.response.*`` attributes of a ``Message`` (empty for anything else)."""
    if not isinstance(message, Message):
        return {}
    return {"gen_ai.response.id": message.id, "gen_ai.response.model": message.model,
            "gen_ai.response.finish_reasons": [str(message.stop_reason)]
            if message.stop_reason else None}


def message_answer_text(label: str, request: Mapping[str, Any]) -> str:
    """The text a local answer of ``label`` generates: the text block, or the forced tool's
    input as JSON. Raises ``ValueError`` if the request's output cannot be a single label."""
    block = _content(_shape(request), label, "toolu_")
    if isinstance(block, ToolUseBlock):
        return json.dumps(block.input, ensure_ascii=False)
    return block.text


def is_local_message(obj: Any) -> bool:
    """Whether ``obj`` (a ``Message`` or a local stream) was answered by tracer_wrap."""
    if isinstance(obj, (LocalMessageStream, AsyncLocalMessageStream)):
        return True
    return isinstance(obj, Message) and obj.id.startswith(LOCAL_ID_PREFIX)


def _shape(request: Mapping[str, Any]) -> OutputShape:
    shape = anthropic_output_shape(request)
    if shape is None:
        raise ValueError("the request's output cannot be a single label (free tool choice, or an "
                         "output format without one string field); it must go to the LLM")
    return shape


def _content(shape: OutputShape, label: str, tool_id: str) -> TextBlock | ToolUseBlock:
    if shape.kind == "tool":
        return ToolUseBlock(type="tool_use", id=tool_id, name=str(shape.tool_name),
                            input={str(shape.field): label})
    text = json.dumps({shape.field: label}, ensure_ascii=False) if shape.kind == "json" else label
    return TextBlock(type="text", text=text)


def _new_message(label: str, request: Mapping[str, Any]) -> Message:
    shape = _shape(request)
    hex_ = uuid.uuid4().hex
    block = _content(shape, label, f"toolu_tracerwrap_{hex_[24:]}")
    return Message(
        id=f"{LOCAL_ID_PREFIX}{hex_[:24]}", type="message", role="assistant",
        model=str(request.get("model", "")), content=[block],
        stop_reason="tool_use" if block.type == "tool_use" else "end_turn", stop_sequence=None,
        usage=Usage(input_tokens=0, output_tokens=0),
    )


def check_messages(resource: Any, request: Mapping[str, Any]) -> None:
    """The SDK's own check of a non-streaming ``messages.create`` / ``parse`` request before it
    sends it: with the default timeout, raises ValueError when ``max_tokens`` asks for an answer
    that may take over 10 minutes (the SDK demands streaming). Reads the SDK's private client
    helpers; an SDK without them checks nothing."""
    if request.get("stream") or "timeout" in request:
        return
    client = getattr(resource, "_client", None)
    calculate = getattr(client, "_calculate_nonstreaming_timeout", None)
    try:
        from anthropic._constants import DEFAULT_TIMEOUT, MODEL_NONSTREAMING_TOKENS
    except ImportError:
        return
    if calculate is None or getattr(client, "timeout", None) != DEFAULT_TIMEOUT:
        return
    calculate(request.get("max_tokens"), MODEL_NONSTREAMING_TOKENS.get(str(request.get("model"))))


def build_message(label: str, request: Mapping[str, Any]) -> Message:
    """The ``Message`` answering ``request`` (the ``messages.create`` kwargs) with ``label``: a
    text block (``{field: label}`` JSON under ``output_config.format``), or a tool_use block of the
    forced tool. Usage is zero and the id starts with :data:`LOCAL_ID_PREFIX`.

    Raises ``ValueError`` if the request's output cannot be a single label.
    """
    return _new_message(label, request)


def _output_format(request: Mapping[str, Any]) -> Any:
    """The type ``parse`` / ``stream`` parse the answer's text into (``NOT_GIVEN``: none)."""
    fmt = request.get("output_format")
    return fmt if isinstance(fmt, type) else anthropic.NOT_GIVEN


def build_parsed_message(label: str, request: Mapping[str, Any]) -> ParsedMessage[Any]:
    """The ``ParsedMessage`` that ``messages.parse(**request)`` returns when the LLM answers
    ``label``: the SDK's own parsing of :func:`build_message`, so ``parsed_output`` is an
    instance of ``output_format``. Raises ``ValueError`` like :func:`build_message`, pydantic's
    ``ValidationError`` when ``label`` is not a valid value of the label field."""
    fmt = request.get("output_format")
    if fmt is not None and not isinstance(fmt, type):  # as messages.parse refuses it
        raise TypeError("`output_format` must be a type")
    return parse_response(output_format=_output_format(request),
                          response=_new_message(label, request))


def _events(label: str, request: Mapping[str, Any]) -> list[RawMessageStreamEvent]:
    message = _new_message(label, request)
    block = message.content[0]
    if isinstance(block, ToolUseBlock):
        start_block: TextBlock | ToolUseBlock = block.model_copy(update={"input": {}})
        delta: TextDelta | InputJSONDelta = InputJSONDelta(
            type="input_json_delta", partial_json=json.dumps(block.input, ensure_ascii=False))
    else:
        start_block = TextBlock(type="text", text="")
        delta = TextDelta(type="text_delta", text=block.text)  # type: ignore[union-attr]
    return [
        RawMessageStartEvent(type="message_start", message=message.model_copy(
            update={"content": [], "stop_reason": None})),
        RawContentBlockStartEvent(type="content_block_start", index=0, content_block=start_block),
        RawContentBlockDeltaEvent(type="content_block_delta", index=0, delta=delta),
        RawContentBlockStopEvent(type="content_block_stop", index=0),
        RawMessageDeltaEvent(type="message_delta",
                             delta=Delta(stop_reason=message.stop_reason, stop_sequence=None),
                             usage=MessageDeltaUsage(output_tokens=0)),
        RawMessageStopEvent(type="message_stop"),
    ]


def _local_http_response() -> Any:
    return _http.Response(
        200,
        headers={"content-type": "text/event-stream", LOCAL_HEADER: "local"},
        request=_http.Request("POST", "https://tracer-wrap.local/v1/messages"),
    )


class LocalMessageStream(anthropic.Stream[RawMessageStreamEvent]):
    """A real ``anthropic.Stream`` of prepared events: iterate, ``next()``, ``with``, ``close()``.

    After ``close()`` iteration stops, as it does on a closed HTTP stream.
    """

    def __init__(self, events: Sequence[RawMessageStreamEvent]) -> None:
        # Stream.__init__ wants a live HTTP response and client; a local answer has neither, so
        # set what the inherited methods read. `_iterator` is a cached_property upstream, and an
        # instance attribute takes its place.
        self.response = _local_http_response()
        self._cast_to = RawMessageStreamEvent  # type: ignore[assignment]
        self._options = None
        self._closed = False
        self._iterator = self._replay(list(events))  # type: ignore[misc]

    def _replay(self, events: list[RawMessageStreamEvent]) -> Iterator[RawMessageStreamEvent]:
        for event in events:
            if self._closed:
                return
            yield event

    def close(self) -> None:
        """Stop the stream; later iteration yields nothing."""
        self._closed = True
        super().close()


class AsyncLocalMessageStream(anthropic.AsyncStream[RawMessageStreamEvent]):
    """A real ``anthropic.AsyncStream`` of prepared events: ``async for``, ``async with``,
    ``await close()``."""

    def __init__(self, events: Sequence[RawMessageStreamEvent]) -> None:
        self.response = _local_http_response()
        self._cast_to = RawMessageStreamEvent  # type: ignore[assignment]
        self._options = None
        self._closed = False
        self._iterator = self._replay(list(events))  # type: ignore[misc]

    async def _replay(self, events: list[RawMessageStreamEvent]
                      ) -> AsyncIterator[RawMessageStreamEvent]:
        for event in events:
            if self._closed:
                return
            yield event

    async def close(self) -> None:
        """Stop the stream; later iteration yields nothing."""
        self._closed = True
        await super().close()

    async def aclose(self) -> None:
        """Alias of :meth:`close`, as async generators and ``contextlib.aclosing`` expect."""
        await self.close()


def build_message_stream(label: str, request: Mapping[str, Any]) -> LocalMessageStream:
    """What ``messages.create(stream=True, **request)`` returns when the LLM answers ``label``:
    message_start, content_block_start/delta/stop, message_delta, message_stop."""
    return LocalMessageStream(_events(label, request))


def build_async_message_stream(label: str, request: Mapping[str, Any]) -> AsyncLocalMessageStream:
    """The ``AsyncAnthropic`` twin of :func:`build_message_stream`."""
    return AsyncLocalMessageStream(_events(label, request))


def build_message_stream_manager(label: str, request: Mapping[str, Any]
                                 ) -> MessageStreamManager[Any]:
    """What ``messages.stream(**request)`` returns when the LLM answers ``label``: the SDK's own
    manager over a local stream, so ``text_stream`` and ``get_final_message()`` work."""
    stream = build_message_stream(label, request)
    return MessageStreamManager(lambda: stream, output_format=_output_format(request))


def build_async_message_stream_manager(label: str,
                                       request: Mapping[str, Any]
                                       ) -> AsyncMessageStreamManager[Any]:
    """The ``AsyncAnthropic`` twin of :func:`build_message_stream_manager`."""
    stream = build_async_message_stream(label, request)

    async def api_request() -> anthropic.AsyncStream[RawMessageStreamEvent]:
        return stream

    return AsyncMessageStreamManager(api_request(), output_format=_output_format(request))
