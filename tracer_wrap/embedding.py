"""Embedding on the request path: bounded waits, batched model calls, never on the event loop.

An :class:`EmbeddingService` runs one :class:`~tracer_wrap.model.embedder.Embedder` on its own
worker thread. A caller that needs a vector for routing waits at most ``timeout`` seconds
(:meth:`EmbeddingService.embed_one`, or :meth:`EmbeddingService.aembed_one` from async code,
which awaits without blocking the event loop); past that it gets :class:`EmbedTimeout` and the
engine sends the call to the LLM (an embedding already started still finishes and lands in the
embedder's cache). Texts waiting at the same time are embedded in one model call: when the worker
becomes free it takes every pending request text (up to :data:`MAX_BATCH`), so a burst of
concurrent calls shares one batch instead of queueing one by one.

Work nobody waits for is not done: a request whose caller stopped waiting (or whose bound has
passed) before its batch started is dropped, and a request the worker is not expected to finish
well within its caller's bound (:data:`ADMIT_SHARE` of it, from the timed model calls, see
:class:`CallTime`, and the work ahead of it) is refused at once with :class:`EmbedRefused`, as is
every request but the first while the model loads (its first call). On a busy machine the CPU then
goes to the calls that can still be answered locally, and the others reach the LLM without
waiting. Bulk work (a refit embedding its traces, :meth:`EmbeddingService.embed`) is cut into
chunks of :data:`BULK_CHUNK` texts that alternate with request batches, so a refit
delays a call by at most one chunk and steady traffic never starves a refit.

A text the embedder has already embedded is answered from its cache in the caller's thread,
without a thread hop. After ``fork`` a child gets a fresh worker and empty queues (the parent
keeps its own). At interpreter exit the worker takes no new work and the exit waits (at most
:data:`EXIT_SECONDS`) for the model call it is running: a thread inside torch while the
interpreter tears down aborts the process ("terminate called without an active exception").
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import cast

import numpy as np

from .errors import EmbedderError
from .model.embedder import Embedder, in_text_order, length_chunks

__all__ = ["ADMIT_SHARE", "BULK_CHUNK", "EXIT_SECONDS", "MAX_BATCH", "MAX_QUEUE", "CallTime",
           "EmbedRefused", "EmbedTimeout", "EmbedWait", "EmbeddingService", "service_for"]

#: Most request texts embedded in one model call.
MAX_BATCH = 64
#: Most request texts waiting behind a busy worker; beyond, a request is refused at once (a bound
#: of its own, whatever the estimate of seconds per text says).
MAX_QUEUE = 4 * MAX_BATCH
#: Share of its wait a request behind a busy worker must be expected to finish within to be
#: admitted. The rest absorbs a machine that gets busier meanwhile and an event loop that wakes
#: its caller late: an admitted request that misses its wait costs the whole wait and then the
#: LLM call, a refused one only a local answer.
ADMIT_SHARE = 0.5
#: Texts of bulk work (refits) embedded per model call, between request batches.
BULK_CHUNK = 32
#: Longest the interpreter's exit waits for a running model call (one batch of at most MAX_BATCH
#: texts: seconds even on a busy machine; past it the process may abort as described above).
EXIT_SECONDS = 30.0


class EmbedTimeout(EmbedderError):
    """The embedding of a call's input took longer than its bound; the call goes to the LLM."""


class EmbedRefused(EmbedTimeout):
    """The worker was not expected to embed a call's input within its bound, so the call did not
    wait at all (a prediction, not a hang; see :class:`EmbeddingService`)."""


class EmbedWait:
    """How long a call may wait for the embedding of its input, from the LLM's own latency.

    At most ``timeout`` seconds; and once :data:`MIN_SAMPLES` LLM answers were timed
    (:meth:`llm_took`), at most ``budget`` times the median of the last :data:`WINDOW`, so that
    waiting for a local answer never costs much more than the LLM call it may save (on a busy
    machine a burst of new inputs can take longer to embed than the LLM takes to answer), but
    never less than :data:`FLOOR` (an LLM stub in a test answers in microseconds, and embedding
    one input takes milliseconds). ``budget`` None keeps ``timeout``. Thread-safe;
    :meth:`seconds` takes no lock.
    """

    WINDOW = 64
    MIN_SAMPLES = 8
    #: Seconds a call may always wait (unless ``timeout`` is shorter): MiniLM embeds one short
    #: input in 5-20 ms on one CPU thread, and LLMs worth saving take hundreds of ms.
    FLOOR = 0.05

    def __init__(self, timeout: float, budget: float | None) -> None:
        self.timeout = timeout
        self.budget = budget
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=self.WINDOW)  # in arrival order
        self._sorted: list[float] = []  # the same, sorted
        self._wait = timeout

    def llm_took(self, seconds: float) -> None:
        """Record the latency of one LLM answer."""
        if self.budget is None:
            return
        with self._lock:
            # The window is also kept sorted, so the median of every answer is read, not sorted
            # anew (this runs on the event loop once per LLM answer).
            if len(self._latencies) == self.WINDOW:
                del self._sorted[bisect.bisect_left(self._sorted, self._latencies[0])]
            self._latencies.append(seconds)
            bisect.insort(self._sorted, seconds)
            n = len(self._sorted)
            if n >= self.MIN_SAMPLES:
                half = n // 2
                median = (self._sorted[half] if n % 2
                          else (self._sorted[half - 1] + self._sorted[half]) / 2)
                self._wait = min(self.timeout, max(self.FLOOR, self.budget * median))

    def seconds(self) -> float:
        """The wait of a call starting now, in seconds."""
        return self._wait


class CallTime:
    """Expected seconds of a model call on ``n`` texts, from the calls timed so far.

    A least-squares line ``fixed + per_text * n`` over the last :data:`WINDOW` calls (a model call
    has a fixed cost besides its cost per text: MiniLM takes ~16 ms for one text and ~6 ms per
    text in a batch of 40, so seconds per text measured on one batch size misjudge another),
    times a load factor that rises at once when a call takes longer than the line predicts and
    falls smoothly when calls are faster. The asymmetry is deliberate: a request admitted on an
    estimate too fast for a machine that just got busy costs its caller the whole wait and then
    the LLM call, while one refused on an estimate too slow costs only a local answer. Not
    thread-safe (the service's lock guards it).
    """

    WINDOW = 32

    def __init__(self) -> None:
        self._calls: deque[tuple[int, float]] = deque(maxlen=self.WINDOW)
        self._fixed = 0.0
        self._per_text = 0.0
        self._load = 1.0

    @property
    def known(self) -> bool:
        """True once a call has been timed."""
        return bool(self._calls)

    def seconds(self, n: int) -> float:
        """Expected seconds to embed ``n`` texts (in batches of at most MAX_BATCH)."""
        batches = -(-n // MAX_BATCH)
        return self._load * (self._fixed * batches + self._per_text * n)

    def add(self, n: int, seconds: float) -> None:
        """Record that a model call on ``n`` texts took ``seconds``."""
        if self._calls:
            ratio = seconds / max(self._fixed + self._per_text * n, 1e-9)
            self._load = ratio if ratio > self._load else 0.7 * self._load + 0.3 * ratio
        self._calls.append((n, seconds))
        sizes = np.array([c[0] for c in self._calls], dtype=np.float64)
        times = np.array([c[1] for c in self._calls], dtype=np.float64)
        spread = float(sizes.var())
        if spread > 0:
            slope = float(((sizes - sizes.mean()) * (times - times.mean())).mean()) / spread
            self._per_text = max(0.0, slope)
            self._fixed = max(0.0, float(times.mean()) - self._per_text * float(sizes.mean()))
        else:  # one batch size so far: no way to split the fixed cost from the rest
            self._fixed, self._per_text = 0.0, float(times.sum() / sizes.sum())


class EmbeddingService:
    """One embedder on one worker thread; see the module docstring. Thread-safe."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._reset()
        _SERVICES.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        # (text, future, deadline on time.monotonic)
        self._requests: deque[tuple[str, Future[np.ndarray], float]] = deque()
        self._bulk: deque[tuple[list[str], Future[np.ndarray]]] = deque()
        self._pid: int | None = None
        self._running = False  # the worker is inside a model call
        self._loaded = False  # a model call has returned (the first one loads the model)
        self._load_started: float | None = None  # when the first work came (the load's start)
        self._closed = False
        self._call_time = CallTime()  # model calls timed, the first (the load) excluded
        self._free_at = 0.0  # when the running model call should end (time.monotonic)

    # -- callers --------------------------------------------------------------------------------

    def embed_one(self, text: str, timeout: float) -> np.ndarray:
        """The vector of ``text``, waiting at most ``timeout`` seconds. Raises EmbedTimeout past
        the bound, EmbedderError when the model fails."""
        hit = self.embedder.lookup(text)
        if hit is not None:
            return hit
        future = self._request([text], timeout)[0]
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()  # not embedded if its batch has not started
            raise EmbedTimeout(f"embedding took longer than {timeout:g} s") from None

    def embed_many(self, texts: Sequence[str], timeout: float) -> np.ndarray:
        """Vectors of several request texts, shape ``(len(texts), dim)``, waiting at most
        ``timeout`` seconds in all. Raises EmbedTimeout past the bound, EmbedderError when the
        model fails."""
        if len(texts) == 1:
            return self.embed_one(texts[0], timeout)[None, :]
        deadline = time.monotonic() + timeout
        vectors = [self.embedder.lookup(text) for text in texts]
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        futures = self._request([texts[i] for i in missing], timeout) if missing else []
        try:
            for i, future in zip(missing, futures):
                vectors[i] = future.result(max(0.0, deadline - time.monotonic()))
            return np.stack(cast("list[np.ndarray]", vectors))
        except FutureTimeout:
            raise EmbedTimeout(f"embedding took longer than {timeout:g} s") from None
        finally:
            for future in futures:
                future.cancel()  # a no-op once done or running

    async def aembed_one(self, text: str, timeout: float) -> np.ndarray:
        """:meth:`embed_one` for async code: awaits without blocking the event loop."""
        hit = self.embedder.lookup(text)
        if hit is not None:
            return hit
        future = self._request([text], timeout)[0]
        try:
            # shield: a timeout must not cancel the wrapped future from the loop's side; the
            # request is cancelled below, thread-safely, and only if its batch has not started.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except asyncio.TimeoutError:
            raise EmbedTimeout(f"embedding took longer than {timeout:g} s") from None
        finally:
            # Nobody awaits it any more (a timeout, or the caller's task was cancelled): a no-op
            # once done or running.
            future.cancel()

    def loading(self) -> float | None:
        """Seconds since the first work came, while the model call that loads the model has not
        returned; None before any work and once it has."""
        with self._cond:
            if self._loaded or self._load_started is None:
                return None
            return time.monotonic() - self._load_started

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` as bulk work (a refit): chunks of texts of similar lengths
        (:func:`~tracer_wrap.model.embedder.length_chunks`) run between request batches. Rows are
        in the order of ``texts``. Waits as long as it takes. Raises EmbedderError when the model
        fails."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        chunks = length_chunks(texts, BULK_CHUNK)
        futures = []
        with self._cond:
            self._ensure_worker()
            self._check_open()
            self._note_work()
            for chunk in chunks:
                future: Future[np.ndarray] = Future()
                self._bulk.append(([texts[i] for i in chunk], future))
                futures.append(future)
            self._cond.notify()
        return in_text_order(len(texts), chunks, (future.result() for future in futures))

    def _request(self, texts: Sequence[str], timeout: float) -> list[Future[np.ndarray]]:
        """Queue ``texts`` (one caller's, all or none); raise EmbedRefused at once when the
        worker is not expected to embed them within ``timeout`` seconds (see the module
        docstring)."""
        with self._cond:
            self._ensure_worker()
            self._check_open()
            self._note_work()
            now = time.monotonic()
            # An idle worker always takes a caller's texts: it keeps the estimate current (the
            # first model call also loads the model), and what their caller stops waiting for
            # is dropped batch by batch.
            if self._running or self._requests:
                if len(self._requests) + len(texts) > MAX_QUEUE:
                    raise EmbedRefused(f"{len(self._requests)} inputs already wait for their"
                                       " embedding")
                if not self._loaded:
                    raise EmbedRefused("the embedding model is still loading")
                if not self._call_time.known:
                    raise EmbedRefused("no model call has been timed yet")
                busy = max(0.0, self._free_at - now) if self._running else 0.0
                expected = busy + self._call_time.seconds(len(self._requests) + len(texts))
                if expected > ADMIT_SHARE * timeout:
                    raise EmbedRefused(f"embedding would take ~{expected:.2g} s, more than"
                                       f" {ADMIT_SHARE:g} of the {timeout:g} s wait")
            # Made once admitted: a refused request (most of a burst's) costs no future.
            futures: list[Future[np.ndarray]] = [Future() for _ in texts]
            self._requests.extend((text, future, now + timeout)
                                  for text, future in zip(texts, futures))
            self._cond.notify()
        return futures

    def _note_work(self) -> None:
        """Note when the first work came (caller holds the lock): the model loads from then."""
        if self._load_started is None:
            self._load_started = time.monotonic()

    def _check_open(self) -> None:
        if self._closed:
            raise EmbedderError("the interpreter is exiting: no new embedding")

    def close(self, timeout: float) -> bool:
        """Take no new work, fail what waits, and wait up to ``timeout`` seconds for the model
        call running now; True when none runs any longer."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            waiting = [f for _, f, _ in self._requests] + [f for _, f in self._bulk]
            self._requests.clear()
            self._bulk.clear()
            while self._running and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            idle = not self._running
        for future in waiting:
            if not future.done():
                future.set_exception(EmbedderError("the interpreter is exiting"))
        return idle

    # -- the worker ----------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._work, name="tracer_wrap-embedding",
                             daemon=True).start()

    def _work(self) -> None:
        last_was_bulk = False
        while True:
            with self._cond:
                self._running = False
                self._cond.notify_all()
                while not self._requests and not self._bulk:
                    self._cond.wait()
                if self._requests and (last_was_bulk or not self._bulk):
                    batch = self._take_requests()
                    if not batch:
                        continue
                    bulk = None
                    size = len(batch)
                else:
                    bulk = self._bulk.popleft()
                    size = len(bulk[0])
                last_was_bulk = bulk is not None
                self._running = True
                started = time.monotonic()
                if self._call_time.known:
                    self._free_at = started + self._call_time.seconds(size)
            if bulk is not None:
                self._run(bulk[0], [bulk[1]], whole=True)
            else:
                self._run([text for text, _ in batch], [future for _, future in batch])
            took = time.monotonic() - started
            with self._cond:
                if self._loaded:
                    self._call_time.add(size, took)
                else:
                    self._loaded = True  # the first call's time is mostly the model's load

    def _take_requests(self) -> list[tuple[str, Future[np.ndarray]]]:
        """The next batch of request texts (caller holds the lock): up to MAX_BATCH, without
        the ones nobody waits for any longer. A request past its deadline fails at once with
        EmbedTimeout, so its caller does not wait for an event loop's late timer either."""
        batch: list[tuple[str, Future[np.ndarray]]] = []
        now = time.monotonic()
        while self._requests and len(batch) < MAX_BATCH:
            text, future, deadline = self._requests.popleft()
            if not future.set_running_or_notify_cancel():  # False: its caller gave up
                continue
            if deadline < now:
                future.set_exception(EmbedTimeout("the wait for the embedding ended before"
                                                  " its model call could start"))
                continue
            batch.append((text, future))
        return batch

    def _run(self, texts: list[str], futures: list[Future[np.ndarray]],
             whole: bool = False) -> None:
        try:
            vectors = self.embedder.embed(texts)
        except BaseException as exc:  # every waiter learns why; the worker goes on
            # Unchanged, KeyboardInterrupt and SystemExit included: a waiter re-raises what the
            # model raised, so an interrupt stops its caller instead of becoming a fault that
            # sends the call to the LLM (or a refit that fails quietly).
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        if whole:
            futures[0].set_result(vectors)
            return
        for future, vector in zip(futures, vectors):
            if not future.done():
                future.set_result(vector)


_SERVICES: weakref.WeakSet[EmbeddingService] = weakref.WeakSet()
_BY_EMBEDDER: weakref.WeakKeyDictionary[Embedder, EmbeddingService] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def service_for(embedder: Embedder) -> EmbeddingService:
    """The service of ``embedder`` (one per embedder and process, created on first use)."""
    with _registry_lock:
        service = _BY_EMBEDDER.get(embedder)
        if service is None:
            service = _BY_EMBEDDER[embedder] = EmbeddingService(embedder)
        return service


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for service in list(_SERVICES):
        service._reset()


def _close_at_exit() -> None:
    deadline = time.monotonic() + EXIT_SECONDS
    for service in list(_SERVICES):
        service.close(max(0.0, deadline - time.monotonic()))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
