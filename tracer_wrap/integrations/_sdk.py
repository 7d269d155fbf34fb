"""The SDK driver: how a wrapped SDK method runs through the engine, one task per prompt template.

A wrapped method (a per-instance proxy from :mod:`._openai` / :mod:`._anthropic`, or a class
method patched by :func:`tracer_wrap.autolog`) hands its keyword arguments and the real SDK method
to :meth:`Tasks.run` (:meth:`Tasks.arun` for the async clients)::

    one-shot iterables (a generator of messages) read once; the SDK gets an iterator over them
          │
    view of the request ──not a classification, or a prompt met once──> the SDK method, untouched
          │
    the TracedTask of its template ──> TracedTask.call / acall (tracer_wrap.engine), with a Reply
                                       that reads the label and usage of an SDK result, builds a
                                       genuine SDK object from a local label (never when an
                                       option of the request forbids it),
                                       and taps streams and raw responses

All the lifecycle (plan, local answer or LLM, record, accounting, refit) is the engine's; this
module only says how to read and build SDK objects. What the provider receives is exactly what
the caller passed: the arguments are never mutated or re-ordered, and a one-shot iterator is read
once and replaced by another over the same items. tracer_wrap's own faults are logged and the call
goes to the SDK as if tracer_wrap were not there; SDK errors propagate unchanged.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import wrapt

from .. import background, names, telemetry
from .._log import fault
from ..accounting import Usage
from ..engine import Reply, TracedTask
from ..errors import StoreError
from ..model.embedder import Embedder, make_embedder
from ..options import TaskOptions
from ..spelling import Spellings
from ..store import Store, open_store
from ._prompt import (
    PromptView,
    TemplateLearner,
    local_answer_blocker,
    request_body,
    usage_of,
)
from ._stream import (
    AsyncStreamedResponse,
    AsyncTappedManager,
    Done,
    StreamedResponse,
    TappedManager,
    tap_stream,
)

__all__ = ["TASK_OPTION", "ApiSpec", "AsyncCalls", "CallSpecs", "Calls", "Client", "Resource",
           "Tasks", "Variant", "inside_wrapper"]

#: Per-call keyword that names the task; it is removed before the SDK sees the arguments.
TASK_OPTION = "tracer_wrap_task"

# Set while a wrapper calls the SDK, so a class method patched by autolog that the SDK reaches
# underneath passes the call through instead of tracing it a second time.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("tracer_wrap_inside", default=False)

# The SDKs' header for with_raw_response (openai: "true", anthropic: "raw") and
# with_streaming_response ("stream"). The SDKs return the HTTP response for any value that is
# not empty, its body unread only for "stream".
_RAW_HEADER = "X-Stainless-Raw-Response"

#: A task of the store is known to this process at most this many seconds after it appears.
KNOWN_TASKS_SECONDS = 60.0


@dataclass(frozen=True)
class ApiSpec:
    """How to read and answer one SDK method.

    ``api`` names the request format (``"openai.chat"``, ``"openai.responses"``,
    ``"anthropic.messages"``: the options a local answer cannot honour depend on it) and
    ``provider`` its provider (``gen_ai.provider.name``). ``view`` reads the request; ``build``
    answers it with a label (``build_stream`` when the request asks ``stream=True``; None:
    streams of this method always go to the LLM); ``label`` reads the label of the LLM's result;
    ``answer_text`` is the text a local answer of a label generates (stop sequences act on it);
    ``describe`` gives the ``gen_ai.response.*`` attributes of a result; ``stream_kind`` names
    the chunk format (``"openai"``, ``"openai.responses"`` or ``"anthropic"``); ``manager``: the
    method returns a stream manager (``.stream()``); ``precheck(resource, request)`` runs the
    SDK's own check of a request beyond its signature (raising where the SDK raises before
    sending; ``resource`` is the SDK object whose method is called, None if unknown).
    """

    name: str
    api: str
    provider: str
    view: Callable[[Mapping[str, Any], TemplateLearner], PromptView | None]
    build: Callable[[str, Mapping[str, Any]], Any]
    label: Callable[[Any], object]
    answer_text: Callable[[str, Mapping[str, Any]], str]
    describe: Callable[[Any], Mapping[str, Any]]
    build_stream: Callable[[str, Mapping[str, Any]], Any] | None = None
    stream_kind: str = "openai"
    manager: bool = False
    precheck: Callable[[Any, Mapping[str, Any]], object] | None = None


class Tasks:
    """The :class:`TracedTask` of every prompt template one wrapped client (and its copies) or
    autolog meets, created lazily, sharing one store, one embedder and one template learner.

    ``task`` names one task for every call; otherwise the per-call ``tracer_wrap_task=`` keyword,
    else the prompt template, which becomes a task once it recurs (its second call in this
    process, or its first when the store already has the task): a prompt met once, such as a chat
    turn with its own history, is left alone. ``options`` are the task options every task gets
    (the ``tracer_wrap.toml`` table of each task name still applies beneath them). Thread-safe.

    A call never opens or reads the store, nor waits for it to be opened: the store's task names
    are read by the background worker (:meth:`step`), every :data:`KNOWN_TASKS_SECONDS`, which
    opens the store there (opening a disk store another process holds locked takes up to 30 s);
    the lock guarding this object's state is never held while the store opens or an embedder is
    built.
    """

    def __init__(self, *, task: str | None = None, learner: TemplateLearner | None = None,
                 **options: Any) -> None:
        self.task_name = task
        self.learner = learner or TemplateLearner()
        self._options = options
        # Validated now, so a bad option raises at wrap time rather than on the first call.
        self._base = TaskOptions.resolve(task or "tracer_wrap", options)
        self._store: Store | None = None
        chosen = self._base.embedder
        self._embedder: Embedder | None = chosen if isinstance(chosen, Embedder) else None
        self._tasks: dict[str, TracedTask] = {}
        self._known: tuple[float, frozenset[str]] | None = None
        # Held only to read or set the fields above, never around I/O: the first call of a task
        # takes it while the background worker may be opening the store.
        self._lock = threading.Lock()
        background.register(self)

    @property
    def store(self) -> Store:
        """The shared store, opened on first use (raises StoreError when it cannot be). Opened
        outside the lock: threads opening it together each open one, and all keep the first."""
        if self._store is None:
            opened = open_store(self._base.store)
            with self._lock:
                if self._store is None:
                    self._store = opened
                    return opened
            if opened is not self._store:
                opened.close()
        return self._store

    @property
    def embedder(self) -> Embedder:
        """The shared embedder (its model loads on first embedding): one given as an instance
        from the start, one given by name built on first use, outside the lock like
        :attr:`store`."""
        if self._embedder is None:
            chosen = self._base.embedder
            built = chosen if isinstance(chosen, Embedder) else make_embedder(chosen)
            with self._lock:
                if self._embedder is None:
                    self._embedder = built
        return self._embedder

    def task(self, name: str) -> TracedTask:
        """The task named ``name``, created on first use (sharing the embedder, and the store
        once it is open; a task opens a store not yet open itself, off the request path).
        Never waits for the store to open. Raises ConfigError on a bad option in the task's own
        table of ``tracer_wrap.toml``."""
        found = self._tasks.get(name)
        if found is not None:
            return found
        embedder = self.embedder
        with self._lock:
            found = self._tasks.get(name)
            if found is None:
                store = self._store if self._store is not None else self._base.store
                found = TracedTask(name, **{**self._options, "store": store,
                                            "embedder": embedder})
                self._tasks[name] = found
        return found

    def tasks(self) -> dict[str, TracedTask]:
        """The tasks met so far, by name."""
        with self._lock:
            return dict(self._tasks)

    def spellings(self, name: str) -> Spellings:
        """The spellings the LLM answers the labels of task ``name`` in (see
        :mod:`tracer_wrap.spelling`). Creates the task like :meth:`task`."""
        return self.task(name).spellings

    # -- the path of a call ----------------------------------------------------------------------

    def run(self, spec: ApiSpec, method: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], *, is_async: bool = False) -> Any:
        """Call ``method(**kwargs)`` (a sync SDK method, or any ``.stream()``, which returns a
        manager at once; ``is_async`` says the manager is an async one) the traced way."""
        name = kwargs.pop(TASK_OPTION, None)
        if args or names.disabled():
            return method(*args, **kwargs)
        request, kwargs = _replayable(kwargs)
        # An async manager is planned when entered, on the event loop (acall never blocks it):
        # the SDK sends nothing before then either.
        call = self._call(spec, method, request, name, is_async, awaited=is_async)
        if call is None:
            return method(**kwargs)
        task, text, reply, _ = call
        if is_async:
            return PlannedOnEntry(task, text, reply, lambda: _sdk_call(method, kwargs))
        return task.call(text, lambda: _sdk_call(method, kwargs), reply)

    async def arun(self, spec: ApiSpec, method: Callable[..., Awaitable[Any]],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:meth:`run` for an async SDK method; the only difference is the ``await``."""
        name = kwargs.pop(TASK_OPTION, None)
        if args or names.disabled():
            return await method(*args, **kwargs)
        request, kwargs = _replayable(kwargs)
        call = self._call(spec, method, request, name, True, awaited=True)
        if call is None:
            return await method(**kwargs)
        task, text, reply, raw = call

        async def llm() -> Any:
            result = await _asdk_call(method, kwargs)
            if raw is not None:
                await raw.aload(result)  # an async raw response is parsed by awaiting
            return result

        return await task.acall(text, llm, reply)

    def _call(self, spec: ApiSpec, method: Callable[..., Any], kwargs: Mapping[str, Any],
              name: str | None, is_async: bool, *, awaited: bool
              ) -> tuple[TracedTask, str, Reply[Any], _RawBody | None] | None:
        """The task, text and Reply of a call (and the reader of a raw response's body), or None
        when tracer_wrap stays out of it, as for a call the SDK ``method`` refuses before
        sending it (its own error then reaches the caller). ``awaited``: the engine plans the
        call with ``acall`` (on the event loop). Never raises."""
        try:
            raw = _raw_mode(kwargs)
            streaming = _streaming(kwargs)
            if raw == "raw" and streaming:
                return None  # a raw streamed HTTP body: read by the caller alone
            if raw is None and streaming and spec.build_stream is None and not spec.manager:
                return None
            given = _given(kwargs)
            if _refused(spec, method, kwargs, given):
                return None
            # The provider classifies the body the SDK sends, extra_body merged in.
            view = spec.view(request_body(given), self.learner)
            if view is None:
                return None
            chosen = name or self.task_name
            if chosen is None:
                if not self._recurs(view):
                    return None
                chosen = view.task_key
            task = self.task(chosen)
            body = _RawBody() if raw == "raw" else None
            reply = self._reply(spec, task, given, raw, body, is_async, awaited)
            return task, view.text, reply, body
        except Exception as exc:
            fault("task lookup", exc)
            return None

    def _recurs(self, view: PromptView) -> bool:
        """Whether the template of ``view`` is a task: its prompt recurs, or the task exists
        (in this process, or in the store as of the background worker's last read)."""
        known = self._known
        return (view.recurring or view.task_key in self._tasks
                or (known is not None and view.task_key in known[1]))

    # -- the background job ----------------------------------------------------------------------

    def step(self) -> None:
        """Open the store; read its task names when :data:`KNOWN_TASKS_SECONDS` have passed since
        the last read. Raises StoreError."""
        now = time.monotonic()
        if self._known is None or now - self._known[0] > KNOWN_TASKS_SECONDS:
            self._known = (now, frozenset(self.store.tasks()))

    def drain(self, timeout: float) -> bool:
        """Read the store's task names if due; True when done (False: the store failed)."""
        try:
            self.step()
        except StoreError:
            return False
        return True

    def _reply(self, spec: ApiSpec, task: TracedTask, request: Mapping[str, Any],
               raw: str | None, body: _RawBody | None, is_async: bool, awaited: bool
               ) -> Reply[Any]:
        """How the engine reads and builds this call's SDK objects (the engine reads labels in,
        and spells local ones in, the LLM's own spelling). ``awaited``: see :meth:`_call`."""
        streaming = _streaming(request)
        attributes = telemetry.request_attributes(
            spec.provider, spec.name, request, stream=streaming or spec.manager)

        def label_of(result: Any) -> object:
            _describe(telemetry.current_call(), spec, result)
            return spec.label(result)

        if raw == "raw":  # with_raw_response: the HTTP response itself, its body parsed
            assert body is not None
            return Reply(label_of=lambda r: label_of(body.parsed(r)), build=None,
                         usage_of=lambda r: _usage(body.parsed(r)), attributes=attributes)
        if raw == "stream":  # with_streaming_response: read when the caller reads it
            return Reply(label_of=label_of, build=None, usage_of=_usage,
                         later=lambda response, done: _streamed_response(
                             spec, response, done, streaming, is_async),
                         attributes=attributes)

        build = spec.build_stream if streaming else spec.build
        assert build is not None or spec.manager

        def texts() -> list[str]:
            # The router the plan will read: an awaited plan never waits for the task's first
            # read of the store (it would block the event loop), a synchronous one waits a
            # bounded time for it; the labels checked here must be the ones it may answer.
            router = task.serving.served(wait=not awaited).router
            return [spec.answer_text(task.spellings.spell(label), request)
                    for label in (router.labels if router is not None else ())]

        blocked = local_answer_blocker(spec.api, request, texts)
        if blocked is not None:
            attributes[telemetry.BLOCKED] = blocked

        def local(label: str) -> Any:
            result = build(label, request)  # type: ignore[misc]
            _describe(telemetry.current_call(), spec, result)
            return result

        def tapped_manager(manager: Any, done: Done) -> Any:
            span = telemetry.current_call()

            def tap(stream: Any) -> None:
                tap_stream(stream, spec.stream_kind, done, is_async=is_async, span=span)
            if is_async:
                return AsyncTappedManager(manager, tap, _aenter, span)
            return TappedManager(manager, tap, _enter, span)

        def tapped_stream(stream: Any, done: Done) -> Any:
            tap_stream(stream, spec.stream_kind, done, is_async=is_async,
                       span=telemetry.current_call())
            return stream

        later = tapped_manager if spec.manager else tapped_stream if streaming else None
        # A manager is returned before its request is sent: no latency of the LLM's to time.
        return Reply(label_of=label_of, build=None if blocked is not None else local,
                     usage_of=_usage, later=later, attributes=attributes,
                     timed=not spec.manager)


def _streamed_response(spec: ApiSpec, response: Any, done: Done, streaming: bool,
                       is_async: bool) -> Any:
    """The raw response of a ``with_streaming_response`` call, traced once the caller reads it."""
    span = telemetry.current_call()

    def observe(parsed: Any) -> None:
        if streaming:
            tap_stream(parsed, spec.stream_kind, done, is_async=is_async, span=span)
        else:
            _describe(span, spec, parsed)
            done(spec.label(parsed), _usage(parsed))

    proxy = AsyncStreamedResponse if is_async else StreamedResponse
    return proxy(response, observe, span, streaming)


class _RawBody:
    """The parsed body of one ``with_raw_response`` call, read for its trace. The SDK caches what
    ``parse()`` returns, so the caller's own ``parse()`` costs nothing more."""

    _UNREAD = object()

    def __init__(self) -> None:
        self._parsed: Any = self._UNREAD
        self._error: BaseException | None = None

    def parsed(self, response: Any) -> Any:
        if self._error is not None:
            raise self._error
        if self._parsed is self._UNREAD:
            if inspect.iscoroutinefunction(response.parse):
                raise RuntimeError("an async raw response must be read with aload()")
            self._parsed = response.parse()
        return self._parsed

    async def aload(self, response: Any) -> None:
        """Parse an async raw response (its ``parse()`` is a coroutine); a failure is kept and
        raised by :meth:`parsed`, where the engine logs it."""
        if not inspect.iscoroutinefunction(getattr(response, "parse", None)):
            return
        try:
            self._parsed = await response.parse()
        except Exception as exc:
            self._error = exc


class Resource(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """A proxy of an SDK client or resource; proxy-owned state lives in ``_self_*`` attributes.

    ``copy.copy`` and ``copy.deepcopy`` copy the SDK object and wrap the copy again, sharing the
    tasks (a deep copy raises what the SDK's raises); pickling raises the SDK's TypeError, or
    TypeError for the tasks' locks, never giving back an object that is no longer traced."""

    def __init__(self, wrapped: Any, tasks: Tasks) -> None:
        super().__init__(wrapped)
        self._self_tasks = tasks

    def _self_rewrap(self, wrapped: Any) -> Any:
        """A proxy like this one around ``wrapped``, sharing the tasks."""
        return type(self)(wrapped, self._self_tasks)

    # wrapt's defaults raise NotImplementedError where the SDK's objects copy fine.
    def __copy__(self) -> Any:
        return self._self_rewrap(copy.copy(self.__wrapped__))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._self_rewrap(copy.deepcopy(self.__wrapped__, memo))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return type(self), (self.__wrapped__, self._self_tasks)


class Client(Resource):
    """A wrapped SDK client: every attribute is the client's own, its traced resources are
    wrapped (a subclass adds them), and what returns a client returns a wrapped one sharing this
    client's tasks, store and embedder. Its ``with_raw_response`` / ``with_streaming_response``
    reach the traced resources' own. ``with`` / ``async with`` run the SDK client's own
    ``__enter__`` / ``__exit__`` (which close it) and give the wrapped client."""

    @property
    def tracer_wrap_tasks(self) -> Tasks:
        """The tasks of this client and its copies (one :class:`TracedTask` per template)."""
        return self._self_tasks

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``copy()``, wrapped again: the copy shares this client's tasks and store."""
        return type(self)(self.__wrapped__.copy(*args, **kwargs), self._self_tasks)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``with_options()``, wrapped again (an alias of :meth:`copy`, as in the SDK)."""
        return type(self)(self.__wrapped__.with_options(*args, **kwargs), self._self_tasks)

    #: The traced resources, as paths from the client (``"chat.completions"``).
    traced: tuple[str, ...] = ()

    @property
    def with_raw_response(self) -> Any:
        return client_variant(self.__wrapped__.with_raw_response, self, "with_raw_response",
                              self.traced)

    @property
    def with_streaming_response(self) -> Any:
        return client_variant(self.__wrapped__.with_streaming_response, self,
                              "with_streaming_response", self.traced)

    # wrapt's proxy returns what the client's own __enter__ returns (the bare client), which
    # would turn tracer_wrap off inside the block.
    def __enter__(self) -> Any:
        _special(self.__wrapped__, "__enter__", "context manager")(self.__wrapped__)
        return self

    def __exit__(self, *exc: Any) -> Any:
        return _special(self.__wrapped__, "__exit__", "context manager")(self.__wrapped__, *exc)

    async def __aenter__(self) -> Any:
        await _special(self.__wrapped__, "__aenter__",
                       "asynchronous context manager")(self.__wrapped__)
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await _special(self.__wrapped__, "__aexit__",
                              "asynchronous context manager")(self.__wrapped__, *exc)


def _special(obj: Any, name: str, protocol: str) -> Callable[..., Any]:
    """The special method ``name`` of ``obj``'s class; the TypeError ``with`` raises without."""
    method = getattr(type(obj), name, None)
    if method is None:
        raise TypeError(f"{type(obj).__name__!r} object does not support the {protocol} protocol")
    return method  # type: ignore[no-any-return]


class Variant(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """An SDK ``with_raw_response`` / ``with_streaming_response`` object whose traced attributes
    replace the SDK's: ``attributes`` maps a name to a function making its value (a traced method
    wrapped by the SDK's own raw or streaming wrapper, or, for a client's variant, the variant of
    a traced resource); every other attribute is the SDK's own."""

    def __init__(self, wrapped: Any, attributes: Mapping[str, Callable[[], Any]]) -> None:
        super().__init__(wrapped)
        self._self_attributes = dict(attributes)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_self_"):
            make = self._self_attributes.get(name)
            if make is not None:
                return make()
        return getattr(self.__wrapped__, name)


def variant(sdk_variant: Any, resource: Any, wrapper: Callable[[Callable[..., Any]], Any] | None,
            methods: Sequence[str]) -> Any:
    """``sdk_variant`` (a resource's ``with_raw_response`` or ``with_streaming_response``) whose
    ``methods`` that it has run through the traced ``resource``, wrapped by the SDK's own
    ``wrapper``; the SDK's own variant when the SDK has no such wrapper."""
    if wrapper is None:
        return sdk_variant

    def wrapped(name: str) -> Callable[[], Any]:
        return lambda: wrapper(getattr(resource, name))

    return Variant(sdk_variant, {m: wrapped(m) for m in methods if hasattr(sdk_variant, m)})


def client_variant(sdk_variant: Any, client: Any, kind: str, paths: Sequence[str]) -> Any:
    """``sdk_variant`` (a client's ``with_raw_response`` or ``with_streaming_response``, ``kind``
    naming which) whose traced resources (``paths`` from the client: ``"chat.completions"``) are
    the same variant of the wrapped ``client``'s resources: the client-level spelling
    (``client.with_raw_response.chat.completions.create``) is traced like the resource-level one
    (``client.chat.completions.with_raw_response.create``)."""
    heads: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        heads.setdefault(head, []).append(rest)

    def attribute(head: str, rests: list[str]) -> Callable[[], Any]:
        if rests == [""]:
            return lambda: getattr(getattr(client, head), kind)
        return lambda: client_variant(getattr(sdk_variant, head), getattr(client, head), kind,
                                      rests)

    return Variant(sdk_variant, {head: attribute(head, rests) for head, rests in heads.items()})


@dataclass(frozen=True)
class CallSpecs:
    """What one SDK resource's traced methods are: the :class:`ApiSpec` of ``create``, ``parse``
    and ``stream``, and the SDK's own raw- and streaming-response wrappers (None where this SDK
    version has none), which set the raw-response header and, for ``with_streaming_response``,
    return the SDK's context manager whose request is sent (here: traced) when it is entered."""

    create: ApiSpec
    parse: ApiSpec
    stream: ApiSpec
    raw: Callable[[Callable[..., Any]], Any] | None
    streamed: Callable[[Callable[..., Any]], Any] | None


class Calls(Resource):
    """A synchronous SDK resource (chat completions, responses, messages) whose ``create``,
    ``parse`` and ``stream`` run through :class:`Tasks`; a subclass sets :attr:`specs`."""

    specs: CallSpecs
    asynchronous = False

    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(self.specs.create, self.__wrapped__.create, args, kwargs)

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(self.specs.parse, self.__wrapped__.parse, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_tasks.run(self.specs.stream, self.__wrapped__.stream, args, kwargs,
                                    is_async=self.asynchronous)

    @property
    def with_raw_response(self) -> Any:
        return variant(self.__wrapped__.with_raw_response, self, self.specs.raw,
                       ("create", "parse"))

    @property
    def with_streaming_response(self) -> Any:
        return variant(self.__wrapped__.with_streaming_response, self, self.specs.streamed,
                       ("create", "parse"))


class AsyncCalls(Calls):
    """:class:`Calls` of an async client: ``create`` and ``parse`` are coroutines; ``stream``
    returns the SDK's async stream manager at once, as the SDK does."""

    asynchronous = True

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(self.specs.create, self.__wrapped__.create, args,
                                           kwargs)

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return await self._self_tasks.arun(self.specs.parse, self.__wrapped__.parse, args,
                                           kwargs)


class PlannedOnEntry:
    """What an async client's ``.stream()`` returns: the manager of a call planned when it is
    entered (``async with``), by :meth:`TracedTask.acall`, which never blocks the event loop;
    then the local answer's manager or the SDK's (``manager()``, traced) is entered. One never
    entered plans, sends and traces nothing, as the SDK's own sends nothing."""

    def __init__(self, task: TracedTask, text: str, reply: Reply[Any],
                 manager: Callable[[], Any]) -> None:
        self._task, self._text, self._reply, self._manager = task, text, reply, manager
        self._entered: Any = None

    async def __aenter__(self) -> Any:
        async def llm() -> Any:
            return self._manager()

        self._entered = await self._task.acall(self._text, llm, self._reply)
        return await self._entered.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._entered.__aexit__(*exc_info)


def _describe(span: telemetry.CallSpan, spec: ApiSpec, result: Any) -> None:
    """Tell ``span`` the ``gen_ai.response.*`` attributes of ``result``; nothing is read when
    the span keeps nothing (no telemetry: the common case, on every call)."""
    if span.recording:
        span.describe(spec.describe(result))


def _usage(result: Any) -> Usage | None:
    found = usage_of(result)
    if not found:
        return None
    return Usage(found.get("input_tokens", 0), found.get("output_tokens", 0))


def _replayable(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(request, forwarded)``: ``kwargs`` with every one-shot iterator (a generator of
    messages, tools or input items) read once, as lists for tracer_wrap to read, and as fresh
    iterators over the same items for the SDK, which so gets what the caller passed: the same
    items, in the same order, as a one-shot iterator (and fails alike where it takes none).
    Every other value is passed as it is (the same object)."""
    if not any(isinstance(v, Iterator) for v in kwargs.values()):
        return kwargs, kwargs
    request = {k: list(v) if isinstance(v, Iterator) else v for k, v in kwargs.items()}
    return request, {k: _replay(request[k]) if isinstance(v, Iterator) else v
                     for k, v in kwargs.items()}


def _replay(items: list[Any]) -> Iterator[Any]:
    yield from items


def _refused(spec: ApiSpec, method: Callable[..., Any], kwargs: Mapping[str, Any],
             given: Mapping[str, Any]) -> bool:
    """Whether the SDK ``method`` refuses ``kwargs`` before sending them (a missing or unknown
    argument, or what ``spec.precheck`` raises for): such a call must reach the SDK, which
    raises its own error, rather than get a local answer."""
    function, bound = _function(method)
    signature = _signature(function)
    if signature is not None:
        try:
            signature.bind(*bound, **kwargs)
        except TypeError:
            return True
    if spec.precheck is not None:
        try:
            spec.precheck(bound[0] if bound else None, given)
        except Exception:
            return True
    return False


def _function(method: Callable[..., Any]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The function behind ``method`` and the arguments it binds first (``self``): a bound
    method, or autolog's partial of a class's function."""
    if isinstance(method, functools.partial):
        return method.func, method.args
    if inspect.ismethod(method):
        return method.__func__, (method.__self__,)
    return method, ()


@functools.lru_cache(maxsize=256)
def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    # Reading a signature costs far more than binding to it; an SDK has a few methods.
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


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


def _streaming(kwargs: Mapping[str, Any]) -> bool:
    """Whether the SDK streams this request: it tests ``stream`` for truth (``stream=1``
    streams; its "not given" sentinels are false)."""
    return bool(kwargs.get("stream"))


def _raw_mode(kwargs: Mapping[str, Any]) -> str | None:
    """What the SDK returns for this request: ``"stream"``, the HTTP response with its body
    unread (``with_streaming_response``); ``"raw"``, the HTTP response with its body read
    (``with_raw_response``, whatever the SDK's spelling of it); None, the parsed result."""
    headers = kwargs.get("extra_headers")
    if not isinstance(headers, Mapping):
        return None
    value = headers.get(_RAW_HEADER)
    if not isinstance(value, str) or not value:
        return None
    return "stream" if value == "stream" else "raw"


def inside_wrapper() -> bool:
    """Whether the current context is a wrapper's own SDK call (autolog passes it through)."""
    return _inside.get()
