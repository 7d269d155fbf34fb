"""When to refit a task, and where the fit runs.

Policies decide *when*: :func:`refit_after_traces` (every N new valid traces),
:func:`refit_after_delay` (some time after the last refit, once there is something new) and
:data:`refit_never`. They compose like tenacity's stop conditions::

    policy = refit_after_traces(500) | refit_after_delay(3600)   # whichever comes first
    policy = refit_after_traces(50) & refit_after_delay(600)     # both must hold

Executors decide *where*: ``"inline"`` (in the calling thread, reproducible: used by
``tracer-wrap simulate``), ``"thread"`` (a worker thread, the default) or ``"process"`` (the fit,
which is the CPU-heavy part, runs in a separate process started with ``spawn``). Whatever the
executor, :class:`~tracer_wrap.engine.TracedTask` takes the store's atomic ``claim`` first, so one
refit of a task runs at a time across threads and processes, and a refit killed mid-way loses its
claim when the claim's time-to-live runs out.
"""

from __future__ import annotations

import multiprocessing
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .errors import ConfigError

__all__ = [
    "ExecutorKind",
    "RefitPolicy",
    "RefitRunner",
    "RefitState",
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
            raise ConfigError(f"refit executor must be 'inline', 'thread' or 'process', got {kind!r}")
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

