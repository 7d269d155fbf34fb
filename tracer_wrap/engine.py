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
                                   ─> enough new traces? refit in the background

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
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import numpy as np

from . import names, telemetry
from ._log import fault
from .accounting import Ledger, Usage
from .errors import ConfigError, StoreError
from .labels import LabelSet
from .model.embedder import Embedder, make_embedder
from .model.router import Decision, Router
from .options import TaskOptions
from .privacy import hash_input
from .refit import Refitter
from .serving import Served, Serving
from .store import Origin, Store, open_store
from .versions import certified_coverage

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import TaskKwargs

__all__ = ["MAX_INPUT_CHARS", "Plan", "Reply", "Stats", "TracedTask"]

R = TypeVar("R")

#: Longest input tracer_wrap embeds; longer inputs go to the LLM untouched (the embedder truncates
#: long inputs anyway, so a local answer for them would rest on a part of the text).
MAX_INPUT_CHARS = 20_000


@dataclass
class Stats:
    """Counts of this process's calls of one task (the store's counters sum every process).

    ``calls`` reached tracer_wrap; ``local`` were answered locally; ``llm`` LLM answers were
    logged, ``audits`` of them random audit samples and ``invalid`` matching no label; ``skipped``
    inputs were not traceable (not text, empty or too long); ``outliers`` were deferred as out of
    distribution and ``breaker`` because the drift breaker tripped; ``errors`` are tracer_wrap
    faults (the call went to the LLM).
    """

    calls: int = 0
    local: int = 0
    llm: int = 0
    audits: int = 0
    invalid: int = 0
    skipped: int = 0
    outliers: int = 0
    breaker: int = 0
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
    tracer_wrap is disabled or the input is not traceable). ``audit``: a random audit sample of a
    call the router would have answered. ``answering``: the served version answers some calls
    locally now, so an LLM answer of this plan saw a biased share of traffic and must not
    calibrate (unless it is an audit sample). ``shadow``: routing is off; the decision is scored,
    never used.
    """

    text: str | None
    version: int | None = None
    decision: Decision | None = None
    local: bool = False
    traced: bool = True
    audit: bool = False
    answering: bool = False
    shadow: bool = False
    reason: str = ""


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
    ``gen_ai.system``, ``gen_ai.request.model``, ...).
    """

    label_of: Callable[[R], object] = _identity
    build: Callable[[str], R] | None = _identity
    usage_of: Callable[[R], Usage | None] | None = None
    later: Callable[[R, Callable[[object, Usage | None], None]], R] | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


_LOCAL_FAILED = object()


class TracedTask:
    """One classification task: its traces, the version it serves and the path of every call.

    Options are those of :class:`~tracer_wrap.options.TaskOptions`, given as keyword arguments
    (or as ``options=``); those not given come from ``TRACER_WRAP_*`` variables, then
    ``tracer_wrap.toml``, then the defaults. Raises ConfigError on a bad option. The store and
    the embedder open on first use, so a broken disk or model fails open at call time.
    """

    def __init__(self, task: str, *, options: TaskOptions | None = None,
                 **kwargs: Unpack[TaskKwargs]) -> None:
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(f"task must be a non-empty string, got {task!r}")
        if options is not None and kwargs:
            options = options.replace(**kwargs)
        self.task = task
        self.options = options if options is not None else TaskOptions.resolve(task, kwargs)
        self.label_set = LabelSet(self.options.labels)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._embedder: Embedder | None = None
        self._rng = self.options.rng or random.Random()
        self.serving = Serving(task, self.options, self._get_store, self._get_embedder)
        self.ledger = Ledger(self._get_store, task, self.options.price)
        self.refitter = Refitter(task, self.options, store=self._get_store,
                                 embedder=self._get_embedder,
                                 breaker=lambda: self.serving.breaker,
                                 published=self.serving.invalidate, on_fault=self._fault)
        _LIVE.add(self)

    # -- building blocks, opened on first use ------------------------------------------------

    def _get_store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.options.store)
        return self._store

    def _get_embedder(self) -> Embedder:
        if self._embedder is None:
            with self._lock:
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
        """
        reply = reply or Reply()
        span = telemetry.start_call(self.task, self.options, reply.attributes)
        plan = self._plan(text, None)
        span.planned(plan)
        if plan.local and reply.build is not None:
            local = self._answer(plan, reply.build, span)
            if local is not _LOCAL_FAILED:
                return cast(R, local)
        try:
            result = llm()
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
        return self._after_llm(plan, result, reply, span)

    async def acall(self, text: object, llm: Callable[[], Awaitable[R]],
                    reply: Reply[R] | None = None) -> R:
        """:meth:`call` for a coroutine ``llm``; the only difference is the ``await``."""
        reply = reply or Reply()
        span = telemetry.start_call(self.task, self.options, reply.attributes)
        plan = self._plan(text, None)
        span.planned(plan)
        if plan.local and reply.build is not None:
            local = self._answer(plan, reply.build, span)
            if local is not _LOCAL_FAILED:
                return cast(R, local)
        try:
            result = await llm()
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
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
        """Log the LLM's answer ``raw`` to a planned call; return its label (None: invalid or not
        traced).

        ``plan`` None records an answer no plan was made for (the sidecar's traces without a
        plan token): it may calibrate only while no version answers locally. ``text`` is the
        input when the plan does not carry it (route by embedding). An audit sample feeds the
        drift breaker (a trip schedules a refit); in shadow mode the router's would-be answer is
        scored. ``meta`` is stored with the trace; ``span`` (the call's telemetry) is told the
        answer and ended. Never raises: a fault is logged and the caller still has the LLM's
        answer.
        """
        if plan is None:
            plan = self._unplanned()
        counts = {names.COUNTER_LLM: 1, names.COUNTER_AUDITS: int(plan.audit)}
        if usage is not None:
            counts.update({names.COUNTER_INPUT_TOKENS: usage.input_tokens,
                           names.COUNTER_OUTPUT_TOKENS: usage.output_tokens,
                           names.COUNTER_USAGE_CALLS: 1})
        self.stats.add(llm=1, audits=int(plan.audit))
        label: str | None = None
        try:
            label = self.label_set.normalise(raw)
            if label is None:
                counts[names.COUNTER_INVALID] = 1
                self.stats.add(invalid=1)
            self.ledger.add(counts)
            if span is not None:
                span.answered_by_llm(label, usage)
            text = plan.text if text is None else text
            if not plan.traced or text is None:
                return label
            decision = plan.decision
            self.store.append(
                self.task, self._stored_input(text),
                label if label is not None else _printable(raw),
                valid=label is not None,
                origin=Origin.AUDIT if plan.audit else Origin.LLM,
                # While a router answers some calls, the LLM only sees the hard ones: those traces
                # must not calibrate. Audit samples are drawn at random, so they may.
                exchangeable=plan.audit or not plan.answering,
                router_label=decision.label if decision is not None else None,
                meta=meta,
            )
            if label is None:
                return None
            if decision is not None and plan.version is not None:
                agree = decision.label == label
                breaker = self.serving.breaker
                if plan.audit and breaker is not None:
                    if breaker.observe(agree, plan.version).tripped:
                        self.serving.invalidate()
                        self.refit_in_background()
                elif plan.shadow:
                    self.ledger.add({
                        names.counter_shadow(plan.version, "calls"): 1,
                        names.counter_shadow(plan.version, "local"): int(decision.local),
                        names.counter_shadow(plan.version, "agree"): int(decision.local and agree),
                    })
            fresh = self.store.incr(self.task, names.COUNTER_NEW_TRACES)
            if self.refitter.due(fresh):
                self.refit_in_background()
            return label
        except Exception as exc:
            self._fault("trace logging", exc)
            return label
        finally:
            if span is not None:
                span.end()

    # -- the steps ---------------------------------------------------------------------------

    def _plan(self, text: object, vector: np.ndarray | None) -> Plan:
        """Embed and route one input; never raises (a fault plans an LLM call)."""
        return self._plan_many(None if text is None else [text],
                               None if vector is None else np.asarray(vector)[None, :], 1)[0]

    def _plan_many(self, texts: Sequence[object] | None, vectors: np.ndarray | None,
                   n: int) -> list[Plan]:
        self.stats.add(calls=n)
        self.ledger.add({names.COUNTER_CALLS: n})
        if names.disabled():
            return [Plan(None, traced=False, reason="tracer_wrap is disabled"
                         f" (${names.ENV_DISABLE})")] * n
        plans: list[Plan | None] = [None] * n
        rows: list[int] = []
        for i in range(n):
            text = texts[i] if texts is not None else None
            why = _untraceable(text) if vectors is None or text is not None else ""
            if why:
                self.stats.add(skipped=1)
                plans[i] = Plan(None, traced=False, reason=why)
            else:
                rows.append(i)
        if rows:
            for i, plan in zip(rows, self._decide(
                    [texts[i] for i in rows] if texts is not None else None,  # type: ignore[misc]
                    vectors[rows] if vectors is not None else None)):
                plans[i] = plan
        return plans  # type: ignore[return-value]

    def _decide(self, texts: list[str] | None, vectors: np.ndarray | None) -> list[Plan]:
        n = len(texts) if texts is not None else len(vectors)  # type: ignore[arg-type]
        inputs: list[str | None] = list(texts) if texts is not None else [None] * n
        try:
            served = self.serving.served()
            if served.router is None:
                return [Plan(t, served.version, reason=served.reason) for t in inputs]
            if vectors is None:
                assert texts is not None
                vectors = (self.embedder.embed(texts) if n > 1
                           else self.embedder.embed_one(texts[0])[None, :])
            routing = self.serving.routing_on()
            tripped = self.serving.tripped()
            answering = served.certified and routing and not tripped
            return [self._veto(text, served, decision, outlier, routing, tripped, answering)
                    for text, (decision, outlier) in zip(
                        inputs, self.serving.decide(served, texts, vectors))]
        except Exception as exc:
            self._fault("routing", exc)
            why = f"tracer_wrap fault while routing ({type(exc).__name__}); see the log"
            return [Plan(t, reason=why) for t in inputs]

    def _veto(self, text: str | None, served: Served, decision: Decision, outlier: bool,
              routing: bool, tripped: bool, answering: bool) -> Plan:
        """The plan of one routed input: local unless a veto or an audit draw sends it on."""
        local = audit = False
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
        elif self._rng.random() < self.serving.audit_rate(served):
            audit, reason = True, "audit sample"
        else:
            local, reason = True, ""
        return Plan(text, served.version, decision, local=local, audit=audit,
                    answering=answering, shadow=not routing, reason=reason)

    def _answer(self, plan: Plan, build: Callable[[str], Any], span: telemetry.CallSpan) -> Any:
        """The local answer of a plan, or _LOCAL_FAILED (logged) when it cannot be built."""
        assert plan.decision is not None and plan.decision.label is not None
        try:
            result = build(plan.decision.label)
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
        """Trace the LLM's result (now, or when its stream ends); return what the caller gets."""
        try:
            if reply.later is not None:
                return reply.later(result, lambda raw, usage: self._record_quietly(
                    plan, raw, usage, span))
            raw = reply.label_of(result)
            usage = reply.usage_of(result) if reply.usage_of is not None else None
        except Exception as exc:
            self._fault("trace logging", exc)
            span.end()
            return result
        self.record(plan, raw, usage=usage, span=span)
        return result

    def _record_quietly(self, plan: Plan, raw: object, usage: Usage | None,
                        span: telemetry.CallSpan) -> None:
        try:
            self.record(plan, raw, usage=usage, span=span)
        except Exception as exc:  # a stream's end must never raise into the caller's loop
            self._fault("trace logging", exc)

    def _unplanned(self) -> Plan:
        """A plan for an LLM answer no plan was made for."""
        try:
            served = self.serving.served()
            answering = (served.certified and self.serving.routing_on()
                         and not self.serving.tripped())
            return Plan(None, version=served.version, answering=answering)
        except Exception as exc:
            self._fault("routing", exc)
            return Plan(None, answering=True)  # unknown: never let it calibrate

    def _stored_input(self, text: str) -> str:
        """What the store keeps of ``text``: redacted, or only its hash (see :mod:`.privacy`)."""
        if self.options.redact is not None:
            text = self.options.redact(text)
            if not isinstance(text, str):
                raise ConfigError(f"redact must return a string, got {type(text).__name__}")
        return hash_input(text) if self.options.store_inputs == "hash" else text

    def _fault(self, step: str, exc: BaseException) -> None:
        self.stats.add(errors=1)
        # A broken store fails every step that touches it (routing reads the version, logging
        # writes the trace): report it as one fault, so a storm of calls logs it once.
        fault("trace store" if isinstance(exc, StoreError) else step, exc)

    # -- switches, shadow mode and accounting ----------------------------------------------------

    def routing_enabled(self) -> bool:
        """Whether routing is on: the store's switch if set, else the ``routing`` option.
        Re-read from the store at most every ``refresh_seconds``."""
        return self.serving.routing_on()

    def set_routing(self, enabled: bool | None) -> None:
        """Switch routing on or off for every process sharing the store (None: back to each
        process's ``routing`` option). Other processes follow within ``refresh_seconds``."""
        self.store.set_setting(self.task, names.SETTING_ROUTING,
                               None if enabled is None else bool(enabled))
        self.serving.invalidate()

    def current_audit_rate(self) -> float:
        """The audit rate of the version served now."""
        return self.serving.audit_rate(self.serving.served())

    def shadow_report(self, version: int | None = None) -> dict[str, Any]:
        """What ``version`` (default: current) would have done on calls made with routing off.

        Counts over every process sharing the store (flushed ones): ``calls`` routed in shadow
        mode, ``would_answer_locally`` of them, ``coverage``, and ``agreement`` of those would-be
        answers with the LLM (None before any), next to the ``target`` and the coverage the
        version's certificate promises. Switch routing on with :meth:`set_routing`.
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

    def flush(self) -> bool:
        """Write this process's pending counters to the store now (they are otherwise written
        in the background every fraction of a second). True when nothing is left pending."""
        return self.ledger.flush()

    # -- fitting ---------------------------------------------------------------------------------

    def refit(self) -> Router:
        """Fit and publish a router now; see :meth:`tracer_wrap.refit.Refitter.run`."""
        return self.refitter.run()

    def refit_in_background(self) -> Future[Router | None] | None:
        """Start a refit off the request path; see
        :meth:`tracer_wrap.refit.Refitter.in_background`."""
        return self.refitter.in_background()

    def close(self, wait: bool = True) -> None:
        """Flush counters and stop the refit worker (after a running refit when ``wait``)."""
        self.flush()
        self.refitter.runner.shutdown(wait=wait)

    def _after_fork(self) -> None:
        # A child of fork (gunicorn --preload, celery prefork) inherits locks perhaps held by a
        # parent thread that does not exist in the child: start them afresh.
        self._lock = threading.Lock()
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
