"""The whole path of a traced call, in one place.

    text ──embed──> router ──handled?──yes──> local answer (the LLM is not called)
                              │
                              no (or audit sample, or any tracer_wrap error)
                              ▼
                       the LLM, as if tracer_wrap were not there
                              │
                              ▼
          normalise its label ─> log the trace ─> enough new traces? refit in the background

:class:`TracedTask` holds one task's state (store, embedder, current router, statistics) and runs
that path for the decorator (:mod:`tracer_wrap.decorator`) and the wrapped SDK clients. Every step
of tracer_wrap's own is fail-open: an error is logged (once per storm, see :mod:`._log`) and the
call goes to the LLM. Errors raised by the LLM call itself propagate unchanged and log no trace.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from . import _settings
from ._log import fault, logger
from .embedder import Embedder
from .errors import ConfigError, GateRefused, RouterLoadError
from .fit import DEFAULT_TARGETS, fit_router
from .labels import LabelSet
from .router import Decision, Router
from .store import Origin, TraceStore
from .versions import load_version, publish

__all__ = ["Stats", "TracedTask"]

R = TypeVar("R")

#: Longest input tracer_wrap embeds; longer inputs go to the LLM untouched (the embedder truncates
#: long inputs anyway, so a local answer for them would rest on a part of the text).
MAX_INPUT_CHARS = 20_000

#: A refit holding its claim longer than this is presumed dead and its claim lapses.
REFIT_CLAIM_SECONDS = 15 * 60


@dataclass
class Stats:
    """Counts of this process's calls. ``handled`` were answered locally, ``deferred`` went to the
    LLM (including ``audited`` samples), ``invalid`` LLM outputs matched no label, ``skipped`` inputs
    were not traceable (not text, empty or too long) and ``errors`` are tracer_wrap faults."""

    calls: int = 0
    handled: int = 0
    deferred: int = 0
    audited: int = 0
    invalid: int = 0
    skipped: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass(frozen=True)
class _Plan:
    """What to do with one call: answer locally, or ask the LLM (and how to log its answer)."""

    text: str | None
    decision: Decision | None = None
    audit: bool = False

    @property
    def local(self) -> bool:
        return self.decision is not None and self.decision.handled and not self.audit


class TracedTask:
    """One classification task: its traces, its router and the path of every call.

    Parameters
    ----------
    task:
        Name of the task; traces and routers live under this name in the store.
    labels:
        The label set. LLM outputs are matched against it (case, spaces, quotes); an output
        outside it is logged as invalid and never trained on. ``None`` accepts any output.
    target:
        Agreement with the LLM that the router must certify on what it answers, in (0, 1].
    delta:
        Allowed probability that the certificate is wrong (over the calibration draw).
    store:
        A :class:`TraceStore` or a directory path (default ``$TRACER_WRAP_STORE`` or
        ``./.tracer_wrap``).
    embedder:
        An :class:`Embedder` (default all-MiniLM-L6-v2, loaded on first use).
    min_traces:
        No router is fitted before this many valid traces.
    refit_every:
        Fit again in the background after this many new valid traces (``None``: only on
        :meth:`refit`).
    routing:
        ``False`` runs in shadow mode: every call goes to the LLM; traces are still logged and
        the router still fitted and scored.
    audit_rate:
        Share of calls the router would answer that still go to the LLM, so calibration keeps
        seeing unbiased traffic; the caller gets the LLM's answer.
    """

    def __init__(
        self,
        task: str,
        *,
        labels: Iterable[str] | None = None,
        target: float = 0.95,
        delta: float = 0.05,
        store: TraceStore | str | None = None,
        embedder: Embedder | None = None,
        min_traces: int = 200,
        refit_every: int | None = 500,
        routing: bool = True,
        audit_rate: float = 0.02,
        targets: Sequence[float] = DEFAULT_TARGETS,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(f"task must be a non-empty string, got {task!r}")
        for name, value, low, high in (("target", target, 0.0, 1.0), ("delta", delta, 0.0, 1.0),
                                       ("audit_rate", audit_rate, -1e-12, 1.0)):
            if not isinstance(value, (int, float)) or not low < value <= high:
                raise ConfigError(f"{name} must be in ({low:g}, {high:g}], got {value!r}")
        if not isinstance(min_traces, int) or min_traces < 10:
            raise ConfigError(f"min_traces must be an integer >= 10, got {min_traces!r}")
        if refit_every is not None and (not isinstance(refit_every, int) or refit_every < 1):
            raise ConfigError(f"refit_every must be a positive integer or None, got {refit_every!r}")
        self.task = task
        self.label_set = LabelSet(labels)
        self.target = float(target)
        self.delta = float(delta)
        self.targets = tuple(sorted({*targets, self.target}))
        self.min_traces = min_traces
        self.refit_every = refit_every
        self.routing = routing
        self.audit_rate = float(audit_rate)
        self.stats = Stats()
        self._store_arg = store
        self._store: TraceStore | None = store if isinstance(store, TraceStore) else None
        self._embedder = embedder
        self._rng = rng or random.Random()
        self._router: Router | None = None
        self._router_version: int | None = None
        self._bad_version: int | None = None
        self._lock = threading.Lock()
        self._refit_pool: ThreadPoolExecutor | None = None
        self._refit_future: Future[Router | None] | None = None

    # -- building blocks, created on first use so a broken disk or model fails open -------------

    @property
    def store(self) -> TraceStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    arg = self._store_arg
                    self._store = TraceStore(None if arg is None else str(arg))
        return self._store

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = Embedder.default()
        return self._embedder

    @property
    def router(self) -> Router | None:
        """The router this process serves: the store's current version, reloaded when it changes.

        A version that fails to load (corrupt, tampered) is refused once and logged; calls go to
        the LLM until a new version is published.
        """
        version = self.store.current_version(self.task)
        if version != self._router_version and version != self._bad_version:
            with self._lock:
                if version != self._router_version:
                    self._load_version(version)
        return self._router

    def _load_version(self, version: int | None) -> None:
        if version is None:
            self._router, self._router_version = None, None
            return
        try:
            router = load_version(self.store, self.task, version)
            router.target = self.target
        except RouterLoadError as exc:
            self._bad_version = version
            fault("router load", exc)
            return
        self._router, self._router_version = router, version

    # -- the path of a call ----------------------------------------------------------------------

    def call(self, text: object, llm: Callable[[], R], *,
             label_of: Callable[[R], object] = lambda r: r,
             answer: Callable[[Decision], R] = lambda d: d.label) -> R:  # type: ignore[assignment,return-value]
        """Answer ``text`` locally if the router may, else return ``llm()`` and log its label.

        ``label_of`` turns the LLM's result into a label string; ``answer`` turns a local decision
        into the same type of result the LLM call returns.
        """
        plan = self.plan(text)
        if plan.local:
            try:
                return answer(plan.decision)  # type: ignore[arg-type]
            except Exception as exc:
                self._fault("local answer", exc)
        result = llm()
        self.record(plan, result, label_of)
        return result

    async def acall(self, text: object, llm: Callable[[], Awaitable[R]], *,
                    label_of: Callable[[R], object] = lambda r: r,
                    answer: Callable[[Decision], R] = lambda d: d.label) -> R:  # type: ignore[assignment,return-value]
        """:meth:`call` for a coroutine ``llm``; the only difference is the ``await``."""
        plan = self.plan(text)
        if plan.local:
            try:
                return answer(plan.decision)  # type: ignore[arg-type]
            except Exception as exc:
                self._fault("local answer", exc)
        result = await llm()
        self.record(plan, result, label_of)
        return result

    def plan(self, text: object) -> _Plan:
        """Embed and route ``text``; never raises (a fault plans an LLM call)."""
        self.stats.add(calls=1)
        if _settings.disabled():
            return _Plan(None)
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_INPUT_CHARS:
            self.stats.add(skipped=1, deferred=1)
            return _Plan(None)
        try:
            decision = self.route(text)
        except Exception as exc:
            self._fault("routing", exc)
            self.stats.add(deferred=1)
            return _Plan(text)
        if decision is not None and decision.handled and self.routing:
            if self.audit_rate and self._rng.random() < self.audit_rate:
                self.stats.add(deferred=1, audited=1)
                return _Plan(text, decision, audit=True)
            self.stats.add(handled=1)
            return _Plan(text, decision)
        self.stats.add(deferred=1)
        return _Plan(text, decision)

    def route(self, text: str) -> Decision | None:
        """The router's decision for ``text`` (``None`` before the first router is fitted)."""
        router = self.router
        if router is None:
            return None
        return router.route_vector(self.embedder.embed_one(text))

    def record(self, plan: _Plan, result: Any, label_of: Callable[[Any], object]) -> str | None:
        """Log the LLM's answer to a planned call; return the normalised label (None: invalid).

        Never raises: a fault is logged and the caller still gets the LLM's result.
        """
        if plan.text is None:
            return None
        try:
            raw = label_of(result)
            label = self.label_set.normalise(raw)
            serving = self.routing and self._router is not None and self._router.threshold is not None
            self.store.append(
                self.task, plan.text, label if label is not None else _printable(raw),
                valid=label is not None,
                origin=Origin.AUDIT if plan.audit else Origin.LLM,
                # While a router answers some calls, the LLM only sees the hard ones: those traces
                # must not calibrate. Audit samples are drawn at random, so they may.
                exchangeable=plan.audit or not serving,
                router_label=plan.decision.label if plan.decision is not None else None,
            )
            if label is None:
                self.stats.add(invalid=1)
                return None
            if self.refit_every is not None:
                fresh = self.store.incr(self.task, "new_valid_traces")
                if fresh >= self.refit_every and self.store.count(self.task) >= self.min_traces:
                    self.refit_in_background()
            return label
        except Exception as exc:
            self._fault("trace logging", exc)
            return None

    # -- fitting ---------------------------------------------------------------------------------

    def refit(self) -> Router:
        """Fit a router on every valid trace of the task now, publish it, and return it.

        The new version replaces the current one only if it certifies at least the same coverage
        at the served target. Raises GateRefused when there are fewer than ``min_traces`` valid
        traces; only one refit of a task runs at a time across processes (a second caller gets
        GateRefused rather than waiting).
        """
        store = self.store
        if not store.claim(self.task, "refit", ttl=REFIT_CLAIM_SECONDS):
            raise GateRefused(f"a refit of {self.task!r} is already running")
        try:
            traces = store.traces(self.task, valid_only=True)
            if self.label_set.fixed:
                traces = [t for t in traces if self.label_set.normalise(t.teacher) is not None]
            if len(traces) < self.min_traces:
                raise GateRefused(f"{len(traces)} valid traces of {self.task!r};"
                                  f" at least {self.min_traces} are needed to fit")
            store.incr(self.task, "new_valid_traces", -store.counter(self.task, "new_valid_traces"))
            vectors = self.embedder.embed([t.input for t in traces])
            router = fit_router(
                vectors, [t.teacher for t in traces], targets=self.targets,
                serve_target=self.target, delta=self.delta,
                calibration_eligible=np.array([t.exchangeable for t in traces]),
                info={"task": self.task, "embedder": self.embedder.name},
            )
            publish(store, self.task, router)
            self._router_version = -1  # force a reload from the store on the next call
            return router
        finally:
            store.release(self.task, "refit")

    def refit_in_background(self) -> Future[Router | None] | None:
        """Start :meth:`refit` in a worker thread unless one is running; calls keep being served."""
        with self._lock:
            if self._refit_future is not None and not self._refit_future.done():
                return None
            if self._refit_pool is None:
                self._refit_pool = ThreadPoolExecutor(1, thread_name_prefix="tracer_wrap-refit")
            self._refit_future = self._refit_pool.submit(self._quiet_refit)
            return self._refit_future

    def _quiet_refit(self) -> Router | None:
        try:
            return self.refit()
        except GateRefused as exc:
            logger.info("tracer_wrap refit of %r skipped: %s", self.task, exc)
        except Exception as exc:
            self._fault("refit", exc)
        return None

    def _fault(self, step: str, exc: BaseException) -> None:
        self.stats.add(errors=1)
        fault(step, exc)


def _printable(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text[:2000]

