"""The embedding worker of the request path: batching, bounded waits, and no work nobody awaits."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from _wait import until

from tracer_wrap.embedding import EmbeddingService, EmbedTimeout
from tracer_wrap.model.embedder import Embedder


class Gate:
    """An embedder whose model calls wait until released, recording what each call embedded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        self.release.wait()
        return np.ones((len(texts), 4)) * np.arange(1, len(texts) + 1)[:, None]

    def embedder(self) -> Embedder:
        # No cache: every text must go through the worker.
        return Embedder.from_callable(self.embed, name="gate", cache_bytes=0)


@pytest.fixture
def gate() -> Gate:
    g = Gate()
    yield g
    g.release.set()


def busy_service(gate: Gate) -> tuple[EmbeddingService, threading.Thread]:
    """A service whose worker is inside a model call (embedding "first") until released."""
    service = EmbeddingService(gate.embedder())
    first = threading.Thread(target=service.embed_one, args=("first", 60.0), daemon=True)
    first.start()
    assert gate.entered.wait(60)
    return service, first


def release_after_queued(gate: Gate, service: EmbeddingService, threads: list[threading.Thread],
                         text: str, queued: int) -> None:
    """Ask for ``text`` in a thread, wait until ``queued`` requests wait, release the model and
    wait for every thread."""
    waiter = threading.Thread(target=service.embed_one, args=(text, 60.0), daemon=True)
    waiter.start()
    until(lambda: len(service._requests) == queued, f"{queued} queued requests")
    gate.release.set()
    for thread in [*threads, waiter]:
        thread.join(60)


def test_concurrent_requests_share_one_model_call(gate):
    service, first = busy_service(gate)
    waiters = [threading.Thread(target=service.embed_one, args=(f"t{i}", 60.0), daemon=True)
               for i in range(5)]
    for w in waiters:
        w.start()
    until(lambda: len(service._requests) == 5, "five queued requests")
    gate.release.set()
    for w in [first, *waiters]:
        w.join(60)
    assert gate.calls == [["first"], [f"t{i}" for i in range(5)]]


def test_a_request_whose_caller_gave_up_is_never_embedded(gate):
    service, first = busy_service(gate)
    with pytest.raises(EmbedTimeout):
        service.embed_one("abandoned", 0.01)
    with pytest.raises(EmbedTimeout):
        asyncio.run(service.aembed_one("abandoned too", 0.01))
    release_after_queued(gate, service, [first], "awaited", queued=3)
    assert gate.calls == [["first"], ["awaited"]]


def test_a_request_the_worker_cannot_finish_in_time_is_refused_at_once(gate):
    service, first = busy_service(gate)
    service._per_text = 0.5  # measured seconds per text (the first call is still running)
    with pytest.raises(EmbedTimeout, match="would take"):
        service.embed_one("hopeless", 0.2)
    assert not service._requests  # refused without queuing: no CPU spent on it
    # A caller that can wait long enough is queued and served.
    release_after_queued(gate, service, [first], "patient", queued=1)
    assert gate.calls == [["first"], ["patient"]]


def test_an_idle_worker_always_takes_a_request(gate):
    gate.release.set()
    service = EmbeddingService(gate.embedder())
    service._per_text = 100.0  # a stale estimate (say, the model's first load) blocks nothing
    assert service.embed_one("one", 60.0).shape == (4,)
    assert gate.calls == [["one"]] and service._per_text < 100.0


def test_the_queue_of_waiting_requests_is_bounded(gate):
    from tracer_wrap.embedding import MAX_QUEUE

    service, first = busy_service(gate)  # no model call measured yet: no estimate bounds it
    for i in range(MAX_QUEUE):
        service._request(f"q{i}", 60.0)
    with pytest.raises(EmbedTimeout, match="already wait"):
        service.embed_one("one too many", 60.0)
    assert len(service._requests) == MAX_QUEUE
