"""Embedding on the request path: bounded waits, batched model calls, never on the event loop.

An :class:`EmbeddingService` runs one :class:`~tracer_wrap.model.embedder.Embedder` on its own
worker thread. A caller that needs a vector for routing waits at most ``timeout`` seconds
(:meth:`EmbeddingService.embed_one`, or :meth:`EmbeddingService.aembed_one` from async code,
which awaits without blocking the event loop); past that it gets :class:`EmbedTimeout` and the
engine sends the call to the LLM (the embedding still finishes and lands in the embedder's
cache). Texts waiting at the same time are embedded in one model call: when the worker becomes
free it takes every pending request text (up to :data:`MAX_BATCH`), so a burst of concurrent calls
shares one batch instead of queueing one by one. Bulk work (a refit embedding its traces,
:meth:`EmbeddingService.embed`) is cut into chunks of :data:`BULK_CHUNK` texts that alternate
with request batches, so a refit delays a call by at most one chunk and steady traffic never
starves a refit.

A text the embedder has already embedded is answered from its cache in the caller's thread,
without a thread hop. After ``fork`` a child gets a fresh worker and empty queues (the parent
keeps its own). At interpreter exit the worker takes no new work and the exit waits (at most
:data:`EXIT_SECONDS`) for the model call it is running: a thread inside torch while the
interpreter tears down aborts the process ("terminate called without an active exception").
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from .errors import EmbedderError
from .model.embedder import Embedder

__all__ = ["BULK_CHUNK", "EXIT_SECONDS", "MAX_BATCH", "EmbedTimeout", "EmbeddingService",
           "service_for"]

#: Most request texts embedded in one model call.
MAX_BATCH = 64
#: Texts of bulk work (refits) embedded per model call, between request batches.
BULK_CHUNK = 32
#: Longest the interpreter's exit waits for a running model call (one batch of at most MAX_BATCH
#: texts: seconds even on a busy machine; past it the process may abort as described above).
EXIT_SECONDS = 30.0


class EmbedTimeout(EmbedderError):
    """The embedding of a call's input took longer than its bound; the call goes to the LLM."""


class EmbeddingService:
    """One embedder on one worker thread; see the module docstring. Thread-safe."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._reset()
        _SERVICES.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._requests: deque[tuple[str, Future[np.ndarray]]] = deque()
        self._bulk: deque[tuple[list[str], Future[np.ndarray]]] = deque()
        self._pid: int | None = None
        self._running = False  # the worker is inside a model call
        self._closed = False

    # -- callers --------------------------------------------------------------------------------

    def embed_one(self, text: str, timeout: float) -> np.ndarray:
        """The vector of ``text``, waiting at most ``timeout`` seconds. Raises EmbedTimeout past
        the bound, EmbedderError when the model fails."""
        hit = self.embedder.lookup(text)
        if hit is not None:
            return hit
        try:
            return self._request(text).result(timeout)
        except FutureTimeout:
            raise EmbedTimeout(f"embedding took longer than {timeout:g} s") from None

    def embed_many(self, texts: Sequence[str], timeout: float) -> np.ndarray:
        """Vectors of several request texts, shape ``(len(texts), dim)``, waiting at most
        ``timeout`` seconds in all. Raises EmbedTimeout past the bound, EmbedderError when the
        model fails."""
        if len(texts) == 1:
            return self.embed_one(texts[0], timeout)[None, :]
        deadline = time.monotonic() + timeout
        found: list[np.ndarray | Future[np.ndarray]] = []
        for text in texts:
            hit = self.embedder.lookup(text)
            found.append(hit if hit is not None else self._request(text))
        vectors = []
        try:
            for item in found:
                vectors.append(item if isinstance(item, np.ndarray)
                               else item.result(max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            raise EmbedTimeout(f"embedding took longer than {timeout:g} s") from None
        return np.stack(vectors)

    async def aembed_one(self, text: str, timeout: float) -> np.ndarray:
        """:meth:`embed_one` for async code: awaits without blocking the event loop."""
        hit = self.embedder.lookup(text)
        if hit is not None:
            return hit
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self._request(text)), timeout)
        except asyncio.TimeoutError:
            raise EmbedTimeout(f"embedding took longer than {timeout:g} s") from None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` as bulk work (a refit): chunks run between request batches.
        Waits as long as it takes. Raises EmbedderError when the model fails."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        futures = []
        with self._cond:
            self._ensure_worker()
            self._check_open()
            for i in range(0, len(texts), BULK_CHUNK):
                future: Future[np.ndarray] = Future()
                self._bulk.append((texts[i:i + BULK_CHUNK], future))
                futures.append(future)
            self._cond.notify()
        return np.concatenate([future.result() for future in futures])

    def _request(self, text: str) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        with self._cond:
            self._ensure_worker()
            self._check_open()
            self._requests.append((text, future))
            self._cond.notify()
        return future

    def _check_open(self) -> None:
        if self._closed:
            raise EmbedderError("the interpreter is exiting: no new embedding")

    def close(self, timeout: float) -> bool:
        """Take no new work, fail what waits, and wait up to ``timeout`` seconds for the model
        call running now; True when none runs any longer."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            waiting = [f for _, f in self._requests] + [f for _, f in self._bulk]
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
                    batch = [self._requests.popleft()
                             for _ in range(min(MAX_BATCH, len(self._requests)))]
                    bulk = None
                else:
                    bulk = self._bulk.popleft()
                last_was_bulk = bulk is not None
                self._running = True
            if bulk is not None:
                self._run(bulk[0], [bulk[1]], whole=True)
            else:
                self._run([text for text, _ in batch], [future for _, future in batch])

    def _run(self, texts: list[str], futures: list[Future[np.ndarray]],
             whole: bool = False) -> None:
        try:
            vectors = self.embedder.embed(texts)
        except BaseException as exc:  # every waiter learns why; the worker goes on
            for future in futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else EmbedderError(repr(exc)))
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
