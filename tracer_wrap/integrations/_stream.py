"""The stream tap: read an SDK stream's label and usage as the caller consumes it, unchanged.

A tapped stream is the SDK's own stream object whose inner iterator is wrapped: every chunk or
event still reaches the caller as it arrives; each is also handed to an accumulator, and when the
caller has read the stream to the end, ``done(raw_label, usage)`` is called once. A stream closed
early or broken by an error reports nothing. A fault of the accumulator is logged and stops the
tap, never the stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import wrapt

from .._log import fault
from ..accounting import Usage
from ..labels import label_from_json, label_from_text
from ._prompt import usage_of

__all__ = ["Done", "TappedManager", "AsyncTappedManager", "tap_stream"]

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
                                                "anthropic": _AnthropicEvents}


def tap_stream(stream: Any, kind: str, done: Done, *, is_async: bool) -> None:
    """Tap ``stream`` (an SDK ``Stream`` / ``AsyncStream``) in place; ``kind`` names its chunk
    format (``"openai"`` or ``"anthropic"``). The stream object itself is left as it is."""
    acc = _ACCUMULATORS[kind]()

    def finish() -> None:
        done(acc.label(), acc.usage_seen())

    # Both SDKs' streams (and the stream managers above them) read ``self._iterator``.
    inner = stream._iterator
    stream._iterator = (_atap(inner, acc.add, finish) if is_async
                        else _tap(inner, acc.add, finish))


def _tap(inner: Iterator[Any], add: Callable[[Any], None], done: Callable[[], None]
         ) -> Iterator[Any]:
    ok = True
    for item in inner:
        if ok:
            try:
                add(item)
            except Exception as exc:
                ok = False
                fault("trace logging", exc)
        yield item
    if ok:
        done()


async def _atap(inner: AsyncIterator[Any], add: Callable[[Any], None],
                done: Callable[[], None]) -> AsyncIterator[Any]:
    ok = True
    async for item in inner:
        if ok:
            try:
                add(item)
            except Exception as exc:
                ok = False
                fault("trace logging", exc)
        yield item
    if ok:
        done()


class TappedManager(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """An SDK stream manager (``.stream()``) whose stream is tapped once entered.

    ``enter`` wraps the manager's own ``__enter__`` (the request is sent there); ``tap`` is
    applied to the raw stream it opens."""

    def __init__(self, manager: Any, tap: Callable[[Any], None],
                 enter: Callable[[Callable[[], Any]], Any]) -> None:
        super().__init__(manager)
        self._self_tap = tap
        self._self_enter = enter

    def __enter__(self) -> Any:
        stream = self._self_enter(self.__wrapped__.__enter__)
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
                 enter: Callable[[Callable[[], Any]], Any]) -> None:
        super().__init__(manager)
        self._self_tap = tap
        self._self_enter = enter

    async def __aenter__(self) -> Any:
        stream = await self._self_enter(self.__wrapped__.__aenter__)
        try:
            self._self_tap(stream._raw_stream)
        except Exception as exc:
            fault("trace logging", exc)
        return stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)
