"""``wrap_openai``: an OpenAI / AsyncOpenAI client whose classification calls are traced and routed.

The wrapped client is a :class:`wrapt.ObjectProxy` of the user's own instance: ``isinstance``,
every resource and every attribute work as before; the SDK classes are never patched. Only
``chat.completions.create`` / ``parse`` / ``stream`` and ``responses.create`` / ``parse`` /
``stream`` (and their ``with_raw_response`` and ``with_streaming_response`` twins, also spelled
on the client, which are traced but always go to the LLM) run through :class:`._sdk.Tasks`.
``with_options()`` and ``copy()`` return wrapped clients sharing the same tasks, store and
embedder, and ``with`` / ``async with`` give the wrapped client (closing the SDK's at the end,
as the SDK does).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, overload

import openai

from ..errors import ConfigError
from . import _openai_objects as objects
from ._prompt import openai_chat_view, openai_responses_view
from ._sdk import ApiSpec, AsyncCalls, Calls, CallSpecs, Client, Resource, Tasks

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import TaskKwargs

__all__ = ["TracedAsyncOpenAI", "TracedOpenAI", "wrap_openai"]

_CHAT = ApiSpec("openai.chat.create", api="openai.chat", provider="openai", view=openai_chat_view,
                build=objects.build_chat_completion, label=objects.label_from_chat_completion,
                answer_text=objects.chat_answer_text, describe=objects.describe_chat_completion)
CHAT_CREATE = replace(_CHAT, build_stream=objects.build_chat_completion_stream,
                      precheck=objects.check_chat_create)
ASYNC_CHAT_CREATE = replace(CHAT_CREATE, build_stream=objects.build_async_chat_completion_stream)
CHAT_PARSE = replace(_CHAT, name="openai.chat.parse", build=objects.build_parsed_chat_completion)
CHAT_STREAM = replace(_CHAT, name="openai.chat.stream", build=objects.build_chat_stream_manager,
                      manager=True)
ASYNC_CHAT_STREAM = replace(CHAT_STREAM, build=objects.build_async_chat_stream_manager)
_RESPONSES = ApiSpec("openai.responses.create", api="openai.responses", provider="openai",
                     view=openai_responses_view, build=objects.build_response,
                     label=objects.label_from_response, answer_text=objects.response_answer_text,
                     describe=objects.describe_response, stream_kind="openai.responses")
RESPONSES_CREATE = replace(_RESPONSES, build_stream=objects.build_response_stream)
ASYNC_RESPONSES_CREATE = replace(_RESPONSES, build_stream=objects.build_async_response_stream)
RESPONSES_PARSE = replace(_RESPONSES, name="openai.responses.parse",
                          build=objects.build_parsed_response)
RESPONSES_STREAM = replace(_RESPONSES, name="openai.responses.stream",
                           build=objects.build_response_stream_manager, manager=True)
ASYNC_RESPONSES_STREAM = replace(RESPONSES_STREAM,
                                 build=objects.build_async_response_stream_manager)


def _sdk_wrapper(module: str, name: str) -> Any:
    """One of the SDK's own raw/streaming response wrappers (None if this SDK has none)."""
    import importlib

    try:
        return getattr(importlib.import_module(f"openai.{module}"), name)
    except (ImportError, AttributeError):
        return None


_RAW = _sdk_wrapper("_legacy_response", "to_raw_response_wrapper")
_ASYNC_RAW = _sdk_wrapper("_legacy_response", "async_to_raw_response_wrapper")
_STREAMED = _sdk_wrapper("_response", "to_streamed_response_wrapper")
_ASYNC_STREAMED = _sdk_wrapper("_response", "async_to_streamed_response_wrapper")


class _Completions(Calls):
    specs = CallSpecs(CHAT_CREATE, CHAT_PARSE, CHAT_STREAM, _RAW, _STREAMED)


class _AsyncCompletions(AsyncCalls):
    specs = CallSpecs(ASYNC_CHAT_CREATE, CHAT_PARSE, ASYNC_CHAT_STREAM, _ASYNC_RAW,
                      _ASYNC_STREAMED)


class _Responses(Calls):
    specs = CallSpecs(RESPONSES_CREATE, RESPONSES_PARSE, RESPONSES_STREAM, _RAW, _STREAMED)


class _AsyncResponses(AsyncCalls):
    specs = CallSpecs(ASYNC_RESPONSES_CREATE, RESPONSES_PARSE, ASYNC_RESPONSES_STREAM,
                      _ASYNC_RAW, _ASYNC_STREAMED)


class _Chat(Resource):
    def __init__(self, wrapped: Any, tasks: Tasks, completions: type[Resource]) -> None:
        super().__init__(wrapped, tasks)
        self._self_completions = completions(wrapped.completions, tasks)

    @property
    def completions(self) -> Any:
        return self._self_completions

    def _self_rewrap(self, wrapped: Any) -> Any:
        return type(self)(wrapped, self._self_tasks, type(self._self_completions))


class TracedOpenAI(Client):
    """A wrapped ``OpenAI`` client (see :func:`wrap_openai`)."""

    traced = ("chat.completions", "responses")

    _completions: type[Resource] = _Completions
    _responses: type[Resource] = _Responses

    def __init__(self, wrapped: Any, tasks: Tasks) -> None:
        super().__init__(wrapped, tasks)
        self._self_chat: Any = None
        self._self_responses: Any = None

    @property
    def chat(self) -> Any:
        if self._self_chat is None:
            self._self_chat = _Chat(self.__wrapped__.chat, self._self_tasks, self._completions)
        return self._self_chat

    @property
    def responses(self) -> Any:
        if self._self_responses is None:
            self._self_responses = self._responses(self.__wrapped__.responses, self._self_tasks)
        return self._self_responses


class TracedAsyncOpenAI(TracedOpenAI):
    """A wrapped ``AsyncOpenAI`` client (see :func:`wrap_openai`)."""

    _completions = _AsyncCompletions
    _responses = _AsyncResponses


@overload
def wrap_openai(client: openai.OpenAI, *, task: str | None = None,
                **options: Unpack[TaskKwargs]) -> openai.OpenAI: ...


@overload
def wrap_openai(client: openai.AsyncOpenAI, *, task: str | None = None,
                **options: Unpack[TaskKwargs]) -> openai.AsyncOpenAI: ...


def wrap_openai(client: Any, *, task: str | None = None, **options: Any) -> Any:
    """Wrap an ``OpenAI`` or ``AsyncOpenAI`` instance; return the wrapped client.

    Classification-shaped calls of ``chat.completions.create`` / ``parse`` / ``stream`` and
    ``responses.create`` / ``parse`` / ``stream`` are traced and answered locally once a router
    certifies them, unless an option of the request asks for what a local answer cannot give
    (``logprobs``, ``n > 1``, ...: see ``LOCAL_ANSWER_BLOCKERS``). The task is ``task``, else
    the per-call keyword ``tracer_wrap_task="..."`` (stripped before the SDK sees it), else the
    prompt template (model, system prompt, output format and the constant text around the
    classified one, which may sit in the last user message or in the system prompt) once it
    recurs. ``options`` are the task options of every task
    (:class:`~tracer_wrap.options.TaskOptions`: ``labels``, ``target``, ``store``, ``routing``,
    ...); a label outside ``labels`` is logged invalid and returned unchanged.

    A local answer is a genuine SDK object with zero usage and ``system_fingerprint ==
    "tracer_wrap-local"``, its label spelled as the LLM spells it. SDK errors propagate
    unchanged and log no trace; tracer_wrap's own faults (store, router, embedder) are logged
    and the call goes to the LLM. The instance is wrapped, its class never patched. Raises
    ConfigError for anything but an OpenAI client or on a bad option.
    """
    if isinstance(client, TracedOpenAI):
        client = client.__wrapped__
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise ConfigError(f"wrap_openai needs an openai.OpenAI or AsyncOpenAI client,"
                          f" got {type(client)!r}")
    tasks = Tasks(task=task, **options)
    proxy = TracedAsyncOpenAI if isinstance(client, openai.AsyncOpenAI) else TracedOpenAI
    return proxy(client, tasks)
