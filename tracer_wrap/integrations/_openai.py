"""``wrap_openai``: an OpenAI / AsyncOpenAI client whose classification calls are traced and routed.

The wrapped client is a :class:`wrapt.ObjectProxy` of the user's own instance: ``isinstance``,
every resource and every attribute work as before; the SDK classes are never patched. Only
``chat.completions.create`` / ``parse`` / ``stream`` and ``responses.create`` (and their
``with_raw_response`` twins, which are traced but always go to the LLM) run through
:class:`._engine.Tasks`. ``with_options()`` and ``copy()`` return wrapped clients sharing the same
tasks, store and embedder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, overload

import openai
import wrapt

from ..model.embedder import Embedder
from ..errors import ConfigError
from ..store import TraceStore
from . import _openai_objects as objects
from ._sdk import _RAW_HEADER, ApiSpec, Tasks
from ._prompt import openai_chat_view, openai_responses_view

__all__ = ["TracedAsyncOpenAI", "TracedOpenAI", "wrap_openai"]

_chat = dict(view=openai_chat_view, label=objects.label_from_chat_completion)
CHAT_CREATE = ApiSpec("openai.chat.create", build=objects.build_chat_completion,
                      build_stream=objects.build_chat_completion_stream, **_chat)
ASYNC_CHAT_CREATE = ApiSpec("openai.chat.create", build=objects.build_chat_completion,
                            build_stream=objects.build_async_chat_completion_stream, **_chat)
CHAT_PARSE = ApiSpec("openai.chat.parse", build=objects.build_parsed_chat_completion, **_chat)
CHAT_STREAM = ApiSpec("openai.chat.stream", build=objects.build_chat_stream_manager, manager=True,
                      **_chat)
ASYNC_CHAT_STREAM = ApiSpec("openai.chat.stream", build=objects.build_async_chat_stream_manager,
                            manager=True, **_chat)
RESPONSES_CREATE = ApiSpec("openai.responses.create", view=openai_responses_view,
                           build=objects.build_response, label=objects.label_from_response)

C = TypeVar("C", openai.OpenAI, openai.AsyncOpenAI)


class _Resource(wrapt.ObjectProxy):  # type: ignore[misc]
    """A proxy of an SDK resource; proxy-owned state lives in ``_self_*`` attributes."""

    def __init__(self, wrapped: Any, tasks: Tasks) -> None:
        super().__init__(wrapped)
        self._self_tasks = tasks


def _with_raw_header(kwargs: dict[str, Any]) -> dict[str, Any]:
    # What the SDK's raw-response wrapper adds itself; set here too so the engine knows the
    # result is a raw HTTP response (never answered locally, parsed for the trace).
    kwargs["extra_headers"] = {**(kwargs.get("extra_headers") or {}), _RAW_HEADER: "true"}
    return kwargs


class _RawCompletions(_Resource):
    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(CHAT_CREATE, self.__wrapped__.create, args, _with_raw_header(kwargs))

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(CHAT_PARSE, self.__wrapped__.parse, args, _with_raw_header(kwargs))


class _AsyncRawCompletions(_Resource):
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(ASYNC_CHAT_CREATE, self.__wrapped__.create, args,
                                           _with_raw_header(kwargs))

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(CHAT_PARSE, self.__wrapped__.parse, args,
                                           _with_raw_header(kwargs))


class _Completions(_Resource):
    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(CHAT_CREATE, self.__wrapped__.create, args, kwargs)

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(CHAT_PARSE, self.__wrapped__.parse, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run_manager(CHAT_STREAM, self.__wrapped__.stream, args, kwargs, False)

    @property
    def with_raw_response(self) -> Any:
        return _RawCompletions(self.__wrapped__.with_raw_response, self._self_tasks)


class _AsyncCompletions(_Resource):
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(ASYNC_CHAT_CREATE, self.__wrapped__.create, args, kwargs)

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(CHAT_PARSE, self.__wrapped__.parse, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run_manager(ASYNC_CHAT_STREAM, self.__wrapped__.stream, args, kwargs,
                                            True)

    @property
    def with_raw_response(self) -> Any:
        return _AsyncRawCompletions(self.__wrapped__.with_raw_response, self._self_tasks)


class _RawResponses(_Resource):
    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(RESPONSES_CREATE, self.__wrapped__.create, args,
                                    _with_raw_header(kwargs))


class _AsyncRawResponses(_Resource):
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(RESPONSES_CREATE, self.__wrapped__.create, args,
                                           _with_raw_header(kwargs))


class _Responses(_Resource):
    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(RESPONSES_CREATE, self.__wrapped__.create, args, kwargs)

    @property
    def with_raw_response(self) -> Any:
        return _RawResponses(self.__wrapped__.with_raw_response, self._self_tasks)


class _AsyncResponses(_Resource):
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(RESPONSES_CREATE, self.__wrapped__.create, args, kwargs)

    @property
    def with_raw_response(self) -> Any:
        return _AsyncRawResponses(self.__wrapped__.with_raw_response, self._self_tasks)


class _Chat(_Resource):
    def __init__(self, wrapped: Any, tasks: Tasks, completions: type[_Resource]) -> None:
        super().__init__(wrapped, tasks)
        self._self_completions = completions(wrapped.completions, tasks)

    @property
    def completions(self) -> Any:
        return self._self_completions


class TracedOpenAI(_Resource):
    """A wrapped ``OpenAI`` client (see :func:`wrap_openai`)."""

    _completions: type[_Resource] = _Completions
    _responses: type[_Resource] = _Responses

    def __init__(self, wrapped: Any, tasks: Tasks) -> None:
        super().__init__(wrapped, tasks)
        self._self_chat: Any = None
        self._self_responses: Any = None

    @property
    def tracer_wrap_tasks(self) -> Tasks:
        """The tasks of this client and its copies (one :class:`TracedTask` per template)."""
        return self._self_tasks

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

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``copy()``, wrapped again: the copy shares this client's tasks and store."""
        return type(self)(self.__wrapped__.copy(*args, **kwargs), self._self_tasks)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``with_options()``, wrapped again (an alias of :meth:`copy`, as in the SDK)."""
        return type(self)(self.__wrapped__.with_options(*args, **kwargs), self._self_tasks)


class TracedAsyncOpenAI(TracedOpenAI):
    """A wrapped ``AsyncOpenAI`` client (see :func:`wrap_openai`)."""

    _completions = _AsyncCompletions
    _responses = _AsyncResponses


@overload
def wrap_openai(client: openai.OpenAI, *, task: str | None = ..., labels: Iterable[str] | None = ...,
                store: TraceStore | str | None = ..., embedder: Embedder | None = ...,
                target: float = ..., routing: bool = ..., **task_options: Any) -> openai.OpenAI: ...


@overload
def wrap_openai(client: openai.AsyncOpenAI, *, task: str | None = ...,
                labels: Iterable[str] | None = ..., store: TraceStore | str | None = ...,
                embedder: Embedder | None = ..., target: float = ..., routing: bool = ...,
                **task_options: Any) -> openai.AsyncOpenAI: ...


def wrap_openai(client: Any, *, task: str | None = None, labels: Iterable[str] | None = None,
                store: TraceStore | str | None = None, embedder: Embedder | None = None,
                target: float = 0.95, routing: bool = True, **task_options: Any) -> Any:
    """Wrap an ``OpenAI`` or ``AsyncOpenAI`` instance; return the wrapped client.

    Classification-shaped calls of ``chat.completions.create`` / ``parse`` / ``stream`` and
    ``responses.create`` are traced into ``store`` and answered locally once a router certifies
    them. The task is ``task``, else the per-call keyword ``tracer_wrap_task="..."`` (stripped
    before the SDK sees it), else the prompt template (model, system prompt, output format and the
    constant text around the classified one). ``labels`` fixes the label set (an output outside it
    is logged invalid and returned unchanged); ``routing`` is the default of each task's routing
    switch (the store setting ``"routing"`` of a task overrides it); ``target`` and
    ``task_options`` go to every :class:`~tracer_wrap.TracedTask` (``min_traces``,
    ``refit_every``, ``audit_rate``, ...).

    A local answer is a genuine SDK object with zero usage and ``system_fingerprint ==
    "tracer_wrap-local"``. SDK errors propagate unchanged and log no trace; tracer_wrap's own
    faults (store, router, embedder) are logged and the call goes to the LLM. The instance is
    wrapped, its class never patched. Raises ConfigError for anything but an OpenAI client.
    """
    if isinstance(client, TracedOpenAI):
        client = client.__wrapped__
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise ConfigError(f"wrap_openai needs an openai.OpenAI or AsyncOpenAI client, got {type(client)!r}")
    tasks = Tasks(task=task, labels=labels, store=store, embedder=embedder, routing=routing,
                  target=target, **task_options)
    proxy = TracedAsyncOpenAI if isinstance(client, openai.AsyncOpenAI) else TracedOpenAI
    return proxy(client, tasks)
