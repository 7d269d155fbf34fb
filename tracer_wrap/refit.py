"""When to refit a task, where the fit runs, and the refit itself.

Policies decide *when*: :func:`refit_after_traces` (every N new valid traces),
:func:`refit_on_doubling` (each time the history doubled), :func:`refit_after_delay` (some time
after the last refit, once there is something new) and :data:`refit_never`. They compose like
tenacity's stop conditions::

    policy = refit_after_traces(500) | refit_after_delay(3600)   # whichever comes first
    policy = refit_after_traces(50) & refit_after_delay(600)     # both must hold

The default (``refit_every=N``) is ``refit_after_traces(N) | refit_on_doubling()``: the first
refit as soon as there are ``min_traces`` traces, then at twice, four times, ... as many, until N
new traces come sooner than a doubling (with ``min_traces=200, refit_every=500``: at 200, 400,
800, 1300, 1800, ... traces). Early refits are cheap (few traces) and are where the first savings
come from; each one certifies what its data allows.

Refits embed only what was never embedded: each trace's vector is stored with it (by the engine
when the call was embedded to be routed, else by the first refit that embeds it) and read back by
:func:`trace_vectors`. A history longer than :data:`MAX_REFIT_TRACES` valid traces is sampled
before anything is read into memory or embedded.

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
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from . import background, names
from ._log import fault, logger
from .errors import ConfigError, EmbedderError, GateRefused, RouterLoadError, StoreTampered
from .labels import LabelSet
from .model.fit import default_calibration_fraction, fit_router
from .model.ood import OODScorer, fit_ood, name_text
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
    "calibration_chances",
    "refit_after_delay",
    "refit_after_traces",
    "refit_never",
    "refit_on_doubling",
    "trace_vectors",
    "unembedded",
]

#: Most valid traces one refit reads, embeds and fits on. A longer history is sampled uniformly
#: at random (seed :data:`REFIT_SAMPLE_SEED`, so a refit of the same history is reproducible):
#: the fit trains on at most 50,000 of them (``max_train`` of
#: :func:`~tracer_wrap.model.fit.fit_router`; coverage hardly grows beyond) and calibrates on the
#: share it sets aside (0.3 of 100,000), so more traces would only cost time and memory.
MAX_REFIT_TRACES = 100_000
REFIT_SAMPLE_SEED = 0

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
class refit_on_doubling(RefitPolicy):  # noqa: N801
    """Refit when the traces logged since the last refit at least match those before it (the
    history doubled), and at once when the task was never refitted: with ``refit_after_traces``
    it makes the early refits geometric (see the module docstring)."""

    def __call__(self, state: RefitState) -> bool:
        if math.isinf(state.seconds_since_refit):
            return state.new_traces >= 1
        return state.new_traces >= max(1, state.total_traces - state.new_traces)


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
    on the next fit. A KeyboardInterrupt or SystemExit of an inline job is re-raised in the
    calling thread (after its future ends with it): an interrupt is never a failed refit.
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
        except Exception as exc:
            future.set_exception(exc)
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit: the caller's own, not the refit's. The future ends
            # (a later refit may run) and the interrupt reaches the caller, as it would without
            # tracer_wrap.
            future.set_exception(exc)
            raise
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

    def wait(self) -> None:
        """Return once the job running now (if any) has ended, however long it takes."""
        with self._lock:
            future = self._future
        if future is not None:
            futures_wait([future])

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


def calibration_coins(seqs: np.ndarray) -> np.ndarray:
    """Each trace's calibration coin in [0, 1) (see :func:`tracer_wrap.model.fit.fit_router`).

    A hash of its sequence number (the splitmix64 finaliser), not a draw from a generator: a
    trace's coin, hence its side of the split, is the same in every refit whichever other traces
    exist or were sampled, and is fixed before its call and its content. Pure; never raises for
    non-negative integers.
    """
    z = np.asarray(seqs, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.asarray((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def calibration_chances(traces: list[Trace], after_seq: int = 0) -> np.ndarray:
    """Each trace's chance of calibrating in a refit (``calibration_fraction`` of
    :func:`~tracer_wrap.model.fit.fit_router`): only a uniform draw of traffic may calibrate (the
    gate's exact test, :mod:`tracer_wrap.model.gate`).

    A trace logged while no version answered locally is one: it calibrates with
    :func:`~tracer_wrap.model.fit.default_calibration_fraction` of the number of such traces
    logged since the last breaker trip, the ones that may calibrate (that number stops growing
    once a version answers, so they keep their side; after a trip it starts again, so the first
    refits on the new traffic calibrate on the share a short history needs). While version ``v``
    answers, a random slice of its calls, drawn at its audit rate whatever it decides, reaches the
    LLM (the engine's audit slice): the slice's calls it would answer are its audit samples, the
    others are deferred calls marked exchangeable. The slice is a uniform draw of traffic, so its
    traces always calibrate (chance 1). Every other trace only trains (chance 0): the inputs a
    version deferred outside its slice (the hard ones), answers recorded without a routing
    decision while a version answered (an embedding that missed its wait, a routing fault), and
    traces logged before the last breaker trip (``seq <= after_seq``). A trace's chance is fixed
    when its call is logged and can only fall later (a larger history, a trip), so a trace that
    trained a version never calibrates a later one. Pure.
    """
    # The engine marks a trace exchangeable when its call was logged while no version answered
    # or was in the slice of the version answering then (which it records).
    share = default_calibration_fraction(sum(t.exchangeable and t.served_version is None
                                             and t.seq > after_seq for t in traces))
    return np.array([0.0 if t.seq <= after_seq or not t.exchangeable else
                     share if t.served_version is None else 1.0 for t in traces])


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
        self.label_set = LabelSet(options.labels, redact=options.redact)
        self._names: tuple[str, dict[str, np.ndarray]] | None = None
        self.policy: RefitPolicy = options.refit_policy or (
            refit_never if options.refit_every is None
            else refit_after_traces(options.refit_every) | refit_on_doubling())
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
        certifies more coverage is published; with no rival (or one fresh to too few of the
        calibration traces, see :func:`~tracer_wrap.model.fit.fit_router`) the fit is certified
        at ``delta``.
        Traces logged before the last trip train but do not calibrate. At most
        :data:`MAX_REFIT_TRACES` valid traces are used (a uniform sample of a longer history);
        only those without a stored vector are embedded (then stored). Only one refit of a task
        runs at a time across processes. Raises GateRefused when a refit is already running
        elsewhere, when there are fewer than ``min_traces`` valid traces, or for an audit-only task
        (``store_inputs="hash"``); StoreError / EmbedderError when the store or the embedder
        fails. A refit that dies keeps its claim until ``refit_claim_ttl`` runs out. One that the
        interpreter's exit stops (its thread pools refuse new work, a model's loader included),
        or a KeyboardInterrupt, gives back the count of new traces that asked for it, so the next
        process refits at its first write; the interrupt itself is re-raised.
        """
        options = self.options
        if options.store_inputs == "hash":
            raise GateRefused(f"task {self.task!r} stores only hashes of its inputs"
                              " (store_inputs='hash'); it is audit-only and cannot be fitted")
        self._flush()
        store = self._store()
        if not store.claim(self.task, names.CLAIM_REFIT, ttl=options.refit_claim_ttl):
            raise GateRefused(f"a refit of {self.task!r} is already running")
        taken = 0  # new valid traces this refit answers for (the counter that asked for it)
        try:
            started = options.clock()
            store.set_setting(self.task, names.SETTING_LAST_REFIT, started)
            read: list[int] = [0]  # the newest seq read, sampled or not (for retention)

            def valid() -> Iterator[Trace]:
                for t in store.iter_traces(self.task, valid_only=True):
                    read[0] = max(read[0], t.seq)
                    if not self.label_set.fixed or self.label_set.normalise(t.teacher) is not None:
                        yield t

            traces = _sample(valid(), MAX_REFIT_TRACES, REFIT_SAMPLE_SEED)
            seen_seq = read[0]
            if len(traces) < options.min_traces:
                raise GateRefused(f"{len(traces)} valid traces of {self.task!r};"
                                  f" at least {options.min_traces} are needed to fit")
            taken = store.counter(self.task, names.COUNTER_NEW_TRACES)
            store.incr(self.task, names.COUNTER_NEW_TRACES, -taken)
            breaker = self._breaker()
            tripped = breaker is not None and breaker.last_trip() is not None
            after_seq = int(store.get_setting(self.task, names.SETTING_CALIBRATE_AFTER, 0) or 0)
            embedder = self._embedder()
            texts = [t.input for t in traces]
            vectors = trace_vectors(store, self.task, traces, embedder.name, self._embed)
            labels = [t.teacher for t in traces]
            seqs = np.array([t.seq for t in traces])
            incumbent = None if tripped else self._incumbent(store, embedder.name)
            router = self.runner.run_fit(
                fit_router, vectors=vectors, labels=labels, texts=texts, targets=options.targets,
                serve_target=options.target, delta=options.delta, guarantee=options.guarantee,
                calibration_fraction=calibration_chances(traces, after_seq),
                calibration_coins=calibration_coins(seqs),
                incumbent=incumbent,
                incumbent_fresh=None if incumbent is None
                else seqs > int(incumbent.info["max_seq"]),
                info={"task": self.task, "embedder": embedder.name,
                      "max_seq": int(seqs.max())},
                **options.fit_options,
            )
            # Every label among the traces this refit read, also those only in calibration
            # parts, which the served model never learnt (the engine's drift signal); for an
            # incumbent re-certified on fresh traces too, since its gate read those.
            router.info["trace_labels"] = sorted(set(labels))
            ood = (fit_ood(vectors, labels, quantile=options.ood_quantile,
                           names=self._label_names(labels, embedder.name))
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
            self._apply_retention(store, seen_seq)
            return router
        except BaseException as exc:
            if taken and (background.exiting() or not isinstance(exc, Exception)):
                # Stopped by the exit or an interrupt (KeyboardInterrupt), not by a fault of its
                # own: the traces that asked for it ask again, so the next process refits at
                # its first write.
                store.incr(self.task, names.COUNTER_NEW_TRACES, taken)
            raise
        finally:
            store.release(self.task, names.CLAIM_REFIT)

    def _label_names(self, labels: list[str], embedder: str) -> dict[str, np.ndarray] | None:
        """The embedded names of the declared labels, for the OOD check's name check, when some
        declared label has no trace among ``labels`` (None otherwise, without declared labels,
        or when the embedder cannot embed the names: precomputed vectors). Embedded once per
        embedder."""
        declared = self.label_set.labels
        if declared is None or set(declared) <= set(labels):
            return None
        if self._names is None or self._names[0] != embedder:
            try:
                vectors = self._embed([name_text(label) for label in declared])
            except EmbedderError as exc:
                logger.info("tracer_wrap fits no name check for %r: %s", self.task, exc)
                return None
            self._names = (embedder, dict(zip(declared, np.asarray(vectors, dtype=np.float32))))
        return self._names[1]

    def _incumbent(self, store: Store, embedder: str) -> Router | None:
        """The version served now, as the publish rule's rival (None when there is none, it does
        not load, was fitted with another embedder, or does not record which traces it saw; or
        the pointer to it was tampered with, which the new version then replaces)."""
        try:
            current = store.current_version(self.task)
            if current is None:
                return None
            router = load_version(store, self.task, current)
        except (RouterLoadError, StoreTampered) as exc:
            logger.info("tracer_wrap refit of %r: the served version does not load (%s);"
                        " no rival", self.task, exc)
            return None
        if router.info.get("embedder") != embedder or "max_seq" not in router.info:
            return None
        # What the store recorded about that version's files must not follow its arrays into a
        # new version (they would point at the old version's OOD file, hash, ...).
        router.info = {k: v for k, v in router.info.items()
                       if k not in ("ood", "sha256", "saved_at", "versions")}
        return router

    def _apply_retention(self, store: Store, seen_seq: int) -> None:
        """Prune by the ``retention`` option, never a trace newer than this refit has seen
        (``seq`` above ``seen_seq``): ages are wall-clock, and a clock that jumps ahead must not
        delete what the next refit needs."""
        if self.options.retention is None:
            return
        try:
            store.prune(self.task, **self.options.retention,  # type: ignore[arg-type]
                        keep_after_seq=seen_seq)
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
            if not background.exiting():
                self._fault("refit", exc)
            else:  # no fault: the exit refuses new work (a model's loader), and nothing is lost
                logger.info("tracer_wrap refit of %r stopped by the interpreter's exit (%s: %s);"
                            " the next process refits", self.task, type(exc).__name__, exc)
        return None

    def after_fork(self) -> None:
        # The parent's refit worker thread does not exist in a forked child.
        self.runner = RefitRunner(self.runner.kind)


def _sample(traces: Iterator[Trace], cap: int, seed: int) -> list[Trace]:
    """At most ``cap`` of ``traces``, uniformly at random (reservoir sampling, so memory stays
    bounded by ``cap`` whatever the history), in their original order."""
    rng = random.Random(seed)
    kept: list[Trace] = []
    for i, trace in enumerate(traces):
        if i < cap:
            kept.append(trace)
        else:
            j = rng.randrange(i + 1)
            if j < cap:
                kept[j] = trace
    kept.sort(key=lambda t: t.seq)
    return kept


def unembedded(store: Store, task: str, traces: Sequence[Trace], embedder: str) -> list[Trace]:
    """The traces of ``traces`` that have no stored vector in the space of ``embedder`` (what
    :func:`trace_vectors` would embed)."""
    from .store import decode_vectors

    found = decode_vectors(embedder, store.get_vectors(task, [t.seq for t in traces]))[1]
    return [t for t, ok in zip(traces, found.tolist()) if not ok]


def trace_vectors(store: Store, task: str, traces: Sequence[Trace], embedder: str,
                  embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The vectors of ``traces`` in the space of the embedder named ``embedder``.

    Vectors stored in that space are reused; only the traces without one (never embedded, or
    embedded by another embedder or at another dimension) are embedded, by ``embed(texts)`` in one
    call, and their vectors stored. Every row is rounded to the stored precision (float16), so a
    fit gives the same result whether a vector was read back or just computed. Raises
    StoreError / EmbedderError when the store or the embedder fails.
    """
    # Imported here: the store package imports the options, which import this module.
    from .store import decode_vectors, encode_vectors

    if not traces:
        return np.zeros((0, 0), dtype=np.float32)
    raws = store.get_vectors(task, [t.seq for t in traces])
    matrix, found = decode_vectors(embedder, raws)
    missing = np.flatnonzero(~found).tolist()
    if not missing:
        return matrix
    fresh = np.asarray(embed([traces[i].input for i in missing]), dtype=np.float32)
    if not found.any():
        matrix = np.zeros((len(traces), fresh.shape[1]), dtype=np.float32)
    elif fresh.shape[1] != matrix.shape[1]:
        # Most stored vectors have another dimension than the embedder gives now: keep only those
        # of its dimension (embedding again what was just embedded costs a cache hit).
        matrix, found = decode_vectors(embedder, raws, dim=fresh.shape[1])
        missing = np.flatnonzero(~found).tolist()
        fresh = np.asarray(embed([traces[i].input for i in missing]), dtype=np.float32)
    encoded = encode_vectors(embedder, fresh)
    store.put_vectors(task, {traces[i].seq: raw for i, raw in zip(missing, encoded)})
    matrix[missing] = decode_vectors(embedder, encoded, dim=fresh.shape[1])[0]
    return matrix
