"""The SDK driver: how a wrapped SDK method runs through the engine, one task per prompt template.

A wrapped method (a per-instance proxy from :mod:`._openai` / :mod:`._anthropic`, or a class
method patched by :func:`tracer_wrap.autolog`) hands its keyword arguments and the real SDK method
to :meth:`Tasks.run` (:meth:`Tasks.arun` for the async clients)::

    view of the request ──not a classification──> the SDK method, untouched
          │
    the TracedTask of its template ──> TracedTask.call / acall (tracer_wrap.engine), with a Reply
                                       that reads the label and usage of an SDK result, builds a
                                       genuine SDK object from a local label, and taps streams

All the lifecycle (plan, local answer or LLM, record, accounting, refit) is the engine's; this
module only says how to read and build SDK objects. tracer_wrap's own faults are logged and the
call goes to the SDK as if tracer_wrap were not there; SDK errors propagate unchanged.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import wrapt

from .. import names
from .._log import fault
from ..accounting import Usage
from ..engine import Reply, TracedTask
from ..model.embedder import Embedder, make_embedder
from ..options import TaskOptions
from ..store import Store, open_store
from ._prompt import PromptView, TemplateLearner, usage_of
from ._stream import AsyncTappedManager, Done, TappedManager, tap_stream

__all__ = ["TASK_OPTION", "ApiSpec", "Resource", "Tasks", "inside_wrapper", "with_raw_header"]

#: Per-call keyword that names the task; it is removed before the SDK sees the arguments.
TASK_OPTION = "tracer_wrap_task"

# Set while a wrapper calls the SDK, so a class method patched by autolog that the SDK reaches
# underneath passes the call through instead of tracing it a second time.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("tracer_wrap_inside", default=False)

# The SDKs' header for with_raw_response ("true") and with_streaming_response ("stream").
_RAW_HEADER = "X-Stainless-Raw-Response"


@dataclass(frozen=True)
class ApiSpec:
    """How to read and answer one SDK method.

    ``view`` reads the request; ``build`` answers it with a label (``build_stream`` when the
    request asks ``stream=True``; None: streams of this method always go to the LLM);
    ``label`` reads the label of the LLM's result; ``stream_kind`` names the chunk format
    (``"openai"`` or ``"anthropic"``); ``manager``: the method returns a stream manager
    (``.stream()``).
    """

    name: str
    view: Callable[[Mapping[str, Any], TemplateLearner], PromptView | None]
    build: Callable[[str, Mapping[str, Any]], Any]
    label: Callable[[Any], object]
    build_stream: Callable[[str, Mapping[str, Any]], Any] | None = None
    stream_kind: str = "openai"
    manager: bool = False


class Tasks:
    """The :class:`TracedTask` of every prompt template one wrapped client (and its copies) or
    autolog meets, created lazily, sharing one store, one embedder and one template learner.

    ``task`` names one task for every call; otherwise the per-call ``tracer_wrap_task=`` keyword,
    else the prompt template. ``options`` are the task options every task gets (the
    ``tracer_wrap.toml`` table of each task name still applies beneath them). Thread-safe.
    """

    def __init__(self, *, task: str | None = None, learner: TemplateLearner | None = None,
                 **options: Any) -> None:
        self.task_name = task
        self.learner = learner or TemplateLearner()
        self._options = options
        # Validated now, so a bad option raises at wrap time rather than on the first call.
        self._base = TaskOptions.resolve(task or "tracer_wrap", options)
        self._store: Store | None = None
        self._embedder: Embedder | None = None
        self._tasks: dict[str, TracedTask] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        """The shared store, opened on first use (raises StoreError when it cannot be)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self._base.store)
        return self._store

    @property
    def embedder(self) -> Embedder:
        """The shared embedder (its model loads on first embedding)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    chosen = self._base.embedder
                    self._embedder = chosen if isinstance(chosen, Embedder) \
                        else make_embedder(chosen)
        return self._embedder

    def task(self, name: str) -> TracedTask:
        """The task named ``name``, created on first use (sharing the store and embedder).
        Raises StoreError when the store cannot be opened, ConfigError on a bad option in the
        task's own table of ``tracer_wrap.toml``."""
        found = self._tasks.get(name)
        if found is not None:
            return found
        store, embedder = self.store, self.embedder
        with self._lock:
            found = self._tasks.get(name)
            if found is None:
                found = TracedTask(name, **{**self._options, "store": store,
                                            "embedder": embedder})
                self._tasks[name] = found
        return found

    def tasks(self) -> dict[str, TracedTask]:
        """The tasks met so far, by name."""
        with self._lock:
            return dict(self._tasks)

    # -- the path of a call ----------------------------------------------------------------------

    def _task_of(self, spec: ApiSpec, kwargs: Mapping[str, Any], name: str | None
                 ) -> tuple[TracedTask, str] | None:
        """The task and text of a call, or None when tracer_wrap stays out of it. Never raises."""
        if names.disabled():
            return None
        try:
            raw = _raw_mode(kwargs)
            if raw == "stream" or (raw is not None and kwargs.get("stream") is True):
                return None  # a raw streamed HTTP body: nothing to read a label from
            if kwargs.get("stream") is True and spec.build_stream is None and not spec.manager:
                return None
            view = spec.view(_given(kwargs), self.learner)
            if view is None:
                return None
            return self.task(name or self.task_name or view.task_key), view.text
        except Exception as exc:
            fault("task lookup", exc)
            return None

    def run(self, spec: ApiSpec, method: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], *, is_async: bool = False) -> Any:
        """Call ``method(**kwargs)`` (a sync SDK method, or any ``.stream()``, which returns a
        manager at once; ``is_async`` says the manager is an async one) the traced way."""
        name = kwargs.pop(TASK_OPTION, None)
        found = None if args else self._task_of(spec, kwargs, name)
        if found is None:
            return method(*args, **kwargs)
        task, text = found
        return task.call(text, lambda: _sdk_call(method, kwargs), _reply(spec, kwargs, is_async))

    async def arun(self, spec: ApiSpec, method: Callable[..., Awaitable[Any]],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:meth:`run` for an async SDK method; the only difference is the ``await``."""
        name = kwargs.pop(TASK_OPTION, None)
        found = None if args else self._task_of(spec, kwargs, name)
        if found is None:
            return await method(*args, **kwargs)
        task, text = found
        return await task.acall(text, lambda: _asdk_call(method, kwargs),
                                _reply(spec, kwargs, True))


def _reply(spec: ApiSpec, kwargs: Mapping[str, Any], is_async: bool) -> Reply[Any]:
    """How the engine reads and builds this call's SDK objects."""
    raw = _raw_mode(kwargs)
    if raw is not None:
        # A LegacyAPIResponse caches what parse() returns: the caller's own parse() is free.
        return Reply(label_of=lambda r: spec.label(r.parse()), build=None,
                     usage_of=lambda r: _usage(r.parse()))
    streaming = kwargs.get("stream") is True
    build = spec.build_stream if streaming else spec.build
    assert build is not None or spec.manager

    def local(label: str) -> Any:
        return build(label, kwargs)  # type: ignore[misc]

    def tapped_manager(manager: Any, done: Done) -> Any:
        def tap(stream: Any) -> None:
            tap_stream(stream, spec.stream_kind, done, is_async=is_async)
        if is_async:
            return AsyncTappedManager(manager, tap, _aenter)
        return TappedManager(manager, tap, _enter)

    def tapped_stream(stream: Any, done: Done) -> Any:
        tap_stream(stream, spec.stream_kind, done, is_async=is_async)
        return stream

    later = tapped_manager if spec.manager else tapped_stream if streaming else None
    return Reply(label_of=spec.label, build=local, usage_of=_usage, later=later)


class Resource(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """A proxy of an SDK client or resource; proxy-owned state lives in ``_self_*`` attributes."""

    def __init__(self, wrapped: Any, tasks: Tasks) -> None:
        super().__init__(wrapped)
        self._self_tasks = tasks


def with_raw_header(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` marked as a ``with_raw_response`` call: what the SDK's raw-response wrapper adds
    itself, set here too so the engine knows the result is a raw HTTP response (never answered
    locally, parsed for the trace)."""
    kwargs["extra_headers"] = {**(kwargs.get("extra_headers") or {}), _RAW_HEADER: "true"}
    return kwargs


def _usage(result: Any) -> Usage | None:
    found = usage_of(result)
    if not found:
        return None
    return Usage(found.get("input_tokens", 0), found.get("output_tokens", 0))


def _sdk_call(method: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    token = _inside.set(True)
    try:
        return method(**kwargs)
    finally:
        _inside.reset(token)


async def _asdk_call(method: Callable[..., Awaitable[Any]], kwargs: Mapping[str, Any]) -> Any:
    token = _inside.set(True)
    try:
        return await method(**kwargs)
    finally:
        _inside.reset(token)


def _enter(enter: Callable[[], Any]) -> Any:
    return _sdk_call(enter, {})


async def _aenter(enter: Callable[[], Awaitable[Any]]) -> Any:
    return await _asdk_call(enter, {})


_SENTINELS = frozenset({"NotGiven", "Omit"})


def _given(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """``kwargs`` without the SDKs' "not given" sentinels, which their helpers (``.stream()``)
    pass for every omitted option; a view must read them as absent."""
    if not any(type(v).__name__ in _SENTINELS for v in kwargs.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if type(v).__name__ not in _SENTINELS}


def _raw_mode(kwargs: Mapping[str, Any]) -> str | None:
    headers = kwargs.get("extra_headers")
    if not isinstance(headers, Mapping):
        return None
    value = headers.get(_RAW_HEADER)
    return value if isinstance(value, str) else None


def inside_wrapper() -> bool:
    """Whether the current context is a wrapper's own SDK call (autolog passes it through)."""
    return _inside.get()
