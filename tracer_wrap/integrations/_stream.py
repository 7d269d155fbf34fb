"""The stream tap: read an SDK stream's label and usage as the caller consumes it, unchanged.

A tapped stream is the SDK's own stream object whose inner iterator is wrapped: every chunk or
event still reaches the caller as it arrives; each is also handed to an accumulator, and when the
caller has read the stream to the end, ``done(raw_label, usage)`` is called once. A stream closed
early, dropped or broken by an error reports no label; its call's telemetry span is ended all the
same (when the tap's generator is closed or collected, or the stream object is collected). A
fault of the accumulator is logged and stops the tap, never the stream.

The same module taps the two objects that deliver a stream later: an SDK stream manager
(``.stream()``, :class:`TappedManager`), whose request is sent when it is entered, and the raw
HTTP response of ``with_streaming_response`` (:class:`StreamedResponse`), whose body is read for
the trace when the caller parses or reads it.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import wrapt

from .._log import fault
from ..accounting import Usage
from ..labels import label_from_json, label_from_text
from ..telemetry import CallSpan
from ._prompt import usage_of

__all__ = ["AsyncStreamedResponse", "AsyncTappedManager", "Done", "StreamedResponse",
           "TappedManager", "stream_accumulator", "tap_stream"]

#: Called once a stream's label is known: ``done(raw_label, usage)``.
Done = Callable[[object, "Usage | None"], None]


class _StreamLabel:
    """Accumulates a streamed answer's text, or its forced tool call's JSON, and its usage."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tool_json: list[str] = []
        self.tool = False
        self.usage: dict[str, int] = {}

    def add(self, item: Any) -> None:
        raise NotImplementedError

    def label(self) -> str | None:
        if self.tool:
            try:
                return label_from_json(json.loads("".join(self.tool_json)))
            except json.JSONDecodeError:
                return None
        return label_from_text("".join(self.text))

    def usage_seen(self) -> Usage | None:
        if not self.usage:
            return None
        return Usage(self.usage.get("input_tokens", 0), self.usage.get("output_tokens", 0))


class _OpenAIChunks(_StreamLabel):
    """Reads a stream of ``ChatCompletionChunk``."""

    def add(self, chunk: Any) -> None:
        if getattr(chunk, "usage", None) is not None:
            found = usage_of(chunk)
            self.usage = {k: found.get(k, 0) for k in ("input_tokens", "output_tokens")}
        for choice in getattr(chunk, "choices", None) or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self.text.append(delta.content)
            for call in delta.tool_calls or ():
                if call.index == 0 and call.function is not None:
                    self.tool = True
                    self.tool_json.append(call.function.arguments or "")


class _ResponsesEvents(_StreamLabel):
    """Reads a stream of Responses API events: the output text, else the first function call's
    arguments (as ``Response.output_text`` and a function call read), and the final usage."""

    def __init__(self) -> None:
        super().__init__()
        self.call_index: int | None = None

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "response.output_item.added" and self.call_index is None \
                and getattr(event.item, "type", None) == "function_call":
            self.tool, self.call_index = True, event.output_index
        elif kind == "response.output_text.delta":
            self.text.append(event.delta)
        elif kind == "response.function_call_arguments.delta" \
                and event.output_index == self.call_index:
            self.tool_json.append(event.delta)
        elif kind == "response.completed":
            found = usage_of(event.response)
            self.usage = {k: found.get(k, 0) for k in ("input_tokens", "output_tokens")}


class _AnthropicEvents(_StreamLabel):
    """Reads a stream of anthropic raw message events."""

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self.usage = dict(usage_of(event))
        elif kind == "content_block_start" and event.content_block.type == "tool_use":
            self.tool = True
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                self.text.append(delta.text)
            elif delta.type == "input_json_delta":
                self.tool_json.append(delta.partial_json)
        elif kind == "message_delta" and getattr(event, "usage", None) is not None:
            # message_delta usage is cumulative; input tokens were counted at message_start.
            self.usage["output_tokens"] = int(event.usage.output_tokens or 0)
        self.usage.pop("cached_input_tokens", None)


_ACCUMULATORS: dict[str, type[_StreamLabel]] = {"openai": _OpenAIChunks,
                                                "openai.responses": _ResponsesEvents,
                                                "anthropic": _AnthropicEvents}


def stream_accumulator(kind: str) -> _StreamLabel:
    """A fresh reader of one stream's chunks of format ``kind`` (see :func:`tap_stream`): feed it
    each chunk with ``add``; ``label()`` and ``usage_seen()`` say what the stream answered."""
    return _ACCUMULATORS[kind]()


def tap_stream(stream: Any, kind: str, done: Done, *, is_async: bool,
               span: CallSpan | None = None) -> None:
    """Tap ``stream`` (an SDK ``Stream`` / ``AsyncStream``) in place; ``kind`` names its chunk
    format (``"openai"``, ``"openai.responses"`` or ``"anthropic"``). The stream object itself
    is left as it is. ``span`` (the call's telemetry) is ended, as abandoned, if the stream ends
    without a label: closed, dropped or broken."""
    acc = stream_accumulator(kind)
    span = span if span is not None else CallSpan()

    def finish() -> None:
        done(acc.label(), acc.usage_seen())

    # Both SDKs' streams (and the stream managers above them) read ``self._iterator``.
    inner = stream._iterator
    stream._iterator = (_atap(inner, acc.add, finish, span) if is_async
                        else _tap(inner, acc.add, finish, span))
    # A stream dropped before its first item never runs the tap's generator: end the span when
    # the stream itself is collected (ending an ended span does nothing).
    weakref.finalize(stream, _abandon, span)


def _abandon(span: CallSpan) -> None:
    span.abandoned()
    span.end()


def _tap(inner: Iterator[Any], add: Callable[[Any], None], done: Callable[[], None],
         span: CallSpan) -> Iterator[Any]:
    ok, outcome = True, "abandoned"
    try:
        for item in inner:
            if ok:
                try:
                    add(item)
                except Exception as exc:
                    ok = False
                    fault("trace logging", exc)
            yield item
        outcome = "done" if ok else "untraced"
    except GeneratorExit:
        raise
    except BaseException as exc:  # the stream broke: the SDK's error reaches the caller as is
        outcome = "failed"
        span.failed(exc)
        raise
    finally:
        _finish(outcome, done, span)


def _finish(outcome: str, done: Callable[[], None], span: CallSpan) -> None:
    """Report how a tapped stream ended: its label (``done`` ends the span), or no label."""
    if outcome == "done":
        done()
    elif outcome == "abandoned":
        span.abandoned()
    span.end()


async def _atap(inner: AsyncIterator[Any], add: Callable[[Any], None],
                done: Callable[[], None], span: CallSpan) -> AsyncIterator[Any]:
    ok, outcome = True, "abandoned"
    try:
        async for item in inner:
            if ok:
                try:
                    add(item)
                except Exception as exc:
                    ok = False
                    fault("trace logging", exc)
            yield item
        outcome = "done" if ok else "untraced"
    except GeneratorExit:
        raise
    except BaseException as exc:
        outcome = "failed"
        span.failed(exc)
        raise
    finally:
        _finish(outcome, done, span)


class TappedManager(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """An SDK stream manager (``.stream()``) whose stream is tapped once entered.

    ``enter`` wraps the manager's own ``__enter__`` (the request is sent there); ``tap`` is
    applied to the raw stream it opens. An error of the request is reported to ``span`` and
    propagates; a manager never entered ends ``span`` when it is collected."""

    def __init__(self, manager: Any, tap: Callable[[Any], None],
                 enter: Callable[[Callable[[], Any]], Any], span: CallSpan) -> None:
        super().__init__(manager)
        self._self_tap = tap
        self._self_enter = enter
        self._self_span = span
        weakref.finalize(self, _abandon, span)

    def __enter__(self) -> Any:
        try:
            stream = self._self_enter(self.__wrapped__.__enter__)
        except BaseException as exc:
            self._self_span.failed(exc)
            self._self_span.end()
            raise
        try:
            self._self_tap(stream._raw_stream)
        except Exception as exc:
            fault("trace logging", exc)
        return stream

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)


class AsyncTappedManager(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """The async twin of :class:`TappedManager`; ``enter`` wraps the awaited ``__aenter__``."""

    def __init__(self, manager: Any, tap: Callable[[Any], None],
                 enter: Callable[[Callable[[], Any]], Any], span: CallSpan) -> None:
        super().__init__(manager)
        self._self_tap = tap
        self._self_enter = enter
        self._self_span = span
        weakref.finalize(self, _abandon, span)

    async def __aenter__(self) -> Any:
        try:
            stream = await self._self_enter(self.__wrapped__.__aenter__)
        except BaseException as exc:
            self._self_span.failed(exc)
            self._self_span.end()
            raise
        try:
            self._self_tap(stream._raw_stream)
        except Exception as exc:
            fault("trace logging", exc)
        return stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


class StreamedResponse(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """The SDK's raw HTTP response of a ``with_streaming_response`` call, read for the trace.

    When the caller parses it (``parse()``), or reads its body (``read()``, ``text()``,
    ``json()``: then it is parsed from the bytes already read, no more I/O), ``observe(parsed)``
    is called once with the SDK object (a stream, when ``stream=True``: tapped by ``observe``).
    A body the caller only iterates (``iter_bytes()``, ``iter_lines()``) is not traced: ``close()``
    (the context manager's exit) then ends ``span``.
    """

    def __init__(self, response: Any, observe: Callable[[Any], None], span: CallSpan,
                 streaming: bool) -> None:
        super().__init__(response)
        self._self_observe = observe
        self._self_span = span
        self._self_streaming = streaming
        self._self_seen = False
        weakref.finalize(self, _abandon, span)  # never closed: the span ends when collected

    def _self_saw(self, parsed: Any) -> None:
        _observe(self, parsed)

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = self.__wrapped__.parse(*args, **kwargs)
        if not args and not kwargs:  # parse(to=...) is the caller's own type: not the SDK's
            self._self_saw(parsed)
        return parsed

    def _self_after_read(self) -> None:
        if self._self_seen or self._self_streaming:
            return
        try:
            parsed = self.__wrapped__.parse()
        except Exception as exc:  # the body is no answer: the caller reads it as it is
            fault("trace logging", exc)
            self._self_seen = True
            _abandon(self._self_span)
            return
        self._self_saw(parsed)

    def read(self) -> Any:
        data = self.__wrapped__.read()
        self._self_after_read()
        return data

    def text(self) -> Any:
        data = self.__wrapped__.text()
        self._self_after_read()
        return data

    def json(self) -> Any:
        data = self.__wrapped__.json()
        self._self_after_read()
        return data

    def close(self) -> Any:
        try:
            return self.__wrapped__.close()
        finally:
            if not self._self_seen:
                _abandon(self._self_span)


class AsyncStreamedResponse(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """The async twin of :class:`StreamedResponse` (every reading method is awaited)."""

    def __init__(self, response: Any, observe: Callable[[Any], None], span: CallSpan,
                 streaming: bool) -> None:
        super().__init__(response)
        self._self_observe = observe
        self._self_span = span
        self._self_streaming = streaming
        self._self_seen = False
        weakref.finalize(self, _abandon, span)  # never closed: the span ends when collected

    def _self_saw(self, parsed: Any) -> None:
        _observe(self, parsed)

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = await self.__wrapped__.parse(*args, **kwargs)
        if not args and not kwargs:
            self._self_saw(parsed)
        return parsed

    async def _self_after_read(self) -> None:
        if self._self_seen or self._self_streaming:
            return
        try:
            parsed = await self.__wrapped__.parse()
        except Exception as exc:
            fault("trace logging", exc)
            self._self_seen = True
            _abandon(self._self_span)
            return
        self._self_saw(parsed)

    async def read(self) -> Any:
        data = await self.__wrapped__.read()
        await self._self_after_read()
        return data

    async def text(self) -> Any:
        data = await self.__wrapped__.text()
        await self._self_after_read()
        return data

    async def json(self) -> Any:
        data = await self.__wrapped__.json()
        await self._self_after_read()
        return data

    async def close(self) -> Any:
        try:
            return await self.__wrapped__.close()
        finally:
            if not self._self_seen:
                _abandon(self._self_span)


def _observe(response: StreamedResponse | AsyncStreamedResponse, parsed: Any) -> None:
    """Hand the parsed body of a streamed response to its observer, once."""
    if response._self_seen:
        return
    response._self_seen = True
    try:
        response._self_observe(parsed)
    except Exception as exc:
        fault("trace logging", exc)
        _abandon(response._self_span)
