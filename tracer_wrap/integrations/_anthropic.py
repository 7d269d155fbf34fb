"""``wrap_anthropic``: an Anthropic / AsyncAnthropic client whose classification calls are traced.

Like :mod:`._openai`: a :class:`wrapt.ObjectProxy` of the user's instance, intercepting
``messages.create`` (including ``stream=True``), ``messages.parse`` and ``messages.stream`` (with
``output_format`` too), and their ``with_raw_response`` / ``with_streaming_response`` twins
(traced, always answered by the LLM), through :class:`._sdk.Tasks`. Imports ``anthropic``;
:func:`tracer_wrap.integrations.wrap_anthropic` imports this module on first use and names the pip
extra when the SDK is missing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, overload

import anthropic
from anthropic import _response as anthropic_response

from ..errors import ConfigError
from . import _anthropic_objects as objects
from ._prompt import anthropic_messages_view
from ._sdk import ApiSpec, AsyncCalls, Calls, CallSpecs, Client, Resource, Tasks

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import TaskKwargs

__all__ = ["TracedAnthropic", "TracedAsyncAnthropic", "wrap_anthropic"]

_MESSAGES = ApiSpec("anthropic.messages.create", api="anthropic.messages", provider="anthropic",
                    view=anthropic_messages_view, build=objects.build_message,
                    label=objects.label_from_message, answer_text=objects.message_answer_text,
                    describe=objects.describe_message, stream_kind="anthropic",
                    precheck=objects.check_messages)
MESSAGES_CREATE = replace(_MESSAGES, build_stream=objects.build_message_stream)
ASYNC_MESSAGES_CREATE = replace(_MESSAGES, build_stream=objects.build_async_message_stream)
MESSAGES_PARSE = replace(_MESSAGES, name="anthropic.messages.parse",
                         build=objects.build_parsed_message)
MESSAGES_STREAM = replace(_MESSAGES, name="anthropic.messages.stream",
                          build=objects.build_message_stream_manager, manager=True,
                          precheck=None)  # a stream needs no timeout
ASYNC_MESSAGES_STREAM = replace(MESSAGES_STREAM, build=objects.build_async_message_stream_manager)

class _Messages(Calls):
    specs = CallSpecs(MESSAGES_CREATE, MESSAGES_PARSE, MESSAGES_STREAM,
                      getattr(anthropic_response, "to_raw_response_wrapper", None),
                      getattr(anthropic_response, "to_streamed_response_wrapper", None))


class _AsyncMessages(AsyncCalls):
    specs = CallSpecs(ASYNC_MESSAGES_CREATE, MESSAGES_PARSE, ASYNC_MESSAGES_STREAM,
                      getattr(anthropic_response, "async_to_raw_response_wrapper", None),
                      getattr(anthropic_response, "async_to_streamed_response_wrapper", None))


class TracedAnthropic(Client):
    """A wrapped ``Anthropic`` client (see :func:`wrap_anthropic`)."""

    traced = ("messages",)

    _messages: type[Resource] = _Messages

    def __init__(self, wrapped: Any, tasks: Tasks) -> None:
        super().__init__(wrapped, tasks)
        self._self_messages: Any = None

    @property
    def messages(self) -> Any:
        if self._self_messages is None:
            self._self_messages = self._messages(self.__wrapped__.messages, self._self_tasks)
        return self._self_messages


class TracedAsyncAnthropic(TracedAnthropic):
    """A wrapped ``AsyncAnthropic`` client (see :func:`wrap_anthropic`)."""

    _messages = _AsyncMessages


@overload
def wrap_anthropic(client: anthropic.Anthropic, *, task: str | None = None,
                   **options: Unpack[TaskKwargs]) -> anthropic.Anthropic: ...


@overload
def wrap_anthropic(client: anthropic.AsyncAnthropic, *, task: str | None = None,
                   **options: Unpack[TaskKwargs]) -> anthropic.AsyncAnthropic: ...


def wrap_anthropic(client: Any, *, task: str | None = None, **options: Any) -> Any:
    """Wrap an ``Anthropic`` or ``AsyncAnthropic`` instance; return the wrapped client.

    Same options and guarantees as :func:`~tracer_wrap.integrations.wrap_openai`, around
    ``messages.create`` (also with ``stream=True``), ``messages.parse`` and ``messages.stream``.
    A local answer is a genuine ``Message`` (``ParsedMessage``, or stream of raw events) with
    zero usage whose id starts with ``"msg_tracerwrap_"``. Raises ConfigError for anything but an
    Anthropic client or on a bad option.
    """
    if isinstance(client, TracedAnthropic):
        client = client.__wrapped__
    if not isinstance(client, (anthropic.Anthropic, anthropic.AsyncAnthropic)):
        raise ConfigError(f"wrap_anthropic needs an anthropic.Anthropic or AsyncAnthropic client,"
                          f" got {type(client)!r}")
    tasks = Tasks(task=task, **options)
    proxy = (TracedAsyncAnthropic if isinstance(client, anthropic.AsyncAnthropic)
             else TracedAnthropic)
    return proxy(client, tasks)
