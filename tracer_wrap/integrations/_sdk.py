"""The engine every wrapped SDK method runs through: one task per prompt template, fail-open.

A wrapped method (a per-instance proxy from :mod:`._openai` / :mod:`._anthropic`, or a class
method patched by :func:`tracer_wrap.autolog`) hands its keyword arguments and the real SDK method
to :meth:`Tasks.run` (or :meth:`Tasks.arun` for the async clients; the two differ only where they
``await``)::

    view of the request ──not a classification──> the SDK method, untouched
          │
    the task of its template (TracedTask.plan: embed, route)
          │
    local? ──yes──> a genuine SDK object built from the label (usage zero, marked local)
          │
          no ──> the SDK method (its errors propagate unchanged, no trace)
                    │
          trace the label (TracedTask.record) and the token usage; a stream is traced when the
          caller has read it to the end

Every step of tracer_wrap's own is fail-open: a fault is logged once per storm
(:func:`tracer_wrap._log.fault`) and the call goes to the SDK as if tracer_wrap were not there.
"""

from __future__ import annotations

import contextvars
import os
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import wrapt

from .. import names
from .._log import fault
from ..model.embedder import Embedder
from ..engine import TracedTask
from ..store import Store, open_store
from ._prompt import PromptView, TemplateLearner, label_from_json, label_from_text, usage_of

__all__ = ["TASK_OPTION", "ApiSpec", "Tasks", "savings"]

#: Per-call keyword that names the task; it is removed before the SDK sees the arguments.
TASK_OPTION = "tracer_wrap_task"

#: Store setting of a task that switches routing on or off (read by every process).
ROUTING_SETTING = "routing"
#: Store setting of a task with its prices: ``{"input_per_mtok": .., "output_per_mtok": ..}`` (USD
#: per million tokens).
PRICE_SETTING = "price"
#: Store counters kept per task by the wrapped clients.
COUNTERS = ("llm_calls", "local_calls", "input_tokens", "output_tokens")

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
    ``label`` reads the label of the LLM's result; ``stream_kind`` names the chunk accumulator
    (``"openai"`` or ``"anthropic"``).
    """

    name: str
    view: Callable[[Mapping[str, Any], TemplateLearner], PromptView | None]
    build: Callable[[str, Mapping[str, Any]], Any]
    label: Callable[[Any], object]
    build_stream: Callable[[str, Mapping[str, Any]], Any] | None = None
    stream_kind: str = "openai"
    manager: bool = False  # the method returns a stream manager (``.stream()``)


@dataclass
class _Call:
    task: TracedTask
    plan: Any  # flow._Plan

    @property
    def local(self) -> bool:
        # In shadow mode flow's plan keeps the router's decision (handled) for scoring; only
        # answer locally when the task's routing switch is on.
        if not self.plan.local:
            return False
        enabled = getattr(self.task, "routing_enabled", None)
        return bool(enabled()) if callable(enabled) else bool(self.task.routing)


class Tasks:
    """The :class:`TracedTask` of every prompt template one wrapped client (and its copies) or
    autolog meets, created lazily, sharing one store, one embedder and one template learner.

    ``routing`` is the default of each task's routing switch; the store setting ``"routing"`` of
    a task, when set, overrides it (:meth:`TracedTask.routing_enabled` re-reads it), so routing is
    turned on or off per task without a code change. Thread-safe.
    """

    def __init__(self, *, task: str | None = None, labels: Any = None,
                 store: Store | str | None = None, embedder: Embedder | None = None,
                 routing: bool = True, learner: TemplateLearner | None = None,
                 **task_options: Any) -> None:
        self.task_name = task
        self.labels = labels
        self.routing = routing
        self.task_options = task_options
        self.learner = learner or TemplateLearner()
        self._store_arg = store
        self._store: Store | None = store if isinstance(store, Store) else None
        self._embedder = embedder
        self._tasks: dict[str, TracedTask] = {}
        self._lock = threading.Lock()

    # -- shared building blocks ------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The shared store, opened on first use (raises StoreError when it cannot be)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self._store_arg)
        return self._store

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = _default_embedder()
        return self._embedder

    def task(self, name: str) -> TracedTask:
        """The task named ``name``, created on first use."""
        found = self._tasks.get(name)
        if found is not None:
            return found
        store, embedder = self.store, self.embedder
        with self._lock:
            found = self._tasks.get(name)
            if found is None:
                found = TracedTask.configured(name, labels=self.labels, store=store, embedder=embedder,
                                   routing=self.routing, **self.task_options)
                self._tasks[name] = found
        return found

    def tasks(self) -> dict[str, TracedTask]:
        """The tasks met so far, by name."""
        with self._lock:
            return dict(self._tasks)

    # -- the path of a call ----------------------------------------------------------------------

    def prepare(self, spec: ApiSpec, kwargs: Mapping[str, Any], name: str | None) -> _Call | None:
        """The task and plan of a call, or None when tracer_wrap stays out of it. Never raises."""
        if names.disabled():
            return None
        try:
            if kwargs.get("stream") is True and spec.build_stream is None and not spec.manager:
                return None
            view = spec.view(_given(kwargs), self.learner)
            if view is None:
                return None
            task = self.task(name or self.task_name or view.task_key)
        except Exception as exc:
            fault("task lookup", exc)
            return None
        return _Call(task, task.plan(view.text))

    def answer(self, spec: ApiSpec, call: _Call, kwargs: Mapping[str, Any]) -> Any:
        """The local answer of a planned call, or None when it cannot be built. Never raises."""
        try:
            build = spec.build_stream if kwargs.get("stream") is True else spec.build
            result = build(call.plan.decision.label, kwargs)  # type: ignore[misc]
        except Exception as exc:
            fault("local answer", exc)
            return None
        _count(call.task, {"local_calls": 1})
        return result

    def finish(self, spec: ApiSpec, call: _Call, kwargs: Mapping[str, Any], result: Any,
               is_async: bool) -> Any:
        """Trace the LLM's ``result`` (now, or when its stream ends); return what the caller gets."""
        try:
            raw = _raw_mode(kwargs)
            if raw is not None:
                if raw == "true" and kwargs.get("stream") is not True and hasattr(result, "parse"):
                    # LegacyAPIResponse caches what parse() returns: the caller's own parse() is free.
                    self._record(call, result.parse(), spec.label)
                return result
            if spec.manager:
                return (_AsyncTappedManager if is_async else _TappedManager)(
                    result, lambda stream: self._tap(spec, call, stream, is_async))
            if kwargs.get("stream") is True:
                self._tap(spec, call, result, is_async)
                return result
            self._record(call, result, spec.label)
        except Exception as exc:
            fault("trace logging", exc)
        return result

    def run(self, spec: ApiSpec, method: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any:
        """Call ``method(*args, **kwargs)`` (a sync SDK method) the traced way."""
        name = kwargs.pop(TASK_OPTION, None)
        call = None if args else self.prepare(spec, kwargs, name)
        if call is None:
            return method(*args, **kwargs)
        if call.local and _raw_mode(kwargs) is None:
            local = self.answer(spec, call, kwargs)
            if local is not None:
                return local
        token = _inside.set(True)
        try:
            result = method(**kwargs)
        finally:
            _inside.reset(token)
        return self.finish(spec, call, kwargs, result, is_async=False)

    async def arun(self, spec: ApiSpec, method: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        """:meth:`run` for an async SDK method; the only difference is the ``await``."""
        name = kwargs.pop(TASK_OPTION, None)
        call = None if args else self.prepare(spec, kwargs, name)
        if call is None:
            return await method(*args, **kwargs)
        if call.local and _raw_mode(kwargs) is None:
            local = self.answer(spec, call, kwargs)
            if local is not None:
                return local
        token = _inside.set(True)
        try:
            result = await method(**kwargs)
        finally:
            _inside.reset(token)
        return self.finish(spec, call, kwargs, result, is_async=True)

    def run_manager(self, spec: ApiSpec, method: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any], is_async: bool) -> Any:
        """``.stream()``: returns a stream manager at once (sync for both clients); the request
        is only sent when the manager is entered."""
        name = kwargs.pop(TASK_OPTION, None)
        call = None if args else self.prepare(spec, kwargs, name)
        if call is None:
            return method(*args, **kwargs)
        if call.local:
            try:
                local = spec.build(call.plan.decision.label, kwargs)  # type: ignore[union-attr]
            except Exception as exc:
                fault("local answer", exc)
            else:
                _count(call.task, {"local_calls": 1})
                return local
        return self.finish(spec, call, kwargs, method(**kwargs), is_async)

    # -- tracing ---------------------------------------------------------------------------------

    def _record(self, call: _Call, result: Any, label_of: Callable[[Any], object]) -> None:
        call.task.record(call.plan, result, label_of)
        usage = usage_of(result)
        _count(call.task, {"llm_calls": 1, "input_tokens": usage.get("input_tokens", 0),
                           "output_tokens": usage.get("output_tokens", 0)})

    def _tap(self, spec: ApiSpec, call: _Call, stream: Any, is_async: bool) -> None:
        """Trace ``stream`` once the caller has read it to the end (a stream closed early or
        broken by an error logs nothing). The stream object itself is left as it is."""
        acc = _OpenAIChunks() if spec.stream_kind == "openai" else _AnthropicEvents()

        def done() -> None:
            try:
                call.task.record(call.plan, acc.label(), lambda label: label)
                _count(call.task, {"llm_calls": 1, **acc.usage})
            except Exception as exc:
                fault("trace logging", exc)

        # Both SDKs' streams (and the SDK stream managers above them) read ``self._iterator``.
        inner = stream._iterator
        stream._iterator = _atap(inner, acc.add, done) if is_async else _tap(inner, acc.add, done)


def _tap(inner: Iterator[Any], add: Callable[[Any], None], done: Callable[[], None]) -> Iterator[Any]:
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


class _StreamLabel:
    """Accumulates a streamed answer's text, or its forced tool call's JSON, and its usage."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tool_json: list[str] = []
        self.tool = False
        self.usage: dict[str, int] = {}

    def label(self) -> str | None:
        if self.tool:
            try:
                return label_from_json(json.loads("".join(self.tool_json)))
            except json.JSONDecodeError:
                return None
        return label_from_text("".join(self.text))


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


class _TappedManager(wrapt.ObjectProxy):  # type: ignore[misc]
    """An SDK stream manager whose stream is traced when read to the end."""

    def __init__(self, manager: Any, tap: Callable[[Any], None]) -> None:
        super().__init__(manager)
        self._self_tap = tap

    def __enter__(self) -> Any:
        token = _inside.set(True)
        try:
            stream = self.__wrapped__.__enter__()
        finally:
            _inside.reset(token)
        try:
            self._self_tap(stream._raw_stream)
        except Exception as exc:
            fault("trace logging", exc)
        return stream

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)


class _AsyncTappedManager(wrapt.ObjectProxy):  # type: ignore[misc]
    """The async twin of :class:`_TappedManager`."""

    def __init__(self, manager: Any, tap: Callable[[Any], None]) -> None:
        super().__init__(manager)
        self._self_tap = tap

    async def __aenter__(self) -> Any:
        token = _inside.set(True)
        try:
            stream = await self.__wrapped__.__aenter__()
        finally:
            _inside.reset(token)
        try:
            self._self_tap(stream._raw_stream)
        except Exception as exc:
            fault("trace logging", exc)
        return stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


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


def _count(task: TracedTask, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to the task's store counters. Never raises (accounting is best effort)."""
    try:
        store = task.store
        for name, delta in counts.items():
            if delta:
                store.incr(task.task, name, int(delta))
    except Exception as exc:
        fault("usage accounting", exc)


def _default_embedder() -> Embedder:
    from ..model.hashing import HASHING, hashing_embedder

    if (os.environ.get(names.ENV_EMBEDDER) or names.DEFAULT_EMBEDDER) == HASHING:
        return hashing_embedder()
    return Embedder.default()


def inside_wrapper() -> bool:
    """Whether the current context is a wrapper's own SDK call (autolog passes it through)."""
    return _inside.get()


def savings(store: Store | str | None, task: str) -> dict[str, Any]:
    """Token usage, cost and savings of ``task`` from its store counters and configured price.

    Counts come from the real responses of the calls that went to the LLM. A call answered
    locally is valued at the mean cost of the task's LLM calls. Prices are the task's store
    setting ``"price"``: ``{"input_per_mtok": .., "output_per_mtok": ..}`` in currency units per
    million tokens; without it the cost fields are None. Raises StoreError if the store cannot be
    opened.
    """
    store = open_store(store)
    counters = store.counters(task)
    llm, local = counters.get("llm_calls", 0), counters.get("local_calls", 0)
    tokens_in, tokens_out = counters.get("input_tokens", 0), counters.get("output_tokens", 0)
    price = store.get_setting(task, PRICE_SETTING)
    out: dict[str, Any] = {
        "task": task, "llm_calls": llm, "local_calls": local,
        "local_share": local / (llm + local) if llm + local else 0.0,
        "input_tokens": tokens_in, "output_tokens": tokens_out,
        "llm_cost": None, "cost_per_llm_call": None, "saved": None,
        "cost_without_tracer_wrap": None,
    }
    if isinstance(price, Mapping):
        cost = (tokens_in * float(price.get("input_per_mtok", 0))
                + tokens_out * float(price.get("output_per_mtok", 0))) / 1e6
        per_call = cost / llm if llm else 0.0
        out.update(llm_cost=cost, cost_per_llm_call=per_call, saved=per_call * local,
                   cost_without_tracer_wrap=cost + per_call * local)
    return out
