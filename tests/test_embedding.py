"""The embedding worker of the request path: batching, bounded waits, and no work nobody awaits."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from _wait import until

from tracer_wrap.embedding import BULK_CHUNK, MAX_BATCH, CallTime, EmbeddingService, EmbedTimeout
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


def busy_service(gate: Gate, per_text: float = 1e-6) -> tuple[EmbeddingService, threading.Thread]:
    """A service whose worker is inside a model call (embedding "first") until released, its
    model loaded and ``per_text`` seconds per text measured, as after earlier model calls."""
    service = EmbeddingService(gate.embedder())
    service._loaded = True
    service._call_time.add(1, per_text)
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


def test_a_request_whose_async_caller_was_cancelled_is_never_embedded(gate):
    service, first = busy_service(gate)

    async def cancel_while_queued() -> None:
        waiting = asyncio.create_task(service.aembed_one("cancelled", 60.0))
        while not service._requests:  # queued behind the busy worker
            await asyncio.sleep(0.001)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(cancel_while_queued())
    release_after_queued(gate, service, [first], "awaited", queued=2)
    assert gate.calls == [["first"], ["awaited"]]


def test_a_request_the_worker_cannot_finish_in_time_is_refused_at_once(gate):
    service, first = busy_service(gate, per_text=0.5)
    with pytest.raises(EmbedTimeout, match="would take"):
        service.embed_one("hopeless", 0.2)
    with pytest.raises(EmbedTimeout, match="would take"):
        # 0.5-1.0 s expected (the running call, then this one): more than ADMIT_SHARE of 0.9 s
        service.embed_one("too close to call", 0.9)
    assert not service._requests  # refused without queuing: no CPU spent on them
    # A caller that can wait long enough is queued and served.
    release_after_queued(gate, service, [first], "patient", queued=1)
    assert gate.calls == [["first"], ["patient"]]


def test_an_idle_worker_always_takes_a_request(gate):
    gate.release.set()
    service = EmbeddingService(gate.embedder())
    service._loaded = True
    service._call_time.add(1, 100.0)  # a stale estimate blocks nothing
    assert service.embed_one("one", 60.0).shape == (4,)
    assert gate.calls == [["one"]] and service._call_time.seconds(1) < 100.0


def test_the_queue_of_waiting_requests_is_bounded(gate):
    from tracer_wrap.embedding import MAX_QUEUE

    service, first = busy_service(gate)  # an estimate too small to bound the queue
    for i in range(MAX_QUEUE):
        service._request([f"q{i}"], 60.0)
    with pytest.raises(EmbedTimeout, match="already wait"):
        service.embed_one("one too many", 60.0)
    assert len(service._requests) == MAX_QUEUE


def test_one_callers_texts_are_taken_or_refused_together(gate):
    service, first = busy_service(gate, per_text=0.01)
    with pytest.raises(EmbedTimeout, match="would take"):
        service.embed_many([f"m{i}" for i in range(30)], 0.2)  # ~0.3 s of work
    assert not service._requests  # none of them queued
    waiter = threading.Thread(target=service.embed_many, args=(["a", "b", "c"], 60.0),
                              daemon=True)
    waiter.start()
    until(lambda: len(service._requests) == 3, "three queued requests")
    gate.release.set()
    for thread in (first, waiter):
        thread.join(60)
    assert gate.calls == [["first"], ["a", "b", "c"]]


def test_an_idle_worker_takes_a_whole_batch_beyond_the_queue_bound(gate):
    from tracer_wrap.embedding import MAX_QUEUE

    gate.release.set()
    service = EmbeddingService(gate.embedder())
    texts = [f"b{i}" for i in range(MAX_QUEUE + 10)]
    assert service.embed_many(texts, 60.0).shape == (len(texts), 4)


def test_while_the_model_loads_only_the_first_request_waits(gate):
    service = EmbeddingService(gate.embedder())
    first = threading.Thread(target=service.embed_one, args=("first", 60.0), daemon=True)
    first.start()
    assert gate.entered.wait(60)  # the first model call: it loads the model
    with pytest.raises(EmbedTimeout, match="still loading"):
        service.embed_one("second", 60.0)
    assert not service._requests
    gate.release.set()
    first.join(60)
    # The load's time is no estimate; the next model call gives one.
    assert service._loaded and not service._call_time.known
    service.embed_one("third", 60.0)
    assert gate.calls == [["first"], ["third"]] and service._call_time.known


def test_a_model_calls_time_has_a_fixed_part_and_rises_at_once_with_the_load():
    line = CallTime()
    for n in (1, 8, 40, 1, 8, 40):
        line.add(n, 0.010 + 0.006 * n)  # MiniLM-like: 10 ms a call, 6 ms a text
    assert line.seconds(1) == pytest.approx(0.016)
    assert line.seconds(40) == pytest.approx(0.250)
    assert line.seconds(2 * MAX_BATCH) == pytest.approx(2 * 0.010 + 0.006 * 2 * MAX_BATCH)
    line.add(8, 4 * 0.058)  # the machine just got busy: four times slower
    slow = line.seconds(8)
    assert slow >= 4 * 0.058  # one slow call is enough to refuse what would now be late
    line.add(8, 0.058)
    assert 0.5 * slow < line.seconds(8) < slow  # a fast call lowers it by a share only
    single = CallTime()
    single.add(4, 0.1)  # one batch size: no fixed part can be told apart
    assert single.seconds(4) == pytest.approx(0.1) and single.seconds(8) == pytest.approx(0.2)


def test_a_request_whose_wait_ended_before_its_batch_fails_at_once_unembedded(gate):
    service, first = busy_service(gate, per_text=0.0)
    future, = service._request(["late"], 0.0)  # its deadline passes while the model is busy
    release_after_queued(gate, service, [first], "on time", queued=2)
    with pytest.raises(EmbedTimeout, match="ended before"):
        future.result(60)
    assert gate.calls == [["first"], ["on time"]]


def test_bulk_work_embeds_texts_of_similar_lengths_together_in_the_callers_order():
    calls: list[list[str]] = []

    def by_length(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts])

    service = EmbeddingService(Embedder.from_callable(by_length, name="len", cache_bytes=0))
    rng = np.random.default_rng(0)
    texts = [f"{i}:" + "x" * int(rng.integers(0, 300)) for i in range(4 * BULK_CHUNK + 5)]
    try:
        vectors = service.embed(texts)
    finally:
        service.close(60)
    norms = np.hypot([len(t) for t in texts], 1.0)
    np.testing.assert_allclose(vectors[:, 0], [len(t) for t in texts] / norms, rtol=1e-6)
    assert sorted(t for call in calls for t in call) == sorted(texts)
    assert all(len(call) <= BULK_CHUNK for call in calls)
    # Each model call's texts are no longer than the next call's: no call pads a short text to
    # a long one it did not need to wait for.
    assert all(max(map(len, a)) <= min(map(len, b)) for a, b in zip(calls, calls[1:]))


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_inside_the_model_reaches_its_waiter_unchanged_and_the_worker_goes_on(
        interrupt: type[BaseException]) -> None:
    # A KeyboardInterrupt is the caller's, not a fault of the embedder's: wrapped in an
    # EmbedderError it would become one (a call sent to the LLM, a refit that "failed").
    raised = [True]

    def embed(texts: list[str]) -> np.ndarray:
        if raised[0]:
            raised[0] = False
            raise interrupt()
        return np.ones((len(texts), 4))

    service = EmbeddingService(Embedder.from_callable(embed, name="interrupted", cache_bytes=0))
    with pytest.raises(interrupt):
        service.embed(["a", "b"])
    assert service.embed_one("c", 60.0).shape == (4,)
