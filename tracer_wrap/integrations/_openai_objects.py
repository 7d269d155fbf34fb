"""OpenAI objects: read the label out of a real response, and build genuine ones for local answers.

Everything built here is an instance of the SDK's own classes (``ChatCompletion``,
``ParsedChatCompletion``, ``Response``, ``ParsedResponse``, ``openai.Stream`` /
``openai.AsyncStream`` of ``ChatCompletionChunk`` or of Responses API events, the SDK's stream
managers) so code written for the plain SDK, including ``isinstance`` checks, runs unchanged;
parsed objects are made by the SDK's own parsing of the built answer. A local answer has zero
usage and ``system_fingerprint == LOCAL_FINGERPRINT`` (a ``Response``: ``metadata["x-tracer-wrap"]
== "local"``); a local stream's ``response`` is a synthetic HTTP response with the header
``x-tracer-wrap: local``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import openai
from openai._models import construct_type
from openai.lib._parsing._completions import parse_chat_completion, validate_input_tools
from openai.lib._parsing._responses import parse_response, type_to_text_format_param
from openai.lib.streaming.chat import AsyncChatCompletionStreamManager, ChatCompletionStreamManager
from openai.lib.streaming.responses import AsyncResponseStreamManager, ResponseStreamManager
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ParsedChatCompletion,
)
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from openai.types.completion_usage import CompletionUsage
from openai.types.responses import ParsedResponse, Response, ResponseStreamEvent

from ..labels import label_from_json, label_from_text
from ._prompt import (
    OutputShape,
    openai_chat_output_shape,
    openai_responses_output_shape,
)

__all__ = [
    "LOCAL_FINGERPRINT",
    "AsyncLocalStream",
    "LocalStream",
    "build_async_chat_completion_stream",
    "build_async_chat_stream_manager",
    "build_async_response_stream",
    "build_async_response_stream_manager",
    "build_chat_completion",
    "build_chat_completion_stream",
    "build_chat_stream_manager",
    "build_parsed_chat_completion",
    "build_parsed_response",
    "build_response",
    "build_response_stream",
    "build_response_stream_manager",
    "chat_answer_text",
    "describe_chat_completion",
    "describe_response",
    "is_local",
    "label_from_chat_completion",
    "label_from_response",
    "response_answer_text",
]

#: ``system_fingerprint`` of every object answered locally (and the value of the
#: ``x-tracer-wrap`` header of a local stream's synthetic response is ``local``).
LOCAL_FINGERPRINT = "tracer_wrap-local"
LOCAL_HEADER = "x-tracer-wrap"

# What a local stream yields: chat completion chunks or Responses API events.
_Item = TypeVar("_Item")

# The SDK's HTTP library (httpx, or its fork httpx2 in newer releases), for a synthetic response.
_http: Any = (getattr(openai._streaming, "httpx2", None)
             or openai._streaming.httpx)  # type: ignore[attr-defined]


# -- reading labels -------------------------------------------------------------------------------


def label_from_chat_completion(completion: ChatCompletion) -> str | None:
    """The raw label of the first choice: a function tool call's label argument, else the
    ``.parsed`` model's label field (``ParsedChatCompletion``), else the text (the label field if
    the text is a JSON object). None for a refusal, an empty answer or an ambiguous JSON object."""
    if not completion.choices:
        return None
    message = completion.choices[0].message
    if message.refusal:
        return None
    for call in message.tool_calls or ():
        if call.type == "function":
            try:
                return label_from_json(json.loads(call.function.arguments))
            except json.JSONDecodeError:
                return None
    parsed = getattr(message, "parsed", None)
    if parsed is not None and hasattr(parsed, "model_dump"):
        return label_from_json(parsed.model_dump(mode="json"))
    return label_from_text(message.content)


def label_from_response(response: Response) -> str | None:
    """The raw label of a Responses API ``Response``: the first function call's label argument,
    else the output text (its label field if it is a JSON object)."""
    for item in response.output:
        if item.type == "function_call":
            try:
                return label_from_json(json.loads(item.arguments))
            except json.JSONDecodeError:
                return None
    return label_from_text(response.output_text)


def describe_chat_completion(completion: Any) -> dict[str, Any]:
    """The ``gen_ai.response.*`` attributes of a ``ChatCompletion`` (empty for anything else)."""
    if not isinstance(completion, ChatCompletion):
        return {}
    return {"gen_ai.response.id": completion.id, "gen_ai.response.model": completion.model,
            "gen_ai.response.finish_reasons": [str(c.finish_reason) for c in completion.choices],
            "openai.response.system_fingerprint": completion.system_fingerprint,
            # The name before the GenAI conventions moved it, still read by older backends.
            "gen_ai.openai.response.system_fingerprint": completion.system_fingerprint}


def describe_response(response: Any) -> dict[str, Any]:
    """The ``gen_ai.response.*`` attributes of a Responses API ``Response``."""
    if not isinstance(response, Response):
        return {}
    return {"gen_ai.response.id": response.id, "gen_ai.response.model": response.model,
            "gen_ai.response.finish_reasons": [str(response.status)] if response.status else None}


def is_local(obj: Any) -> bool:
    """Whether ``obj`` (completion, chunk, response or local stream) was answered by tracer_wrap."""
    if isinstance(obj, (LocalStream, AsyncLocalStream)):
        return True
    if getattr(obj, "system_fingerprint", None) == LOCAL_FINGERPRINT:
        return True
    return isinstance(obj, Response) and (obj.metadata or {}).get(LOCAL_HEADER) == "local"


# -- building local answers -----------------------------------------------------------------------


def _shape(request: Mapping[str, Any], responses_api: bool = False) -> OutputShape:
    shape = (openai_responses_output_shape(request) if responses_api
             else openai_chat_output_shape(request))
    if shape is None:
        raise ValueError("the request's output cannot be a single label (free tool choice, or a "
                         "response format without one string field); it must go to the LLM")
    return shape


def _arguments(shape: OutputShape, label: str) -> str:
    return json.dumps({shape.field: label}, ensure_ascii=False)


def _content(shape: OutputShape, label: str) -> str | None:
    if shape.kind == "tool":
        return None
    return _arguments(shape, label) if shape.kind == "json" else label


def _ids() -> tuple[str, str]:
    hex_ = uuid.uuid4().hex
    return f"chatcmpl-tracerwrap-{hex_[:24]}", f"call_tracerwrap_{hex_[24:]}"


def chat_answer_text(label: str, request: Mapping[str, Any]) -> str:
    """The text a local answer of ``label`` to a chat request generates: the content, or the
    forced function's arguments. Raises ``ValueError`` if the output cannot be a single label."""
    shape = _shape(request)
    return _content(shape, label) or _arguments(shape, label)


def response_answer_text(label: str, request: Mapping[str, Any]) -> str:
    """:func:`chat_answer_text` for a Responses API request."""
    shape = _shape(request, responses_api=True)
    return _content(shape, label) or _arguments(shape, label)


def _zero_usage() -> CompletionUsage:
    return CompletionUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


# The SDK's own check that create() runs before sending (None in an SDK without it).
_VALIDATE_RESPONSE_FORMAT = getattr(
    sys.modules[openai.resources.chat.completions.Completions.__module__],
    "validate_response_format", None)


def check_chat_create(resource: Any, request: Mapping[str, Any]) -> None:
    """The SDK's own check of a ``chat.completions.create`` request before it sends it: raises
    TypeError for a pydantic class as ``response_format`` (``parse`` takes those)."""
    if _VALIDATE_RESPONSE_FORMAT is not None:
        _VALIDATE_RESPONSE_FORMAT(request.get("response_format"))


def build_chat_completion(label: str, request: Mapping[str, Any]) -> ChatCompletion:
    """A ``ChatCompletion`` answering ``request`` (the ``create`` kwargs) with ``label``: as the
    text, as ``{field: label}`` JSON when a JSON/structured format was asked for, or as a call of
    the forced function. Usage is zero; ``system_fingerprint`` is :data:`LOCAL_FINGERPRINT`.

    Raises ``ValueError`` if the request's output cannot be a single label.
    """
    shape = _shape(request)
    completion_id, call_id = _ids()
    tool_calls = None
    if shape.kind == "tool":
        tool_calls = [ChatCompletionMessageFunctionToolCall(
            id=call_id, type="function",
            function=Function(name=str(shape.tool_name), arguments=_arguments(shape, label)))]
    message = ChatCompletionMessage(role="assistant", content=_content(shape, label), refusal=None,
                                    tool_calls=cast(Any, tool_calls))
    return ChatCompletion(
        id=completion_id, object="chat.completion", created=int(time.time()),
        model=str(request.get("model", "")), system_fingerprint=LOCAL_FINGERPRINT,
        choices=[Choice(index=0, message=message, logprobs=None,
                        finish_reason="tool_calls" if tool_calls else "stop")],
        usage=_zero_usage(),
    )


def build_parsed_chat_completion(label: str, request: Mapping[str, Any]
                                 ) -> ParsedChatCompletion[Any]:
    """The ``ParsedChatCompletion`` that ``chat.completions.parse(**request)`` returns when the LLM
    answers ``label``: the SDK's own parsing of :func:`build_chat_completion`, so ``.parsed`` is
    an instance of the request's ``response_format`` type, and a forced
    ``pydantic_function_tool`` / strict function call carries ``parsed_arguments``.

    Raises what ``chat.completions.parse`` raises for the request (``ValueError`` for tools it
    cannot parse), ``ValueError`` if the request's output cannot be a single label, and
    pydantic's ``ValidationError`` if ``label`` is not a valid value of the label field.
    """
    tools = validate_input_tools(request.get("tools", openai.omit))
    return parse_chat_completion(response_format=request.get("response_format", openai.omit),
                                 input_tools=tools,
                                 chat_completion=build_chat_completion(label, request))


def _chunks(label: str, request: Mapping[str, Any]) -> list[ChatCompletionChunk]:
    shape = _shape(request)
    completion_id, call_id = _ids()
    created = int(time.time())
    model = str(request.get("model", ""))

    def chunk(delta: ChoiceDelta | None, finish: Any = None) -> ChatCompletionChunk:
        choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
        return ChatCompletionChunk(id=completion_id, object="chat.completion.chunk",
                                   created=created, model=model,
                                   system_fingerprint=LOCAL_FINGERPRINT, choices=choices)

    if shape.kind == "tool":
        call = ChoiceDeltaToolCall(index=0, id=call_id, type="function",
                                   function=ChoiceDeltaToolCallFunction(
                                       name=shape.tool_name, arguments=_arguments(shape, label)))
        chunks = [chunk(ChoiceDelta(role="assistant")), chunk(ChoiceDelta(tool_calls=[call])),
                  chunk(ChoiceDelta(), "tool_calls")]
    else:
        chunks = [chunk(ChoiceDelta(role="assistant", content="")),
                  chunk(ChoiceDelta(content=_content(shape, label))), chunk(ChoiceDelta(), "stop")]
    stream_options = request.get("stream_options")
    if isinstance(stream_options, Mapping) and stream_options.get("include_usage"):
        usage_chunk = chunk(None)
        usage_chunk.usage = _zero_usage()
        chunks.append(usage_chunk)
    return chunks


def _local_http_response(path: str) -> Any:
    return _http.Response(
        200,
        headers={"content-type": "text/event-stream", LOCAL_HEADER: "local"},
        request=_http.Request("POST", f"https://tracer-wrap.local/v1/{path}"),
    )


class LocalStream(openai.Stream[_Item]):
    """A real ``openai.Stream`` of prepared items (chat chunks or Responses events): iterate,
    ``next()``, ``with``, ``close()``. After ``close()`` iteration stops, as it does on a closed
    HTTP stream."""

    def __init__(self, items: Sequence[_Item], cast_to: type[_Item], path: str) -> None:
        # Stream.__init__ wants a live HTTP response and client; a local answer has neither, so
        # set what the inherited methods (__next__, __iter__, __enter__, __exit__, close) read.
        self.response = _local_http_response(path)
        self._cast_to = cast_to
        self._options = None
        self._closed = False
        self._iterator = self._replay(list(items))

    def _replay(self, items: list[_Item]) -> Iterator[_Item]:
        for item in items:
            if self._closed:
                return
            yield item

    def close(self) -> None:
        """Stop the stream; later iteration yields nothing."""
        self._closed = True
        super().close()


class AsyncLocalStream(openai.AsyncStream[_Item]):
    """A real ``openai.AsyncStream`` of prepared items: ``async for``, ``async with``,
    ``await close()`` / ``await aclose()``."""

    def __init__(self, items: Sequence[_Item], cast_to: type[_Item], path: str) -> None:
        self.response = _local_http_response(path)
        self._cast_to = cast_to
        self._options = None
        self._closed = False
        self._iterator = self._replay(list(items))

    async def _replay(self, items: list[_Item]) -> AsyncIterator[_Item]:
        for item in items:
            if self._closed:
                return
            yield item

    async def close(self) -> None:
        """Stop the stream; later iteration yields nothing."""
        self._closed = True
        await super().close()


def build_chat_completion_stream(label: str, request: Mapping[str, Any]
                                 ) -> LocalStream[ChatCompletionChunk]:
    """What ``create(stream=True, **request)`` returns when the LLM answers ``label``: a role chunk,
    the content (or tool call) chunk, a finish chunk, and a zero usage chunk if
    ``stream_options.include_usage``. Raises ``ValueError`` like :func:`build_chat_completion`."""
    return LocalStream(_chunks(label, request), ChatCompletionChunk, "chat/completions")


def build_async_chat_completion_stream(label: str, request: Mapping[str, Any]
                                       ) -> AsyncLocalStream[ChatCompletionChunk]:
    """The ``AsyncOpenAI`` twin of :func:`build_chat_completion_stream`."""
    return AsyncLocalStream(_chunks(label, request), ChatCompletionChunk,
                            "chat/completions")


def build_chat_stream_manager(label: str, request: Mapping[str, Any]
                              ) -> ChatCompletionStreamManager[Any]:
    """What ``chat.completions.stream(**request)`` returns when the LLM answers ``label``: the SDK's
    own manager over a local stream, so events, ``get_final_completion()`` and ``.parsed`` work."""
    stream = build_chat_completion_stream(label, request)
    return ChatCompletionStreamManager(lambda: stream,
                                       response_format=request.get("response_format", openai.omit),
                                       input_tools=request.get("tools", openai.omit))


def build_async_chat_stream_manager(label: str,
                                    request: Mapping[str, Any]
                                    ) -> AsyncChatCompletionStreamManager[Any]:
    """The ``AsyncOpenAI`` twin of :func:`build_chat_stream_manager`."""
    stream = build_async_chat_completion_stream(label, request)

    async def api_request() -> openai.AsyncStream[ChatCompletionChunk]:
        return stream

    return AsyncChatCompletionStreamManager(api_request(),
                                            response_format=request.get("response_format",
                                                                        openai.omit),
                                            input_tools=request.get("tools", openai.omit))


def build_response(label: str, request: Mapping[str, Any]) -> Response:
    """The Responses API ``Response`` answering ``request`` with ``label`` (text, ``{field: label}``
    JSON for ``text.format``, or a forced function call). Usage is zero and
    ``metadata[LOCAL_HEADER] == "local"`` marks it (a ``Response`` has no system fingerprint).

    Built the way the SDK builds a response from JSON (``Response.construct``), since it echoes the
    request's tools, which the SDK does not validate either. Raises ``ValueError`` like
    :func:`build_chat_completion`.
    """
    shape = _shape(request, responses_api=True)
    hex_ = uuid.uuid4().hex
    if shape.kind == "tool":
        item: dict[str, Any] = {"type": "function_call", "id": f"fc_tracerwrap_{hex_[:20]}",
                                "call_id": f"call_tracerwrap_{hex_[20:]}", "name": shape.tool_name,
                                "arguments": _arguments(shape, label), "status": "completed"}
    else:
        item = {"type": "message", "id": f"msg_tracerwrap_{hex_[:20]}", "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": _content(shape, label),
                             "annotations": []}]}
    metadata = dict(request.get("metadata") or {})
    metadata[LOCAL_HEADER] = "local"
    return Response.construct(
        id=f"resp_tracerwrap_{hex_[:24]}", object="response", created_at=time.time(),
        status="completed", model=str(request.get("model", "")), output=[item],
        parallel_tool_calls=bool(request.get("parallel_tool_calls", True)),
        tool_choice=request.get("tool_choice", "auto"), tools=list(request.get("tools") or []),
        instructions=request.get("instructions"), metadata=metadata,
        text=_text_config(request),
        usage={"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
               "input_tokens_details": {"cached_tokens": 0},
               "output_tokens_details": {"reasoning_tokens": 0}},
    )


def _text_config(request: Mapping[str, Any]) -> Any:
    """The ``text`` configuration a response echoes: the request's, or the one ``text_format``
    makes (as the SDK sends it)."""
    text = request.get("text")
    if text:
        return text
    text_format = request.get("text_format")
    if isinstance(text_format, type):
        return {"format": type_to_text_format_param(text_format)}
    return {"format": {"type": "text"}}


def _text_format(request: Mapping[str, Any]) -> Any:
    """The type a ``parse`` / ``stream`` call parses the output text into (``openai.omit``:
    none), as the SDK chooses it: ``parse_as`` when given (None: plain text), else
    ``text_format``."""
    parse_as = request.get("parse_as", openai.omit)
    if parse_as is None:
        return openai.omit
    if isinstance(parse_as, type):
        return parse_as
    text_format = request.get("text_format", openai.omit)
    return text_format if isinstance(text_format, type) else openai.omit


def _input_tools(request: Mapping[str, Any]) -> Any:
    tools = request.get("tools")
    return list(tools) if isinstance(tools, Sequence) and tools else openai.omit


def build_parsed_response(label: str, request: Mapping[str, Any]) -> ParsedResponse[Any]:
    """The ``ParsedResponse`` that ``responses.parse(**request)`` returns when the LLM answers
    ``label``: the SDK's own parsing of :func:`build_response`, so ``output_parsed`` is an
    instance of ``text_format`` and a forced strict function call carries ``parsed_arguments``.
    Raises ``TypeError`` as ``responses.parse`` does for both ``text.format`` and
    ``text_format``, ``ValueError`` like :func:`build_chat_completion`, pydantic's
    ``ValidationError`` when ``label`` is not a valid value of the label field."""
    text = request.get("text")
    if isinstance(request.get("text_format"), type) and isinstance(text, Mapping) \
            and "format" in text:
        raise TypeError("Cannot mix and match text.format with text_format")
    return parse_response(text_format=_text_format(request), input_tools=_input_tools(request),
                          response=build_response(label, request))


def _response_events(response: Response) -> list[ResponseStreamEvent]:
    """The events the provider streams for ``response``: created, in_progress, its one output
    item (text part or function call, with one delta) and done events, then completed."""
    final: dict[str, Any] = response.to_dict(mode="json")
    item = final["output"][0]
    events: list[dict[str, Any]] = []

    def emit(kind: str, **data: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **data})

    pending = dict(final, status="in_progress", output=[], usage=None)
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        emit("response.output_item.added", output_index=0,
             item=dict(item, arguments="", status="in_progress"))
        emit("response.function_call_arguments.delta", **where, delta=item["arguments"])
        emit("response.function_call_arguments.done", **where, name=item["name"],
             arguments=item["arguments"])
    else:
        part = item["content"][0]
        emit("response.output_item.added", output_index=0,
             item=dict(item, content=[], status="in_progress"))
        emit("response.content_part.added", **where, content_index=0, part=dict(part, text=""))
        emit("response.output_text.delta", **where, content_index=0, delta=part["text"],
             logprobs=[])
        emit("response.output_text.done", **where, content_index=0, text=part["text"],
             logprobs=[])
        emit("response.content_part.done", **where, content_index=0, part=part)
    emit("response.output_item.done", output_index=0, item=item)
    emit("response.completed", response=final)
    # The SDK's own construction of server-sent event data.
    return [cast(ResponseStreamEvent, construct_type(type_=ResponseStreamEvent, value=event))
            for event in events]


def build_response_stream(label: str, request: Mapping[str, Any]
                          ) -> LocalStream[ResponseStreamEvent]:
    """What ``responses.create(stream=True, **request)`` returns when the LLM answers ``label``:
    the events of :func:`build_response`, ending with ``response.completed`` (zero usage).
    Raises ``ValueError`` like :func:`build_chat_completion`."""
    return LocalStream(_response_events(build_response(label, request)),
                       ResponseStreamEvent, "responses")  # type: ignore[arg-type]


def build_async_response_stream(label: str, request: Mapping[str, Any]
                                ) -> AsyncLocalStream[ResponseStreamEvent]:
    """The ``AsyncOpenAI`` twin of :func:`build_response_stream`."""
    return AsyncLocalStream(_response_events(build_response(label, request)),
                            ResponseStreamEvent, "responses")  # type: ignore[arg-type]


def build_response_stream_manager(label: str, request: Mapping[str, Any]
                                  ) -> ResponseStreamManager[Any]:
    """What ``responses.stream(**request)`` returns when the LLM answers ``label``: the SDK's own
    manager over a local stream, so its events, ``get_final_response()`` and ``output_parsed``
    work as with the provider."""
    stream = build_response_stream(label, request)
    return ResponseStreamManager(lambda: stream, text_format=_text_format(request),
                                 input_tools=_input_tools(request), starting_after=None)


def build_async_response_stream_manager(label: str, request: Mapping[str, Any]
                                        ) -> AsyncResponseStreamManager[Any]:
    """The ``AsyncOpenAI`` twin of :func:`build_response_stream_manager`."""
    stream = build_async_response_stream(label, request)

    async def api_request() -> openai.AsyncStream[ResponseStreamEvent]:
        return stream

    return AsyncResponseStreamManager(api_request(), text_format=_text_format(request),
                                      input_tools=_input_tools(request), starting_after=None)
