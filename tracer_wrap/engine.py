"""The path of every traced call, in one place.

    text ──embed──> served router ──local?──yes──> local answer (the LLM is not called)
                          │
                          no: below the threshold, out of distribution, routing off (shadow
                          │   mode), drift breaker tripped, an audit sample, or any fault of
                          ▼   tracer_wrap's own
                   the LLM, as if tracer_wrap were not there
                          │
                          ▼
      normalise its label ─> trace ─> drift breaker, shadow score ─> accounting
                                   ─> enough new traces, or a label the served version
                                      never saw? refit in the background

:class:`TracedTask` runs this path for every caller:

* the decorator and the SDK clients call :meth:`TracedTask.call` / :meth:`TracedTask.acall` (the
  two differ only where they ``await``) with a :class:`Reply`, which says how to read a label
  from their result, how to build a result from a local label, how to read token usage, and how
  to wrap a result whose label arrives later (a stream);
* the HTTP sidecar, whose caller asks the LLM itself between two requests, calls
  :meth:`TracedTask.route` and later :meth:`TracedTask.record` with the same :class:`Plan`.

Every step of tracer_wrap's own is fail-open: a fault is logged (once per storm, see
:mod:`tracer_wrap._log`), counted in ``stats.errors`` and the call goes to the LLM. Errors raised
by the LLM call itself propagate unchanged and log no trace. The building blocks live elsewhere:
the served version and its vetoes in :mod:`tracer_wrap.serving`, the accounting in
:mod:`tracer_wrap.accounting`, refits in :mod:`tracer_wrap.refit`, options in
:mod:`tracer_wrap.options`.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

import numpy as np

from . import background, names, telemetry
from ._log import fault
from .accounting import Ledger, Usage
from .embedding import EmbeddingService, EmbedRefused, EmbedTimeout, EmbedWait, service_for
from .errors import ConfigError, GateRefused, StoreBusy, StoreError, TraceRefused
from .labels import LabelSet
from .model.embedder import Embedder, make_embedder
from .model.router import Decision, Router
from .options import TaskOptions
from .privacy import hash_input, hash_key, map_strings
from .refit import Refitter, refit_never
from .serving import Served, Serving
from .spelling import Spellings
from .store import NewTrace, Origin, Store, encode_vectors, open_store
from .versions import certified_coverage

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import TaskKwargs

__all__ = ["MAX_INPUT_CHARS", "Plan", "Reply", "Stats", "TracedTask"]

R = TypeVar("R")

#: Traces written to the store in one transaction by the background worker.
WRITE_BATCH = 256
#: Transactions a background step writes before it refreshes the snapshot and checks refits.
STEP_BATCHES = 4

#: How long the disk store may stay locked by other processes (each operation waits 2 s, then
#: is retried by the background worker) before the wait counts and is logged as a fault: under
#: contention from many processes a lock held a few seconds is normal, not a failure.
BUSY_FAULT_SECONDS = 30.0
#: How long the embedding model may take to load (its first model call) before the calls that
#: miss their wait meanwhile count and are logged as a fault: a load takes seconds on a busy
#: machine (3-5 s on the project's), and a call at a process's start is no sign of a hang.
LOAD_FAULT_SECONDS = 60.0

#: Longest input tracer_wrap embeds; longer inputs go to the LLM untouched (the embedder truncates
#: long inputs anyway, so a local answer for them would rest on a part of the text).
MAX_INPUT_CHARS = 20_000


@dataclass
class Stats:
    """Counts of this process's calls of one task (the store's counters sum every process).

    ``calls`` reached tracer_wrap; ``local`` were answered locally; ``llm`` LLM answers were
    logged, ``audits`` of them random audit samples and ``invalid`` matching no label; ``dropped``
    answers found the buffer full (their trace is lost, see :class:`TracedTask`); ``skipped``
    inputs were not traceable (not text, empty or too long); ``outliers`` were deferred as out of
    distribution and ``breaker`` because the drift breaker tripped; ``late`` because their input
    was not embedded within its wait (``embed_budget``, ``embed_timeout``); ``errors`` are
    tracer_wrap faults (the call went to the LLM).
    """

    calls: int = 0
    local: int = 0
    llm: int = 0
    audits: int = 0
    invalid: int = 0
    dropped: int = 0
    skipped: int = 0
    outliers: int = 0
    breaker: int = 0
    late: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass(frozen=True)
class Plan:
    """What the engine decided for one call.

    ``local``: answer with ``decision.label`` and do not call the LLM. Otherwise ``reason`` says
    why the call goes to the LLM. ``traced``: the LLM's answer becomes a trace (False when
    tracer_wrap is disabled or the input is not traceable). ``sampled``: the call is in the audit
    slice, a random share of calls (the audit rate) drawn whatever the router decides while it
    answers, so its LLM answer is a uniform draw of traffic. ``audit``: a sampled call the router
    would have answered. ``answering``: the served version answers some calls locally now, so an
    LLM answer of this plan saw a biased share of traffic and must not calibrate as plain traffic
    (unless it is sampled). ``shadow``: routing is off; the decision is scored,
    never used. ``audit_p``: the probability that this call reaches the LLM (the audit rate for
    an audit sample, 1.0 for a call the served version defers or when none serves; None for an
    answer recorded without a plan while a version answers, whose draw is unknown).
    ``vector``: the input's embedding when the engine computed it to route the call; stored with
    the trace so that no refit embeds it again. ``coverage``: what the served version certifies
    at the task's target (telemetry reports it; None without a version).
    """

    text: str | None
    version: int | None = None
    decision: Decision | None = None
    local: bool = False
    traced: bool = True
    audit: bool = False
    sampled: bool = False
    answering: bool = False
    shadow: bool = False
    reason: str = ""
    audit_p: float | None = 1.0
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    coverage: float | None = None


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Reply(Generic[R]):
    """How a caller's results are read and built: what each path supplies to the engine.

    ``label_of(result)`` reads the raw label of an LLM result; ``build(label)`` makes the result
    of a local answer (None: this call can never be answered locally, e.g. a raw HTTP response);
    ``usage_of(result)`` reads its token usage (None: not reported); ``later(result, done)``, for
    results whose label is only known later (streams), returns what the caller gets and calls
    ``done(raw_label, usage)`` once the label is known (never, if the caller abandons it).
    ``attributes`` describe the call to telemetry (:mod:`tracer_wrap.telemetry`:
    ``gen_ai.system``, ``gen_ai.request.model``, ...). ``timed``: the time ``llm()`` takes is
    the LLM's latency (False for a stream manager, whose request is sent only once the caller
    enters it: its time would set the embedding wait of later calls to nothing).
    """

    label_of: Callable[[R], object] = _identity
    build: Callable[[str], R] | None = _identity
    usage_of: Callable[[R], Usage | None] | None = None
    later: Callable[[R, Callable[[object, Usage | None], None]], R] | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    timed: bool = True


_LOCAL_FAILED = object()


@dataclass
class _Answer:
    """An LLM answer waiting in the buffer for its trace to be written (by the background
    worker). ``written`` is set once the trace is in the store, so a retry never writes it twice;
    ``refused`` once the store refused it for good."""

    plan: Plan
    text: str
    label: str | None
    raw: object
    meta: Mapping[str, Any] | None
    written: bool = False
    refused: bool = False


class TracedTask:
    """One classification task: its traces, the version it serves and the path of every call.

    Options are those of :class:`~tracer_wrap.options.TaskOptions`, given as keyword arguments
    (or as ``options=``); those not given come from ``TRACER_WRAP_*`` variables, then
    ``tracer_wrap.toml``, then the defaults. Raises ConfigError on a bad option. The store and
    the embedder open on first use, so a broken disk or model fails open at call time.

    A call never touches the store: the version it serves is this process's snapshot, and an LLM
    answer's trace joins a bounded in-memory buffer that the background worker
    (:mod:`tracer_wrap.background`) writes to the store within a fraction of a second, in order,
    retrying while the store is unreachable. When the buffer is full (``buffer_size``) the newest
    answer is dropped and counted (``dropped``); an answer the store refuses for good (not a
    connection fault) is set aside, logged and counted (``poisoned``). :meth:`flush` writes
    everything now.
    """

    def __init__(self, task: str, *, options: TaskOptions | None = None,
                 **kwargs: Unpack[TaskKwargs]) -> None:
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(f"task must be a non-empty string, got {task!r}")
        if options is not None and kwargs:
            options = options.replace(**kwargs)
        self.task = task
        self.options = options if options is not None else TaskOptions.resolve(task, kwargs)
        self.label_set = LabelSet(self.options.labels, redact=self.options.redact)
        self.stats = Stats()
        # Two locks: opening the store may wait 30 s on another process's lock (in the
        # background), and the first call that builds the embedder must not wait behind it.
        self._store_lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._buffer: deque[_Answer] = deque()
        self._taken = 0  # answers ever taken out of the buffer (written or set aside)
        #: The last answers the store refused for good, kept for inspection.
        self.poisoned: deque[tuple[_Answer, BaseException]] = deque(maxlen=100)
        self._store: Store | None = None
        given = self.options.embedder
        self._embedder: Embedder | None = given if isinstance(given, Embedder) else None
        self._hash_key: bytes | None = None  # read by the writer, never on the request path
        self._rng = self.options.rng or random.Random()
        self._new_traces = False
        # A label the served version never saw asks for a refit now (see _note_unseen_label);
        # the labels already acted on: each starts one refit in this process, never a loop of
        # them (a refit whose rival, not knowing the label, keeps serving would be followed by
        # another at the label's next answer).
        self._refit_now = False
        self._unseen: set[str] = set()
        # Everything in the calling thread, unbounded, so a run is the same on any machine load.
        self._inline = self.options.refit_executor == "inline"
        #: Since when every store operation met another process's lock (None: the last worked).
        self._busy_since: float | None = None
        self._embed_wait = EmbedWait(self.options.embed_timeout, self.options.embed_budget)
        self.serving = Serving(task, self.options, self._get_store, self._get_embedder)
        self.ledger = Ledger(self._get_store, task, self.options.price)
        #: The spelling the LLM answers each label in: answers are read in it and local answers
        #: spelled in it, on every path (:mod:`tracer_wrap.spelling`).
        self.spellings = Spellings(self)
        self.refitter = Refitter(task, self.options, store=self._get_store,
                                 embedder=self._get_embedder,
                                 embed=lambda texts: self.embedding.embed(texts),
                                 breaker=lambda: self.serving.breaker, flush=self.flush,
                                 published=self.serving.install, on_fault=self._fault)
        _LIVE.add(self)
        background.register(self)

    def __del__(self) -> None:
        # Collected with answers or counts not written yet (a decorated function rebound, a
        # wrapped client dropped): the background worker writes them, then lets the task go.
        # No lock here: a collection runs in any thread, at any point, even inside this task's
        # own locked sections. getattr: a task whose __init__ raised has no buffer.
        buffer, ledger = getattr(self, "_buffer", None), getattr(self, "ledger", None)
        if buffer or (ledger is not None and ledger.has_pending()):
            background.adopt(self)

    # -- building blocks, opened on first use ------------------------------------------------

    def _get_store(self) -> Store:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = open_store(self.options.store)
        return self._store

    def _get_embedder(self) -> Embedder:
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    chosen = self.options.embedder
                    self._embedder = chosen if isinstance(chosen, Embedder) \
                        else make_embedder(chosen)
        return self._embedder

    @property
    def store(self) -> Store:
        """The task's store (opened on first use; raises StoreError when it cannot be)."""
        return self._get_store()

    @property
    def embedder(self) -> Embedder:
        """The task's embedder (built on first use; its model loads on first embedding)."""
        return self._get_embedder()

    @property
    def embedding(self) -> EmbeddingService:
        """The worker that embeds this task's inputs (shared by every task of the embedder)."""
        return service_for(self._get_embedder())

    @property
    def target(self) -> float:
        return self.options.target

    @property
    def router(self) -> Router | None:
        """The router this process serves (None before the first router, or when the current
        version cannot be served)."""
        return self.serving.served().router

    @property
    def version(self) -> int | None:
        """The version this process serves (None before the first router)."""
        return self.serving.served().version

    # -- the path of a call ------------------------------------------------------------------

    def call(self, text: object, llm: Callable[[], R], reply: Reply[R] | None = None) -> R:
        """Answer ``text`` locally if the served router may, else return ``llm()`` and trace it.

        ``reply`` says how to read and build results (default: the result is the label). Errors
        of ``llm`` propagate unchanged and log no trace; tracer_wrap's own never reach the caller.
        tracer_wrap waits on nothing but the embedding of ``text``, at most ``embed_timeout``
        and, once the LLM's latency is known, ``embed_budget`` times it. While tracer_wrap is
        disabled (``$TRACER_WRAP_DISABLE``) this is ``llm()`` and nothing else.
        """
        if names.disabled():  # off: no span, count or trace, as on every other path
            return llm()
        reply = reply or Reply()
        span = telemetry.start_call(self.task, self.options, reply.attributes)
        plan = self._plan_many([text], None, 1)[0]
        span.planned(plan)
        if plan.local and reply.build is not None:
            local = self._answer(plan, reply.build, span)
            if local is not _LOCAL_FAILED:
                return cast(R, local)
        started = self.options.monotonic()
        try:
            result = llm()
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
        if reply.timed:
            self._embed_wait.llm_took(self.options.monotonic() - started)
        return self._after_llm(plan, result, reply, span)

    async def acall(self, text: object, llm: Callable[[], Awaitable[R]],
                    reply: Reply[R] | None = None) -> R:
        """:meth:`call` for a coroutine ``llm``. Nothing of tracer_wrap's blocks the event loop:
        the embedding is awaited (within the same bounds), traces are written in the
        background, and the store is never read on the loop (unless ``refresh_seconds=0``)."""
        if names.disabled():
            return await llm()
        reply = reply or Reply()
        span = telemetry.start_call(self.task, self.options, reply.attributes)
        plan = await self._aplan(text)
        span.planned(plan)
        if plan.local and reply.build is not None:
            local = self._answer(plan, reply.build, span)
            if local is not _LOCAL_FAILED:
                return cast(R, local)
        started = self.options.monotonic()
        try:
            result = await llm()
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
        if reply.timed:
            self._embed_wait.llm_took(self.options.monotonic() - started)
        return self._after_llm(plan, result, reply, span)

    def route(self, text: str | None = None, *, vector: np.ndarray | None = None) -> Plan:
        """The plan of one call whose caller asks the LLM itself (the sidecar): when
        ``plan.local`` the caller uses ``plan.decision.label`` (counted as answered locally);
        otherwise it asks the LLM and passes the answer to :meth:`record` with this plan.
        ``vector`` routes a precomputed embedding (``text`` may then be None). Never raises."""
        if vector is None:
            return self.route_many([text])[0]  # type: ignore[list-item]
        return self.route_many(None if text is None else [text], np.asarray(vector)[None, :])[0]

    def route_many(self, texts: Sequence[str] | None, vectors: np.ndarray | None = None
                   ) -> list[Plan]:
        """:meth:`route` for a batch, embedded in one pass. Never raises."""
        n = len(texts) if texts is not None else len(vectors if vectors is not None else ())
        if names.disabled():  # off: no span, count or trace, as on every other path
            why = f"tracer_wrap is disabled (${names.ENV_DISABLE})"
            return [Plan(None, traced=False, reason=why) for _ in range(n)]
        plans = self._plan_many(texts, vectors, n)
        for plan in plans:
            span = telemetry.start_call(self.task, self.options, {})
            span.planned(plan)
            if plan.local:
                assert plan.decision is not None and plan.decision.label is not None
                self._count_local()
                span.answered_locally(plan.decision.label)
            span.end()
        return plans

    def record(self, plan: Plan | None, raw: object, *, text: str | None = None,
               usage: Usage | None = None, meta: Mapping[str, Any] | None = None,
               span: telemetry.CallSpan | None = None) -> str | None:
        """Take the LLM's answer ``raw`` to a planned call; return its label (None: invalid).

        The answer is counted at once and its trace is buffered for the background worker (see
        the class docstring). ``plan`` None records an answer no plan was made for (the sidecar's
        traces without a plan): it may calibrate only while no version answers locally. ``text``
        is the input when the plan does not carry it (route by embedding). An audit sample feeds
        the drift breaker; in shadow mode the router's would-be answer is scored; ``meta`` is
        stored with the trace; ``span`` (the call's telemetry) is told the answer and ended.
        While tracer_wrap is disabled (``$TRACER_WRAP_DISABLE``) nothing is counted or traced.
        Never raises and never waits.
        """
        if not names.disabled():
            return self._record(plan, raw, text=text, usage=usage, meta=meta, span=span)
        try:  # off: nothing counted or traced, as on every other path
            return self.label_set.normalise(raw)
        except Exception as exc:
            self._fault("trace logging", exc)
            return None
        finally:
            if span is not None:
                span.end()

    def _record(self, plan: Plan | None, raw: object, *, text: str | None = None,
                usage: Usage | None = None, meta: Mapping[str, Any] | None = None,
                span: telemetry.CallSpan | None = None) -> str | None:
        """:meth:`record` once tracer_wrap is known to be on (a call checks at its start)."""
        label: str | None = None
        try:
            if plan is None:
                plan = self._unplanned()
            counts = {names.COUNTER_LLM: 1, names.COUNTER_AUDITS: int(plan.audit)}
            if usage is not None:
                counts.update({names.COUNTER_INPUT_TOKENS: usage.input_tokens,
                               names.COUNTER_OUTPUT_TOKENS: usage.output_tokens,
                               names.COUNTER_USAGE_CALLS: 1})
            self.stats.add(llm=1, audits=int(plan.audit))
            raw = self.spellings.learn(raw)
            label = self.label_set.normalise(raw)
            if label is None:
                counts[names.COUNTER_INVALID] = 1
                self.stats.add(invalid=1)
            if span is not None:
                span.answered_by_llm(label, usage)
            text = plan.text if text is None else text
            if plan.traced and text is not None:
                if len(self._buffer) >= self.options.buffer_size:
                    counts[names.COUNTER_DROPPED] = 1
                    self.stats.add(dropped=1)
                else:
                    self._buffer.append(_Answer(plan, text, label, raw, meta))
                    # Only the first answer into an empty buffer wakes the worker: a step writes
                    # what is buffered by then, and the rest wait at most background.TICK. Woken
                    # by every answer, it ran a store transaction per answer of a burst, its GIL
                    # handoffs and wake-ups billed to the event loop.
                    if not self._inline and len(self._buffer) == 1:
                        background.wake()
            self.ledger.add(counts)
            if self._inline:
                # Inline means everything in the calling thread, reproducibly (simulations):
                # the trace is written and a due refit runs before the call returns.
                self._write()
                self.ledger.flush()
                self._refit_if_due()
        except Exception as exc:
            self._fault("trace logging", exc)
        finally:
            if span is not None:
                span.end()
        return label

    # -- planning ----------------------------------------------------------------------------

    def _plan_many(self, texts: Sequence[object] | None, vectors: np.ndarray | None,
                   n: int) -> list[Plan]:
        """Embed and route inputs (synchronous callers); never raises (a fault plans an LLM
        call). Waits on nothing but the embedding, at most the wait of :class:`EmbedWait`."""
        plans, rows, inputs = self._admit(texts, vectors, n)
        if not rows:
            return plans  # type: ignore[return-value]
        try:
            served = self.serving.served()
            if served.router is None:
                decided = [Plan(t, served.version, reason=served.reason, coverage=served.coverage)
                           for t in inputs]
            else:
                seen = [None if t is None else self._as_traced(t) for t in inputs]
                if vectors is not None:
                    matrix = vectors[rows]
                elif self._inline:
                    matrix = self.embedder.embed(cast("list[str]", seen))
                else:
                    matrix = self.embedding.embed_many(cast("list[str]", seen),
                                                       self._embed_wait.seconds())
                decided = self._decide(inputs, seen, matrix, served)
                if vectors is None:  # embedded here, so in the space of self.embedder
                    decided = [p if p.local else replace(p, vector=v)
                               for p, v in zip(decided, matrix)]
        except Exception as exc:
            decided = self._unrouted(inputs, exc)
        for i, plan in zip(rows, decided):
            plans[i] = plan
        return plans  # type: ignore[return-value]

    async def _aplan(self, text: object) -> Plan:
        """:meth:`_plan_many` for one input of an async caller: the embedding is awaited."""
        plans, rows, inputs = self._admit([text], None, 1)
        if not rows or inputs[0] is None:
            return plans[0]  # type: ignore[return-value]
        text = inputs[0]
        try:
            served = self.serving.served(wait=False)
            if served.router is None:
                return Plan(text, served.version, reason=served.reason,
                            coverage=served.coverage)
            seen = self._as_traced(text)
            vector = await self.embedding.aembed_one(seen, self._embed_wait.seconds())
            plan = self._decide([text], [seen], vector[None, :], served)[0]
            return plan if plan.local else replace(plan, vector=vector)
        except Exception as exc:
            return self._unrouted([text], exc)[0]

    def _admit(self, texts: Sequence[object] | None, vectors: np.ndarray | None, n: int
               ) -> tuple[list[Plan | None], list[int], list[str | None]]:
        """Count the calls; plan the ones tracer_wrap stays out of (not traceable); return the
        plans so far, the rows still to route and their inputs as plain ``str`` (None where the
        vector is given). A ``str`` subclass is copied with ``str.__str__`` first, so none of
        its own methods ever runs; one that cannot be read is not traced. Never reached while
        tracer_wrap is disabled: ``call``, ``acall`` and ``route_many`` stop before it, as the
        wrapped clients and the gateway stop before the engine, so every path keeps one
        accounting."""
        self.stats.add(calls=n)
        self.ledger.add({names.COUNTER_CALLS: n})
        plans: list[Plan | None] = [None] * n
        rows: list[int] = []
        inputs: list[str | None] = []
        for i in range(n):
            text = texts[i] if texts is not None else None
            try:
                if isinstance(text, str):
                    text = str.__str__(text)
                why = _untraceable(text) if vectors is None or text is not None else ""
            except Exception as exc:
                self._fault("routing", exc)
                why = f"the input cannot be read as text ({type(exc).__name__})"
            if why:
                self.stats.add(skipped=1)
                plans[i] = Plan(None, traced=False, reason=why)
            else:
                rows.append(i)
                inputs.append(cast("str | None", text))
        return plans, rows, inputs

    def _unrouted(self, texts: list[str | None], exc: Exception) -> list[Plan]:
        """Plans of inputs routing failed for: to the LLM. An embedding refused at once (the
        worker could not have made the wait), a wait the LLM's latency cut short, or one that
        ended while the model loads (for less than :data:`LOAD_FAULT_SECONDS`) is counted as
        ``late``; anything else (a wait that reached ``embed_timeout`` included: a hung
        embedder, or a load that runs that long) is a fault. Their answers are unplanned draws
        for the gate (see :meth:`_unplanned`): which inputs miss their wait depends on the
        machine's load and the embedder's cache, not on a design."""
        cut_short = self._embed_wait.seconds() < self.options.embed_timeout
        # Only the service raises EmbedTimeout: asked nothing otherwise (the fault handled here
        # may be that the embedder cannot even be built).
        loading = self.embedding.loading() if isinstance(exc, EmbedTimeout) else None
        stuck = loading is not None and loading >= LOAD_FAULT_SECONDS
        if not stuck and (isinstance(exc, EmbedRefused) or (
                isinstance(exc, EmbedTimeout) and (cut_short or loading is not None))):
            self.stats.add(late=len(texts))
            why = f"the embedding of the input was not ready within its wait: {exc}"
        else:
            self._fault("routing", exc)
            why = f"tracer_wrap fault while routing ({type(exc).__name__}); see the log"
        try:
            return [self._unplanned(t, why) for t in texts]
        except Exception:
            return [Plan(t, audit_p=None, answering=True, reason=why) for t in texts]

    def _as_traced(self, text: str) -> str:
        """An input as its trace keeps it (redacted when ``redact`` is set): the router was
        fitted and calibrated on such texts, so it must route them, not the raw ones."""
        if self.options.redact is None:
            return text
        redacted = self.options.redact(text)
        if not isinstance(redacted, str):
            raise ConfigError(f"redact must return a string, got {type(redacted).__name__}")
        return redacted

    def _decide(self, texts: list[str | None], seen: list[str | None], vectors: np.ndarray,
                served: Served) -> list[Plan]:
        """Plans for ``texts`` (the calls' inputs), routed as ``seen`` (as traced) with their
        embeddings ``vectors``."""
        routing = self.serving.routing_on()
        tripped = self.serving.tripped()
        answering = served.certified and routing and not tripped
        known = None if any(t is None for t in seen) else seen
        return [self._veto(text, served, decision, outlier, routing, tripped, answering)
                for text, (decision, outlier) in zip(
                    texts, self.serving.decide(served, known, vectors))]  # type: ignore[arg-type]

    def _veto(self, text: str | None, served: Served, decision: Decision, outlier: bool,
              routing: bool, tripped: bool, answering: bool) -> Plan:
        """The plan of one routed input: local unless a veto or an audit draw sends it on. The
        audit slice is drawn for every input while the version answers, deferred or not: the
        deferred ones in it make the slice a uniform draw of traffic (refit.calibration_chances)."""
        local = audit = False
        audit_p = 1.0
        rate = self.serving.audit_rate(served) if answering else 0.0
        sampled = answering and self._rng.random() < rate
        if outlier:
            self.stats.add(outliers=1)
        if not decision.local:
            reason = decision.reason
        elif not routing:
            reason = "shadow mode: routing is off for this task"
        elif tripped:
            self.stats.add(breaker=1)
            decision = replace(decision, local=False)
            reason = "the drift breaker tripped: live agreement is below target"
        elif sampled:
            audit, reason, audit_p = True, "audit sample", rate
        else:
            local, reason = True, ""
        return Plan(text, served.version, decision, local=local, audit=audit, sampled=sampled,
                    answering=answering, shadow=not routing, reason=reason, audit_p=audit_p,
                    coverage=served.coverage)

    # -- answering ---------------------------------------------------------------------------

    def _answer(self, plan: Plan, build: Callable[[str], Any], span: telemetry.CallSpan) -> Any:
        """The local answer of a plan, or _LOCAL_FAILED (logged) when it cannot be built."""
        assert plan.decision is not None and plan.decision.label is not None
        try:
            result = build(self.spellings.spell(plan.decision.label))
        except Exception as exc:
            self._fault("local answer", exc)
            return _LOCAL_FAILED
        self._count_local()
        span.answered_locally(plan.decision.label)
        span.end()
        return result

    def _count_local(self) -> None:
        self.stats.add(local=1)
        self.ledger.add({names.COUNTER_LOCAL: 1})

    def _after_llm(self, plan: Plan, result: R, reply: Reply[R], span: telemetry.CallSpan) -> R:
        """Trace the LLM's result (now, or when its stream ends); return what the caller gets.
        A label that cannot be read (``label_of`` or ``later`` raised) is logged as a fault and
        the answer is still recorded, as an invalid one: the LLM was called either way."""
        raw: object = None
        usage: Usage | None = None
        try:
            if reply.later is not None:
                def done(raw: object, usage: Usage | None) -> None:
                    self._record(plan, raw, usage=usage, span=span)

                return reply.later(result, done)
            raw = reply.label_of(result)
            if reply.usage_of is not None:
                usage = reply.usage_of(result)
        except Exception as exc:
            self._fault("trace logging", exc)
        self._record(plan, raw, usage=usage, span=span)
        return result

    def _unplanned(self, text: str | None = None, reason: str = "") -> Plan:
        """A plan for an LLM answer no plan was made for (``text`` and ``reason``: of an input
        whose routing failed)."""
        served = self.serving.served(wait=False)
        answering = (served.certified and self.serving.routing_on()
                     and not self.serving.tripped())
        return Plan(text, version=served.version, answering=answering,
                    audit_p=None if answering else 1.0, reason=reason,
                    coverage=served.coverage)

    def _fault(self, step: str, exc: BaseException) -> None:
        if isinstance(exc, StoreBusy):
            now = time.monotonic()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < BUSY_FAULT_SECONDS:
                return  # contention: the writer retries, nothing is lost
        self.stats.add(errors=1)
        # A broken store fails every step that touches it: report it as one fault, so a storm of
        # calls logs it once.
        fault("trace store" if isinstance(exc, StoreError) else step, exc, task=self.task)

    # -- the background job (tracer_wrap.background): writing, refreshing, refitting -----------

    def step(self) -> None:
        """Write buffered traces and counters, refresh the served snapshot, start a refit when
        one is due, share the LLM's spellings of labels with other processes. Runs on the
        background worker; a store fault is logged and retried at the next step, any other
        fault of one of these parts is logged with the task's name and the other parts run. With
        ``refit_executor="inline"`` the calls write and refit themselves (reproducibly, in the
        calling thread), so the worker only refreshes the snapshot and the spellings. Does
        nothing while ``$TRACER_WRAP_DISABLE`` is set."""
        if names.disabled():
            # Off: no call buffered anything or reads the snapshot, so the store is not opened
            # (answers buffered before the switch wait for it to be off again, or for the exit).
            return
        work: list[tuple[str, Callable[[], object]]]
        if self._inline:
            work = [("refresh", self._refresh_if_due), ("spellings", self.spellings.step)]
        else:
            # A bounded share of the buffer per step: under a flood of calls the snapshot must
            # still be refreshed and refits still started.
            work = [("trace logging", lambda: self._write(max_answers=STEP_BATCHES * WRITE_BATCH)),
                    ("counters", self.ledger.flush), ("refresh", self._refresh_if_due),
                    ("refit", self._refit_if_due), ("spellings", self.spellings.step)]
        for name, part in work:
            try:
                part()
            except StoreError as exc:  # the store cannot be reached: every part retries next tick
                self._fault("trace store", exc)
                return
            except Exception as exc:
                # Any other fault of one part (a damaged row, a defect) is logged with the task
                # and must not stop the others: a refresh that fails on a damaged current-version
                # row must not stop the refit that would replace it, nor the counters' flush.
                self._fault(name, exc)

    def _refresh_if_due(self) -> None:
        if self.serving.due():
            self.serving.refresh()

    def _refit_if_due(self) -> None:
        """Start a refit when new valid traces were written and the policy says it is due."""
        if self._refit_now and not self.refitter.runner.running:
            self._refit_now = self._new_traces = False
            self.refit_in_background()
        if self._new_traces:
            self._new_traces = False
            if self.refitter.due(self.store.counter(self.task, names.COUNTER_NEW_TRACES)):
                self.refit_in_background()

    def drain(self, timeout: float) -> bool:
        """Write every trace and counter buffered at the call, retrying store faults for up to
        ``timeout`` seconds; True when they are all written (answers that arrive meanwhile are
        left to the worker). While ``$TRACER_WRAP_DISABLE`` is set nothing is written (True
        when nothing is buffered)."""
        if names.disabled():
            return not self._buffer and not self.ledger.has_pending()
        deadline = time.monotonic() + timeout
        goal = self._taken + len(self._buffer)
        while self._taken < goal:
            try:
                if not self._write(timeout=max(0.0, deadline - time.monotonic()),
                                   max_answers=goal - self._taken):
                    return False  # another thread is writing and did not finish in time
            except StoreError as exc:
                if time.monotonic() >= deadline:
                    self._fault("trace store", exc)
                    return False
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        # Bounded too: before a fork the disk store's guard is held, and a worker flushing
        # counters at that moment waits for it while holding the ledger (tests/test_reliability.py).
        written = self.ledger.flush(timeout=max(0.0, deadline - time.monotonic()))
        written = self.spellings.drain(max(0.0, deadline - time.monotonic())) and written
        if written:
            try:
                self._refit_if_due()
            except StoreError as exc:
                self._fault("trace store", exc)
        return written

    def flush(self, timeout: float = 30.0) -> bool:
        """Write this task's buffered traces and counters to the store now, waiting up to
        ``timeout`` seconds for an unreachable store (plus at most one store operation's own
        bound: 2 s for a lock held by another process, ``socket_timeout`` for Redis); True when
        nothing is left pending. What is not written stays buffered for the background worker."""
        return self.drain(timeout)

    def _write(self, timeout: float | None = None, max_answers: int | None = None) -> bool:
        """Write the oldest ``max_answers`` buffered answers (None: as many as are buffered
        now, not those that arrive meanwhile) to the store in order, :data:`WRITE_BATCH` per
        transaction; False when another thread held the writer longer than ``timeout`` (None:
        wait). Raises StoreError (keeping the rest) when the store cannot be written; sets aside
        an answer the store refuses for good."""
        if not self._drain_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        left = len(self._buffer) if max_answers is None else max_answers
        try:
            if self.options.store_inputs == "hash" and self._buffer:
                self._input_key()  # a StoreError here keeps every answer buffered
            while self._buffer and left > 0:
                # By index, not by iterating: calls append to the deque meanwhile, which an
                # iterator refuses (RuntimeError); only this writer, under the lock, pops.
                batch = [self._buffer[i]
                         for i in range(min(WRITE_BATCH, left, len(self._buffer)))]
                owners, rows = [], []
                for answer in batch:
                    if answer.written or answer.refused:
                        continue
                    try:
                        rows.append(self._row(answer))
                        owners.append(answer)
                    except Exception as exc:  # the redact hook failed on this answer
                        self._poison(answer, exc)
                if rows:
                    try:
                        self.store.append_many(self.task, rows)
                    except TraceRefused as exc:
                        for answer in owners[:exc.index]:
                            answer.written = True
                        self._poison(owners[exc.index], exc)
                        continue  # the rest of the batch, again
                    self._busy_since = None
                    for answer in owners:
                        answer.written = True
                for answer in batch:
                    if answer.written:
                        self._after_write(answer)
                    self._buffer.popleft()
                    self._taken += 1
                left -= len(batch)
        finally:
            self._drain_lock.release()
        return True

    def _row(self, answer: _Answer) -> NewTrace:
        plan, label, decision = answer.plan, answer.label, answer.plan.decision
        return NewTrace(
            self._stored(answer.text),
            label if label is not None else self._stored(_printable(answer.raw)),
            valid=label is not None,
            origin=(Origin.AUDIT if plan.audit else Origin.LLM).value,
            # While a router answers some calls, the LLM mostly sees the hard ones: those traces
            # are no uniform draw of traffic. The audit slice is drawn at random, so it is.
            exchangeable=plan.sampled or not plan.answering,
            router_label=decision.label if decision is not None else None,
            meta=map_strings(answer.meta, self._stored) if answer.meta else answer.meta,
            served_version=plan.version if plan.answering else None,
            audit_p=plan.audit_p,
            # Only the vector of the text stored (a hash is no text to fit on).
            vector=(encode_vectors(self.embedder.name, plan.vector[None, :])[0]
                    if plan.vector is not None and label is not None
                    and self.options.store_inputs != "hash" else None))

    def _poison(self, answer: _Answer, exc: BaseException) -> None:
        answer.refused = True
        self.poisoned.append((answer, exc))
        self.ledger.add({names.COUNTER_POISONED: 1})
        self._fault("trace logging", exc)

    def _after_write(self, answer: _Answer) -> None:
        """What a written valid trace feeds: the refit counter, the breaker, the shadow score.
        Best effort: a store fault here is logged, the trace stays written."""
        plan, label = answer.plan, answer.label
        if label is None:
            return
        self.ledger.add({names.COUNTER_NEW_TRACES: 1})
        self._new_traces = True
        novelty = self._note_unseen_label(plan, label)
        decision = plan.decision
        if decision is None or plan.version is None:
            return
        agree = decision.label == label
        breaker = self.serving.breaker
        try:
            if plan.audit and breaker is not None:
                if breaker.observe(agree, plan.version).tripped:
                    self.serving.note_trip()
                    self.refit_in_background()
            elif novelty == "new" and plan.answering and breaker is not None:
                # A deferred input the LLM answered with a label absent from every trace the
                # version was fitted on: its neighbours of the same new intent are being
                # answered locally, wrongly, and audits alone (2%, falling) take thousands of
                # calls to show it (BENCHMARKS.md). It counts as one disagreement. A label only
                # in the version's calibration traces (too rare to land in its training part)
                # does not: the gate already counted those traces against it, and counting
                # each of its later calls tripped the breaker on a stationary stream.
                if breaker.observe(False, plan.version).tripped:
                    self.serving.note_trip()
                    self._refit_now = True
            elif plan.shadow:
                self.ledger.add({
                    names.counter_shadow(plan.version, "calls"): 1,
                    names.counter_shadow(plan.version, "local"): int(decision.local),
                    names.counter_shadow(plan.version, "agree"): int(decision.local and agree),
                })
        except StoreError as exc:
            self._fault("trace store", exc)

    def _note_unseen_label(self, plan: Plan, label: str
                           ) -> Literal["known", "untrained", "new"]:
        """An LLM answer naming a label the served version was never trained on is a drift
        signal: inputs of a new intent are arriving, and until a refit learns it the router
        answers some of them locally with a neighbouring label (the OOD check defers only a part
        of them, BENCHMARKS.md). Count it and ask for a refit at once (the next background
        step starts it), once per label, unless refits are explicit only. Returns "known" (the
        version was trained on the label, or the version served certifies nothing, so answers
        nothing locally), "untrained" (the label is among the traces the version was fitted on,
        only in its calibration part) or "new" (absent from all of them; a version that does not
        record its traces' labels counts every untrained label as new).

        Without a certified version there is nothing for the signal to protect, and each refit
        is one more test of the gate on largely the same traces: early in a task with many
        labels, every first answer of a label had started one (18 of the 22 refits before the
        first certified version in a demo run, whose luckiest test then served for the rest of
        the stream below its target; BENCHMARKS.md, `make demo`)."""
        served = self.serving.served(wait=False)
        router = served.router
        if router is None or not served.certified or plan.version is None \
                or label in router.labels:
            return "known"
        self.ledger.add({names.COUNTER_UNSEEN_LABELS: 1})
        if label not in self._unseen and self.refitter.policy is not refit_never:
            self._unseen.add(label)
            self._refit_now = True
        return "untrained" if label in router.info.get("trace_labels", ()) else "new"

    def _stored(self, text: str) -> str:
        """What the store keeps of a string from a call (the input, or an invalid answer that may
        quote it): redacted, or only its keyed hash (see :mod:`.privacy`)."""
        text = self._as_traced(text)
        return hash_input(text, self._input_key()) if self.options.store_inputs == "hash" \
            else text

    def _input_key(self) -> bytes:
        """The task's key for hashing stored strings (:func:`.privacy.hash_key`), read once by
        the writer. Raises StoreError when the store cannot give it."""
        if self._hash_key is None:
            self._hash_key = hash_key(self._get_store(), self.task)
        return self._hash_key

    # -- switches, shadow mode and accounting ----------------------------------------------------

    def routing_enabled(self) -> bool:
        """Whether routing is on: the store's switch if set, else the ``routing`` option (as of
        this process's last refresh)."""
        self.serving.served()
        return self.serving.routing_on()

    def set_routing(self, enabled: bool | None) -> None:
        """Switch routing on or off for every process sharing the store (None: back to each
        process's ``routing`` option). Other processes follow within ``refresh_seconds``.
        Raises StoreError when the store cannot be written."""
        self.store.set_setting(self.task, names.SETTING_ROUTING,
                               None if enabled is None else bool(enabled))
        self.serving.invalidate()
        self.serving.refresh()

    def current_audit_rate(self) -> float:
        """The audit rate of the version served now."""
        return self.serving.audit_rate(self.serving.served())

    def shadow_report(self, version: int | None = None) -> dict[str, Any]:
        """What ``version`` (default: current) would have done on calls made with routing off.

        Counts over every process sharing the store (this one's are flushed first): ``calls``
        routed in shadow mode, ``would_answer_locally`` of them, ``coverage``, and ``agreement``
        of those would-be answers with the LLM (None before any), next to the ``target`` and the
        coverage the version's certificate promises. Switch routing on with :meth:`set_routing`.
        """
        self.flush()
        store = self.store
        version = store.current_version(self.task) if version is None else version
        calls = local = agree = 0
        certified: float | None = None
        if version is not None:
            calls = store.counter(self.task, names.counter_shadow(version, "calls"))
            local = store.counter(self.task, names.counter_shadow(version, "local"))
            agree = store.counter(self.task, names.counter_shadow(version, "agree"))
            manifest = store.manifest(self.task, version)
            if manifest is not None:
                certified = certified_coverage(manifest, self.options.target)
        return {
            "task": self.task, "routing": self.routing_enabled(), "version": version,
            "calls": calls, "would_answer_locally": local,
            "coverage": local / calls if calls else None,
            "agreement": agree / local if local else None,
            "target": self.options.target, "certified_coverage": certified,
        }

    # -- fitting ---------------------------------------------------------------------------------

    def refit(self) -> Router:
        """Fit and publish a router now; see :meth:`tracer_wrap.refit.Refitter.run`.

        A background refit of this process that is running is waited for first (one refit of a
        task runs at a time), then this one fits on every trace logged by then. Raises
        GateRefused when another process is refitting the task, as ``run`` does, and while
        ``$TRACER_WRAP_DISABLE`` is set (then the store is not touched)."""
        if names.disabled():
            raise GateRefused(f"tracer_wrap is disabled (${names.ENV_DISABLE}): no refit")
        while True:
            self.refitter.runner.wait()
            try:
                return self.refitter.run()
            except GateRefused:
                if not self.refitter.runner.running:  # not ours: another process's, or no data
                    raise

    def refit_in_background(self) -> Future[Router | None] | None:
        """Start a refit off the request path; see
        :meth:`tracer_wrap.refit.Refitter.in_background`. None when none starts, also while the
        interpreter exits (a refit due then is left to the next process)."""
        try:
            return self.refitter.in_background()
        except RuntimeError:
            # concurrent.futures takes no new work once the interpreter's exit began; the exit's
            # last drain may still find a refit due.
            if not background.exiting():
                raise
            return None

    def close(self, wait: bool = True) -> None:
        """Write what is buffered and stop the refit worker (after a running refit when
        ``wait``)."""
        self.flush(timeout=5.0)
        self.refitter.runner.shutdown(wait=wait)

    def _after_fork(self) -> None:
        # A child of fork (gunicorn --preload, celery prefork) inherits locks perhaps held by a
        # parent thread that does not exist in the child: start them afresh. The buffered
        # answers are the parent's to write.
        self._store_lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._buffer = deque()
        self.stats._lock = threading.Lock()
        self.serving.after_fork()
        self.refitter.after_fork()


#: Every task of this process, so a forked child can reset their locks and refit workers.
_LIVE: weakref.WeakSet[TracedTask] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for task in list(_LIVE):
        task._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _untraceable(text: object) -> str:
    """Why ``text`` cannot be traced ("" when it can)."""
    if not isinstance(text, str):
        return f"the input is not text ({type(text).__name__})"
    if not text.strip():
        return "the input is empty"
    if len(text) > MAX_INPUT_CHARS:
        return f"the input is longer than {MAX_INPUT_CHARS} characters"
    return ""


def _printable(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text[:2000]
