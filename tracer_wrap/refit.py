"""When to refit a task, where the fit runs, and the refit itself.

Policies decide *when*: :func:`refit_after_traces` (every N new valid traces),
:func:`refit_after_delay` (some time after the last refit, once there is something new) and
:data:`refit_never`. They compose like tenacity's stop conditions::

    policy = refit_after_traces(500) | refit_after_delay(3600)   # whichever comes first
    policy = refit_after_traces(50) & refit_after_delay(600)     # both must hold

Executors decide *where*: ``"inline"`` (in the calling thread, reproducible: used by
``tracer-wrap simulate``), ``"thread"`` (a worker thread, the default) or ``"process"`` (the fit,
which is the CPU-heavy part, runs in a separate process started with ``spawn``). Whatever the
executor, a refit takes the store's atomic ``claim`` first, so one refit of a task runs at a time
across threads and processes, and a refit killed mid-way loses its claim when the claim's
time-to-live runs out.

:class:`Refitter` is the refit of one task: read the valid traces, embed them, fit and certify
(:func:`~tracer_wrap.model.fit.fit_router`), publish by the publish rule
(:func:`~tracer_wrap.versions.publish`) and apply retention.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from . import names
from ._log import fault, logger
from .errors import ConfigError, GateRefused, RouterLoadError
from .labels import LabelSet
from .model.fit import fit_router
from .model.ood import OODScorer, fit_ood
from .model.router import Router
from .versions import load_version, publish

if TYPE_CHECKING:
    from .breaker import DriftBreaker
    from .model.embedder import Embedder
    from .options import TaskOptions
    from .store import Store, Trace

__all__ = [
    "ExecutorKind",
    "Refitter",
    "RefitPolicy",
    "RefitRunner",
    "RefitState",
    "calibration_weights",
    "refit_after_delay",
    "refit_after_traces",
    "refit_never",
]

T = TypeVar("T")
ExecutorKind = Literal["inline", "thread", "process"]


@dataclass(frozen=True)
class RefitState:
    """What a policy looks at: valid traces logged since the last refit started, seconds since
    it started (``inf`` when the task was never refitted) and the number of distinct traces."""

    new_traces: int
    seconds_since_refit: float
    total_traces: int


class RefitPolicy(ABC):
    """Says whether a task should be refitted now. Combine with ``|`` (any) and ``&`` (all)."""

    @abstractmethod
    def __call__(self, state: RefitState) -> bool: ...

    def __or__(self, other: RefitPolicy) -> RefitPolicy:
        return _Any((self, other))

    def __and__(self, other: RefitPolicy) -> RefitPolicy:
        return _All((self, other))


@dataclass(frozen=True)
class _Any(RefitPolicy):
    policies: tuple[RefitPolicy, ...]

    def __call__(self, state: RefitState) -> bool:
        return any(p(state) for p in self.policies)


@dataclass(frozen=True)
class _All(RefitPolicy):
    policies: tuple[RefitPolicy, ...]

    def __call__(self, state: RefitState) -> bool:
        return all(p(state) for p in self.policies)


@dataclass(frozen=True)
class refit_after_traces(RefitPolicy):  # noqa: N801 - reads like tenacity's stop_after_attempt
    """Refit once ``n`` new valid traces were logged since the last refit."""

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"refit_after_traces needs a positive integer, got {self.n!r}")

    def __call__(self, state: RefitState) -> bool:
        return state.new_traces >= self.n


@dataclass(frozen=True)
class refit_after_delay(RefitPolicy):  # noqa: N801
    """Refit ``seconds`` after the last refit started, if at least ``min_new`` traces are new."""

    seconds: float
    min_new: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, (int, float)) or self.seconds <= 0:
            raise ConfigError(f"refit_after_delay needs a positive delay, got {self.seconds!r}")

    def __call__(self, state: RefitState) -> bool:
        return state.new_traces >= self.min_new and state.seconds_since_refit >= self.seconds


@dataclass(frozen=True)
class _Never(RefitPolicy):
    def __call__(self, state: RefitState) -> bool:
        return False


#: Only explicit ``refit()`` calls fit.
refit_never: RefitPolicy = _Never()


class RefitRunner:
    """Runs refit jobs off the request path, at most one per runner at a time.

    ``kind`` is ``"inline"``, ``"thread"`` or ``"process"``. :meth:`submit` runs ``job`` (which
    coordinates the refit: claim, read traces, publish) in the calling thread for ``"inline"``,
    else in one worker thread; it returns None when a job of this runner is still running.
    :meth:`run_fit` runs the CPU-heavy ``fn(**kwargs)`` in the job's own thread, or in a spawned
    worker process for ``"process"``; ``fn`` and its arguments must then be picklable. A worker
    process that dies (killed, out of memory) raises BrokenProcessPool in the job and is replaced
    on the next fit.
    """

    def __init__(self, kind: ExecutorKind = "thread") -> None:
        if kind not in ("inline", "thread", "process"):
            raise ConfigError(f"refit executor must be 'inline', 'thread' or 'process',"
                              f" got {kind!r}")
        self.kind: ExecutorKind = kind
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._processes: ProcessPoolExecutor | None = None
        self._future: Future[Any] | None = None

    def submit(self, job: Callable[[], T]) -> Future[T] | None:
        with self._lock:
            if self._future is not None and not self._future.done():
                return None
            if self.kind == "inline":
                future: Future[T] = Future()
                self._future = future
            else:
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(1, thread_name_prefix="tracer_wrap-refit")
                self._future = self._threads.submit(job)
                return self._future
        try:
            future.set_result(job())
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def run_fit(self, fn: Callable[..., T], **kwargs: Any) -> T:
        if self.kind != "process":
            return fn(**kwargs)
        with self._lock:
            if self._processes is None:
                self._processes = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"))
            pool = self._processes
        try:
            return pool.submit(fn, **kwargs).result()
        except BrokenProcessPool:
            with self._lock:
                if self._processes is pool:
                    self._processes = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    @property
    def running(self) -> bool:
        with self._lock:
            return self._future is not None and not self._future.done()

    def worker_pids(self) -> list[int]:
        """Process ids of the fit worker processes alive now (empty unless ``"process"``)."""
        with self._lock:
            pool = self._processes
        # ProcessPoolExecutor keeps no public list of its workers; multiprocessing does.
        return [p.pid for p in multiprocessing.active_children()
                if pool is not None and p.pid is not None
                and p.pid in getattr(pool, "_processes", {})]

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker thread and process (after the running job when ``wait``)."""
        with self._lock:
            threads, processes = self._threads, self._processes
            self._threads = self._processes = None
        if threads is not None:
            threads.shutdown(wait=wait)
        if processes is not None:
            processes.shutdown(wait=wait)



def calibration_weights(traces: list[Trace], after_seq: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Each trace's weight in the gate's stratified test (:mod:`tracer_wrap.model.gate`), and
    whether it was drawn as plain traffic (weight 1, not an audit sample).

    1 for a trace logged while no version answered locally; for the traces of a period where
    version ``v`` answered, 1 for its audit samples and its audit rate ``a_v`` for the inputs it
    deferred (every one of which reached the LLM). ``a_v`` is the smallest audit probability
    recorded with ``v``'s audit samples (a smaller stake is always valid); a period with no audit
    sample, traces that recorded no version, and traces logged before the last breaker trip
    (``seq <= after_seq``) weigh 0: they train but do not calibrate. A period is kept or dropped
    as a whole, never trace by trace, as the test requires.
    """
    from .store import Origin  # the store package imports options, which imports this module

    rates: dict[int, float] = {}
    for t in traces:
        if t.origin == Origin.AUDIT.value and t.served_version is not None and t.audit_p:
            rates[t.served_version] = min(rates.get(t.served_version, 1.0), float(t.audit_p))
    weights = np.zeros(len(traces))
    complete = np.zeros(len(traces), dtype=bool)
    for i, t in enumerate(traces):
        rate = rates.get(t.served_version) if t.served_version is not None else None
        if t.seq <= after_seq:
            continue
        if t.origin == Origin.AUDIT.value:
            weights[i] = 0.0 if rate is None or not t.audit_p else min(1.0, rate / t.audit_p)
        elif t.exchangeable:
            weights[i] = 1.0
            complete[i] = True
        elif rate is not None:
            weights[i] = rate
    return weights, complete


class Refitter:
    """The refit of one task: when it is due, and the refit itself (see the module docstring).

    ``store``, ``embedder`` and ``breaker`` are getters; ``embed(texts)`` embeds the traces (as
    bulk work that never holds a call's embedding for long); ``flush()`` writes this process's
    buffered traces first; ``published(version, router, ood)`` is called after this process made
    a new version current (so it serves it at once); ``on_fault(step, exc)`` reports the failures
    of background refits and of retention. Refits run on a :class:`RefitRunner` of
    ``options.refit_executor``.
    """

    def __init__(self, task: str, options: TaskOptions, *, store: Callable[[], Store],
                 embedder: Callable[[], Embedder], embed: Callable[[list[str]], np.ndarray],
                 breaker: Callable[[], DriftBreaker | None],
                 flush: Callable[[], object],
                 published: Callable[[int, Router, OODScorer | None], None],
                 on_fault: Callable[[str, BaseException], None] = fault) -> None:
        self.task = task
        self.options = options
        self._store = store
        self._embedder = embedder
        self._embed = embed
        self._breaker = breaker
        self._flush = flush
        self._published = published
        self._fault = on_fault
        self.label_set = LabelSet(options.labels)
        self.policy: RefitPolicy = options.refit_policy or (
            refit_never if options.refit_every is None else refit_after_traces(options.refit_every))
        self.runner = RefitRunner(options.refit_executor)

    def due(self, new_traces: int) -> bool:
        """Whether the policy asks for a refit now, ``new_traces`` being the valid traces logged
        since the last refit started (fleet-wide). False while this process runs one."""
        if self.policy is refit_never or self.runner.running:
            return False
        store = self._store()
        total = store.count(self.task)
        if total < self.options.min_traces:
            return False
        last = store.get_setting(self.task, names.SETTING_LAST_REFIT)
        since = math.inf if last is None else self.options.clock() - float(last)
        return self.policy(RefitState(new_traces, since, total))

    def run(self) -> Router:
        """Fit a router on every valid trace of the task now, publish it, and return it.

        The new version becomes current under the publish rule of :mod:`tracer_wrap.versions`:
        the new fit and the version served now (unless the drift breaker tripped it) are
        certified on the same fresh calibration traces at ``delta / 2`` each and the one that
        certifies more coverage is published; with no rival the fit is certified at ``delta``.
        Traces logged before the last trip train but do not calibrate. Only one refit of a task
        runs at a time across processes. Raises GateRefused when a refit is already running
        elsewhere, when there are fewer than ``min_traces`` valid traces, or for an audit-only task
        (``store_inputs="hash"``); StoreError / EmbedderError when the store or the embedder
        fails. A refit that dies keeps its claim until ``refit_claim_ttl`` runs out.
        """
        options = self.options
        if options.store_inputs == "hash":
            raise GateRefused(f"task {self.task!r} stores only hashes of its inputs"
                              " (store_inputs='hash'); it is audit-only and cannot be fitted")
        self._flush()
        store = self._store()
        if not store.claim(self.task, names.CLAIM_REFIT, ttl=options.refit_claim_ttl):
            raise GateRefused(f"a refit of {self.task!r} is already running")
        try:
            started = options.clock()
            store.set_setting(self.task, names.SETTING_LAST_REFIT, started)
            traces = store.traces(self.task, valid_only=True)
            if self.label_set.fixed:
                traces = [t for t in traces if self.label_set.normalise(t.teacher) is not None]
            if len(traces) < options.min_traces:
                raise GateRefused(f"{len(traces)} valid traces of {self.task!r};"
                                  f" at least {options.min_traces} are needed to fit")
            store.incr(self.task, names.COUNTER_NEW_TRACES,
                       -store.counter(self.task, names.COUNTER_NEW_TRACES))
            breaker = self._breaker()
            tripped = breaker is not None and breaker.last_trip() is not None
            after_seq = int(store.get_setting(self.task, names.SETTING_CALIBRATE_AFTER, 0) or 0)
            embedder = self._embedder()
            texts = [t.input for t in traces]
            vectors = self._embed(texts)
            labels = [t.teacher for t in traces]
            seqs = np.array([t.seq for t in traces])
            weights, complete = calibration_weights(traces, after_seq)
            incumbent = None if tripped else self._incumbent(store, embedder.name)
            router = self.runner.run_fit(
                fit_router, vectors=vectors, labels=labels, texts=texts, targets=options.targets,
                serve_target=options.target, delta=options.delta, guarantee=options.guarantee,
                calibration_weights=weights, calibration_complete=complete,
                incumbent=incumbent,
                incumbent_fresh=None if incumbent is None
                else seqs > int(incumbent.info["max_seq"]),
                info={"task": self.task, "embedder": embedder.name,
                      "max_seq": int(seqs.max())},
                **options.fit_options,
            )
            ood = (fit_ood(vectors, labels, quantile=options.ood_quantile)
                   if options.ood_quantile is not None else None)
            published = publish(store, self.task, router, ood=ood, force=tripped,
                                keep=options.keep_versions,
                                extra={"refit_started": started, "refit_pid": os.getpid(),
                                       "replaced_tripped": tripped})
            store.incr(self.task, names.COUNTER_REFITS)
            if published is not None:
                if tripped and breaker is not None:
                    breaker.reset()
                self._published(published, router, ood)
            self._apply_retention(store)
            return router
        finally:
            store.release(self.task, names.CLAIM_REFIT)

    def _incumbent(self, store: Store, embedder: str) -> Router | None:
        """The version served now, as the publish rule's rival (None when there is none, it does
        not load, was fitted with another embedder, or does not record which traces it saw)."""
        current = store.current_version(self.task)
        if current is None:
            return None
        try:
            router = load_version(store, self.task, current)
        except RouterLoadError as exc:
            logger.info("tracer_wrap refit of %r: version %s does not load (%s); no rival",
                        self.task, current, exc)
            return None
        if router.info.get("embedder") != embedder or "max_seq" not in router.info:
            return None
        # What the store recorded about that version's files must not follow its arrays into a
        # new version (they would point at the old version's OOD file, hash, ...).
        router.info = {k: v for k, v in router.info.items()
                       if k not in ("ood", "sha256", "saved_at", "versions")}
        return router

    def _apply_retention(self, store: Store) -> None:
        if self.options.retention is None:
            return
        try:
            store.prune(self.task, **self.options.retention)  # type: ignore[arg-type]
        except Exception as exc:  # the router is published; a failed prune must not undo that
            self._fault("retention", exc)

    def in_background(self) -> Future[Router | None] | None:
        """Start :meth:`run` off the request path unless a refit of this task runs here.

        Runs in the worker thread (or in the calling thread with ``refit_executor="inline"``);
        calls keep being served by the current version meanwhile. Returns the future of the
        router (None when the refit was skipped or failed; failures are logged).
        """
        return self.runner.submit(self._quiet_run)

    def _quiet_run(self) -> Router | None:
        try:
            return self.run()
        except GateRefused as exc:
            logger.info("tracer_wrap refit of %r skipped: %s", self.task, exc)
        except Exception as exc:
            self._fault("refit", exc)
        return None

    def after_fork(self) -> None:
        # The parent's refit worker thread does not exist in a forked child.
        self.runner = RefitRunner(self.runner.kind)
