"""The heart of the library: the path of one call through the engine, step by step.

A small vector task keeps every decision controlled: texts ``c<k> ...`` embed near centre ``k``
(label ``l<k>``), so a fitted router answers them confidently, and ``ood <a> <b>`` embeds along
centre ``a`` minus twice centre ``b``, where the linear surrogate is confident (label ``l<a>``)
but no training trace lies: the out-of-distribution check must veto it, so those calls always
reach the LLM.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest
from _wait import until

import tracer_wrap.names as n
from tracer_wrap import (
    Embedder,
    Plan,
    Price,
    Reply,
    TracedTask,
    TraceStore,
    Usage,
    background,
    engine,
    flush,
)

DIM, CLASSES = 16, 4
CENTRES = np.random.default_rng(0).standard_normal((CLASSES, DIM))
CENTRES /= np.linalg.norm(CENTRES, axis=1, keepdims=True)


def vector_of(text: str) -> np.ndarray:
    words = text.split()
    if words[0] == "ood":
        return CENTRES[int(words[1])] - 2 * CENTRES[int(words[2])]
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return CENTRES[int(words[0][1:])] + 0.15 * np.random.default_rng(seed).standard_normal(DIM)


def embed(texts: list[str]) -> np.ndarray:
    return np.array([vector_of(t) for t in texts])


EMBEDDER = Embedder.from_callable(embed, name="centres")


def label_of_text(text: str) -> str:
    words = text.split()
    return f"l{words[1]}" if words[0] == "ood" else f"l{words[0][1:]}"


def new_task(tmp_path: Path, **options: object) -> TracedTask:
    settings: dict = dict(embedder=EMBEDDER, target=0.9, min_traces=100, refit_every=None,
                          audit_rate=0.0, refresh_seconds=0, labels=[f"l{k}" for k in range(4)])
    settings.update(options)
    return TracedTask("t", store=TraceStore(tmp_path / "store"), **settings)


def fitted_task(tmp_path: Path, **options: object) -> TracedTask:
    """A task whose store holds 600 traces and a certified router, with fresh statistics."""
    trainer = new_task(tmp_path, **options)
    for i in range(600):
        trainer.record(trainer.route(f"c{i % CLASSES} train {i}"), f"l{i % CLASSES}")
    trainer.refit()
    trainer.close()
    task = new_task(tmp_path, **options)
    assert task.router is not None and task.router.threshold is not None
    return task


def never(label: str = "") -> str:
    raise AssertionError("the LLM must not be called")


def counters(task: TracedTask) -> dict[str, int]:
    task.flush()
    return task.store.counters(task.task)


# -- plans -----------------------------------------------------------------------------------


def test_without_a_router_every_call_goes_to_the_llm_and_becomes_a_calibrating_trace(tmp_path):
    task = new_task(tmp_path)
    plan = task.route("c1 first")
    assert (plan.local, plan.traced, plan.answering, plan.reason) == (
        False, True, False, "no router fitted yet")
    assert task.record(plan, "l1") == "l1"
    task.flush()
    (trace,) = task.store.traces("t")
    assert trace.exchangeable and trace.origin == "llm" and trace.router_label is None
    # No version served: the call reached the LLM for sure.
    assert trace.served_version is None and trace.audit_p == 1.0
    assert counters(task) == {"calls": 1, "llm": 1, "new_valid_traces": 1}


def test_a_local_answer_skips_the_llm_and_is_counted_once(tmp_path):
    task = fitted_task(tmp_path)
    before = task.store.count("t")
    assert task.call("c2 fresh input", never) == "l2"
    assert task.stats.local == 1 and task.stats.llm == 0
    assert task.store.count("t") == before  # a local answer is no trace
    assert counters(task)["local"] == 1


def test_deferred_calls_outside_the_audit_slice_are_no_uniform_draw(tmp_path):
    task = fitted_task(tmp_path, audit_rate=0.0)
    # Halfway between two centres: the surrogate is unsure, so the call goes to the LLM.
    plans = [task.route(vector=(CENTRES[0] + CENTRES[1]) / 2 + 0.01 * k * CENTRES[2])
             for k in range(3)]
    plan = next(p for p in plans if not p.local)
    assert plan.answering and plan.decision is not None and not plan.decision.local
    task.record(plan, "l0", text="between zero and one")
    task.flush()
    trace = next(t for t in task.store.traces("t") if t.input == "between zero and one")
    assert not trace.exchangeable and trace.router_label == plan.decision.label
    # The deferred stratum of the served version: every such call reaches the LLM.
    assert trace.served_version == task.version == plan.version and trace.audit_p == 1.0
    # An answer recorded without a plan while a version answers: its draw is unknown.
    task.record(None, "l1", text="recorded without a plan")
    task.flush()
    trace = next(t for t in task.store.traces("t") if t.input == "recorded without a plan")
    assert trace.served_version == task.version and trace.audit_p is None


def test_only_an_answer_into_an_empty_buffer_wakes_the_worker(tmp_path, monkeypatch):
    """The worker writes whatever is buffered when it runs: the answers of a burst wake it once,
    not once each (each wake-up ran a store transaction beside the caller's event loop)."""
    task = new_task(tmp_path)
    woken: list[int] = []
    monkeypatch.setattr(background, "wake", lambda: woken.append(1))
    with task._drain_lock:  # no write empties the buffer meanwhile
        for i in range(5):
            task.record(None, "l1", text=f"burst {i}")
    assert len(woken) == 1
    assert task.flush()
    task.record(None, "l2", text="after the burst")
    assert len(woken) == 2 and task.flush()
    assert sum(t.input.startswith(("burst", "after")) for t in task.store.traces("t")) == 6


def test_out_of_distribution_inputs_are_deferred_although_the_surrogate_is_confident(tmp_path):
    task = fitted_task(tmp_path)
    router, ood = task.router, task.serving.served().ood
    assert router is not None and ood is not None
    # Directions away from every centre on which the surrogate alone would answer locally.
    candidates = [CENTRES[a] - s * CENTRES[b] for a in range(4) for b in range(4) if a != b
                  for s in (0.5, 1.0, 1.5, 2.0)]
    confident = [v / np.linalg.norm(v) for v in candidates
                 if router.route(None, v / np.linalg.norm(v)).local]
    far = [v for v in confident if ood.score(v) < ood.cut]
    assert far, "no confident out-of-distribution direction to test with"
    plans = [task.route(vector=v) for v in far]
    assert not any(p.local for p in plans)
    assert all(p.reason.startswith("out of distribution") for p in plans)
    assert task.stats.outliers == len(far)


def test_a_declared_label_without_traces_gets_the_name_check_until_its_traces_arrive(tmp_path):
    # Five declared labels, traces of four; the fifth intent is worded like the first (its
    # centre leans towards l0's). Label names embed between their centre and a direction shared
    # by every name (a name embeds near, not on, its intent's queries).
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((24, 6)))[0].T
    centres, shared = basis[:5].copy(), basis[5]
    centres[4] = (centres[0] + centres[4]) / np.sqrt(2)

    def vector(text: str) -> np.ndarray:
        if text.startswith("l"):  # a label's name
            return (centres[int(text[1:])] + shared) / np.sqrt(2)
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        return centres[int(text.split()[0][1:])] + 0.1 * np.random.default_rng(seed).normal(
            size=24)

    embedder = Embedder.from_callable(lambda texts: np.array([vector(t) for t in texts]),
                                      name="named centres")
    # Inline refits: the first trace of l4 (a label the served version never saw) asks for one.
    task = new_task(tmp_path, embedder=embedder, labels=[f"l{k}" for k in range(5)],
                    refit_executor="inline")
    for i in range(600):
        task.record(task.route(f"c{i % 4} train {i}"), f"l{i % 4}")
    task.refit()
    ood, version = task.serving.served().ood, task.store.current_version("t")
    assert ood is not None and ood.names is not None and version is not None
    assert task.store.manifest("t", version)["ood"]["unseen_labels"] == ["l4"]
    # Queries of the unseen intent that the surrogate alone would answer with a neighbour.
    mixes = [centres[4] + s * basis[4] for s in (-0.2, 0.0, 0.2, 0.4, 0.6)]
    mixes = [v / np.linalg.norm(v) for v in mixes]
    confident = [v for v in mixes if task.router is not None
                 and task.router.route(None, v).local]
    assert confident, "no confident query of the unseen intent to test with"
    plans = [task.route(vector=v) for v in confident]
    assert all(not p.local and "never seen in training" in p.reason for p in plans)
    # Once the label has traces, the next version has no name check.
    for i in range(200):
        task.record(task.route(f"c4 arrived {i}"), "l4")
    task.refit()  # inline: no other refit can hold the claim
    served = task.serving.served()
    assert served.version != version and served.ood is not None and served.ood.names is None
    task.close()


def test_shadow_mode_answers_nothing_and_scores_what_it_would_have_answered(tmp_path):
    task = fitted_task(tmp_path, routing=False)
    calls = [task.call(f"c{i % 4} shadow {i}", lambda i=i: f"l{i % 4}") for i in range(20)]
    assert calls == [f"l{i % 4}" for i in range(20)] and task.stats.local == 0
    report = task.shadow_report()
    assert report["calls"] == 20 and report["would_answer_locally"] >= 15
    assert report["agreement"] == 1.0
    # Routing is off: every call reached the LLM, so its traces are an unbiased sample.
    assert all(t.exchangeable for t in task.store.traces("t"))
    shadowed = [t for t in task.store.traces("t") if "shadow" in t.input]
    assert all(t.served_version is None and t.audit_p == 1.0 for t in shadowed)


def test_a_tripped_breaker_stops_local_answers_until_reset(tmp_path):
    task = fitted_task(tmp_path)
    task.store.set_setting("t", n.SETTING_BREAKER, {"version": 1, "reason": "test", "at": 0})
    plan = task.route("c1 while tripped")
    assert not plan.local and plan.reason.startswith("the drift breaker tripped")
    assert not plan.answering and task.stats.breaker == 1
    breaker = task.serving.breaker
    assert breaker is not None
    breaker.reset()
    assert task.route("c1 after reset").local


def test_audit_samples_go_to_the_llm_calibrate_and_feed_the_breaker(tmp_path):
    task = fitted_task(tmp_path, audit_rate=1.0)
    plan = task.route("c3 audited")
    assert plan.audit and not plan.local and plan.reason == "audit sample"
    assert task.record(plan, "l3") == "l3"
    task.flush()
    trace = next(t for t in task.store.traces("t") if t.input == "c3 audited")
    assert trace.origin == "audit" and trace.exchangeable and trace.router_label == "l3"
    assert trace.served_version == task.version and trace.audit_p == plan.audit_p == 1.0
    assert task.store.counter("t", n.counter_breaker(0, "n")) == 1
    assert counters(task)["audits"] == 1


def test_the_audit_slice_is_drawn_whatever_the_router_decides(tmp_path):
    # At rate 1 every call is in the slice: the deferred ones are uniform draws of traffic too
    # (exchangeable), so the slice's traces together are a uniform draw (refit.calibration_chances).
    task = fitted_task(tmp_path, audit_rate=1.0)
    between = (CENTRES[0] + CENTRES[1]) / 2
    plan = next(p for p in (task.route(vector=between + 0.01 * k * CENTRES[2]) for k in range(3))
                if not p.audit)
    assert plan.sampled and not plan.local and plan.decision is not None
    assert not plan.decision.local and plan.answering
    task.record(plan, "l0", text="between zero and one, in the slice")
    task.flush()
    trace = next(t for t in task.store.traces("t")
                 if t.input == "between zero and one, in the slice")
    assert trace.exchangeable and trace.origin == "llm"
    assert trace.served_version == task.version and trace.audit_p == 1.0
    audit = task.route("c3 audited")
    assert audit.sampled and audit.audit


def test_an_audit_sample_records_the_probability_it_was_drawn_with(tmp_path):
    task = fitted_task(tmp_path, audit_rate=lambda n_calibration: 0.25,
                       rng=random.Random(7))
    plans = [task.route(f"c{i % 4} maybe audited {i}") for i in range(400)]
    audited = [p for p in plans if p.audit]
    assert all(p.audit_p == 0.25 for p in audited)
    # Drawn once per call the router would answer, at the rate recorded (five standard errors).
    drawn = sum(p.local or p.audit for p in plans)
    assert abs(len(audited) - 0.25 * drawn) < 5 * (drawn * 0.25 * 0.75) ** 0.5, len(audited)
    for plan in audited:
        task.record(plan, label_of_text(plan.text or ""))
    task.flush()
    traces = [t for t in task.store.traces("t") if "maybe audited" in t.input]
    assert len(traces) == len(audited)
    assert all(t.audit_p == 0.25 and t.served_version == task.version for t in traces)


def test_untraceable_inputs_go_to_the_llm_untraced(tmp_path):
    task = fitted_task(tmp_path)
    before = task.store.count("t")
    for bad in (None, 42, "", "   ", "x" * 20_001):
        assert task.call(bad, lambda: "l0") == "l0"
    assert task.store.count("t") == before and task.stats.skipped == 5
    assert task.route(None).reason == "the input is not text (NoneType)"


def test_disabled_by_the_environment(tmp_path, monkeypatch):
    task = fitted_task(tmp_path)
    monkeypatch.setenv("TRACER_WRAP_DISABLE", "1")
    before = task.store.count("t")
    assert task.call("c1 disabled", lambda: "l1") == "l1"
    assert task.store.count("t") == before


# -- replies: how each path reads and builds its results -------------------------------------


def test_reply_builds_local_answers_and_reads_labels_and_usage(tmp_path):
    task = fitted_task(tmp_path)
    reply: Reply[dict] = Reply(label_of=lambda r: r["label"], build=lambda label: {"local": label},
                               usage_of=lambda r: Usage(r["in"], r["out"]))
    assert task.call("c0 built", never, reply) == {"local": "l0"}
    answer = {"label": "l1", "in": 30, "out": 2}
    assert task.call("ood 1 0", lambda: answer, reply) is answer
    c = counters(task)
    assert (c["local"], c["llm"], c["input_tokens"], c["output_tokens"], c["usage_calls"]) == (
        1, 601, 30, 2, 1)  # 600 of the LLM answers trained the router


def test_a_reply_that_cannot_build_sends_the_call_to_the_llm(tmp_path, caplog):
    task = fitted_task(tmp_path)
    raw = Reply(build=None)  # a raw HTTP response can never be answered locally
    assert task.call("c0 raw", lambda: "l0", raw) == "l0"

    def broken(label: str) -> str:
        raise ValueError("cannot build")

    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        assert task.call("c0 broken build", lambda: "l0", Reply(build=broken)) == "l0"
    assert task.stats.errors == 1 and task.stats.local == 0 and task.stats.llm == 2
    assert any("local answer failed" in r.getMessage() for r in caplog.records)


def test_results_whose_label_arrives_later_are_traced_when_it_does(tmp_path):
    task = fitted_task(tmp_path)
    pending: list = []

    def later(result: str, done) -> str:
        pending.append(done)
        return f"stream of {result}"

    reply: Reply[str] = Reply(later=later)
    assert task.call("ood 0 1 streamed", lambda: "chunks", reply) == "stream of chunks"
    assert task.call("ood 0 2 abandoned", lambda: "chunks", reply) == "stream of chunks"
    count = task.store.count("t")
    pending[0]("l0", Usage(5, 1))  # the first stream was read to the end; the second never is
    task.flush()
    assert task.store.count("t") == count + 1 and task.stats.llm == 1
    assert counters(task)["input_tokens"] == 5


def test_llm_errors_propagate_unchanged_and_trace_nothing(tmp_path):
    task = fitted_task(tmp_path)
    before = task.store.count("t")

    def failing() -> str:
        raise TimeoutError("the LLM timed out")

    with pytest.raises(TimeoutError, match="timed out"):
        task.call("ood 0 3", failing)
    assert task.store.count("t") == before and task.stats.llm == 0 and task.stats.errors == 0


async def _acall(task: TracedTask, text: str, answer=lambda label: label) -> str:
    async def llm() -> str:
        return answer(label_of_text(text))
    return await task.acall(text, llm)


def test_async_calls_take_the_same_path(tmp_path):
    import asyncio

    task = fitted_task(tmp_path)
    assert asyncio.run(_acall(task, "c1 async")) == "l1"
    assert asyncio.run(_acall(task, "ood 2 3")) == "l2"
    assert (task.stats.local, task.stats.llm) == (1, 1)


# -- the served version ------------------------------------------------------------------------


def test_other_processes_versions_are_picked_up_within_refresh_seconds(tmp_path):
    now = [0.0]
    clock = {"monotonic": lambda: now[0], "refresh_seconds": 1.0}
    publisher = fitted_task(tmp_path, **clock)
    follower = new_task(tmp_path, **clock)
    assert follower.version == publisher.version == 1
    publisher.refit()
    assert publisher.version == 2  # the publishing process serves it at once
    assert follower.version == 1  # others within refresh_seconds
    now[0] += 1.5
    background.wake()  # the background worker refreshes the follower's snapshot
    deadline = time.monotonic() + 60
    while follower.version != 2:
        assert time.monotonic() < deadline, "the follower never picked up version 2"
        time.sleep(0.01)


def test_a_version_fitted_with_another_embedder_is_not_served(tmp_path, caplog):
    fitted_task(tmp_path)
    other = new_task(tmp_path, embedder=Embedder.from_callable(embed, name="another"))
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        plans = [other.route(f"c1 other {i}") for i in range(5)]
    assert other.router is None and not any(p.local for p in plans)
    assert "fitted with embedder 'centres'" in plans[0].reason
    assert sum("router load failed" in r.getMessage() for r in caplog.records) == 1


# -- accounting ------------------------------------------------------------------------------


def test_counters_reach_the_store_in_the_background(tmp_path):
    task = fitted_task(tmp_path, price=0.01)
    for i in range(10):
        task.call(f"c{i % 4} counted {i}", never)
    deadline = time.monotonic() + 60
    while task.store.counter("t", "local") < 10:  # written by the flushing thread, not by us
        assert time.monotonic() < deadline, "counters never reached the store"
        time.sleep(0.05)
    assert task.store.get_setting("t", n.SETTING_PRICE) == Price(per_call=0.01).as_dict()


def test_savings_are_local_answers_at_the_mean_llm_cost(tmp_path):
    from tracer_wrap import savings

    task = fitted_task(tmp_path, price={"per_call": 0.001, "input_per_mtok": 1000.0})
    for i in range(8):
        task.call(f"c{i % 4} saving {i}", never)
    reply: Reply[str] = Reply(usage_of=lambda r: Usage(100, 0))
    task.call("ood 0 1 paid", lambda: "l0", reply)
    flush()
    report = savings(task.store, "t")
    per_call = 0.001 + 100 * 1000.0 / 1e6
    assert report["cost_per_llm_call"] == pytest.approx(per_call)
    assert report["saved"] == pytest.approx(8 * per_call)
    assert report["llm_cost"] == pytest.approx(601 * per_call)  # 600 training answers + 1


def test_a_plan_is_immutable_data(tmp_path):
    plan = new_task(tmp_path).route("c0 x")
    assert isinstance(plan, Plan)
    with pytest.raises(AttributeError):
        plan.local = True  # type: ignore[misc]


# -- the wait for the embedding ------------------------------------------------------------------


def test_the_wait_for_an_embedding_follows_the_llms_latency():
    from tracer_wrap.embedding import EmbedWait

    wait = EmbedWait(timeout=1.0, budget=0.25)
    for seconds in (0.2,) * (EmbedWait.MIN_SAMPLES - 1):
        wait.llm_took(seconds)
    assert wait.seconds() == 1.0  # too few answers timed yet
    wait.llm_took(0.6)
    assert wait.seconds() == pytest.approx(0.25 * 0.2)  # the median, not the mean
    for _ in range(EmbedWait.WINDOW):
        wait.llm_took(0.001)  # an LLM stub: the floor
    assert wait.seconds() == EmbedWait.FLOOR
    for _ in range(EmbedWait.WINDOW):
        wait.llm_took(8.0)  # a slow LLM: never more than the timeout
    assert wait.seconds() == 1.0
    unbounded = EmbedWait(timeout=1.0, budget=None)
    for _ in range(EmbedWait.WINDOW):
        unbounded.llm_took(0.001)
    assert unbounded.seconds() == 1.0


def test_the_wait_is_the_median_of_the_last_window_of_latencies():
    """The window is kept sorted as answers come and go: the wait is always budget x the exact
    median of the last WINDOW latencies (odd and even counts, ties, evictions)."""
    import statistics

    from tracer_wrap.embedding import EmbedWait

    rng = random.Random(7)
    wait = EmbedWait(timeout=1e9, budget=1.0)
    seen: list[float] = []
    for i in range(5 * EmbedWait.WINDOW):
        seconds = rng.choice([0.5, 1.0, 2.0]) if i % 3 else rng.uniform(0.1, 3.0)
        wait.llm_took(seconds)
        seen.append(seconds)
        if len(seen) >= EmbedWait.MIN_SAMPLES:
            expected = statistics.median(seen[-EmbedWait.WINDOW:])
            assert wait.seconds() == max(EmbedWait.FLOOR, expected)


@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_call_waits_for_its_embedding_a_share_of_the_llms_latency_then_goes_to_it(
        tmp_path, run):
    import asyncio
    import threading

    fitted_task(tmp_path)
    free, hang = threading.Event(), threading.Event()

    def stuck(texts: list[str]) -> np.ndarray:
        if hang.is_set():
            free.wait()
        return embed(texts)

    # The LLM "takes" 0.4 s by the task's clock: once 8 answers were timed, a call waits 0.1 s
    # for its embedding (embed_budget 0.25) instead of embed_timeout.
    now = [0.0]

    def llm(label: str) -> str:
        now[0] += 0.4
        return label

    task = new_task(tmp_path, embedder=Embedder.from_callable(stuck, name="centres"),
                    embed_timeout=0.2, embed_budget=0.25, monotonic=lambda: now[0])
    texts = [f"c{i % CLASSES} slow {i}" for i in range(20)]
    # The model loads and is timed, then hangs: each call is admitted and waits (an embedder
    # still loading refuses all but its first caller at once; see the next test).
    task.embedding.embed_one("c0 loads the model", 60.0)
    task.embedding.embed_one("c1 is timed", 60.0)
    hang.set()
    try:
        for text in texts:
            if run == "sync":
                answer = task.call(text, lambda t=text: llm(label_of_text(t)))
            else:
                answer = asyncio.run(_acall(task, text, llm))
            assert answer == label_of_text(text)
        # The first 8 waited the whole embed_timeout (a fault: the embedder may hang); the others
        # were cut short by the LLM's latency, which is no fault.
        assert (task.stats.errors, task.stats.late, task.stats.llm) == (8, 12, 20)
        task.flush()
        traces = [t for t in task.store.traces("t") if "slow" in t.input]
        # Which inputs missed their wait depends on the machine, not on a design: they train but
        # do not calibrate as a draw of the served version's deferred stratum.
        assert len(traces) == 20
        assert all(not t.exchangeable and t.audit_p is None for t in traces)
        assert all(t.served_version == task.version for t in traces)
    finally:
        free.set()


@pytest.mark.parametrize("run", ["sync", "async"])
def test_while_the_embedding_model_loads_calls_go_to_the_llm_at_once(tmp_path, run):
    import asyncio
    import threading

    fitted_task(tmp_path)
    free = threading.Event()

    def loading(texts: list[str]) -> np.ndarray:
        free.wait()  # the first model call loads the model: seconds on a busy machine
        return embed(texts)

    task = new_task(tmp_path, embedder=Embedder.from_callable(loading, name="centres"),
                    embed_timeout=0.2)
    texts = [f"c{i % CLASSES} new {i}" for i in range(20)]
    try:
        for text in texts:
            if run == "sync":
                answer = task.call(text, lambda t=text: label_of_text(t))
            else:
                answer = asyncio.run(_acall(task, text, lambda label: label))
            assert answer == label_of_text(text)
        # The first call waited embed_timeout for the load, the others were refused at once:
        # all late, no fault (a load takes seconds; a call at a process's start is no sign of a
        # hang), and the answer is the LLM's.
        assert (task.stats.errors, task.stats.late, task.stats.llm) == (0, 20, 20)
        assert all("still loading" in task.route(t).reason for t in texts[:3])
    finally:
        free.set()
    until(lambda: task.route("c1 after the load").local, "a local answer once the model is up")


def test_a_load_that_runs_past_its_bound_is_a_fault(tmp_path, monkeypatch, caplog):
    import threading

    fitted_task(tmp_path)
    free = threading.Event()

    def loading(texts: list[str]) -> np.ndarray:
        free.wait()
        return embed(texts)

    monkeypatch.setattr(engine, "LOAD_FAULT_SECONDS", 0.0)  # any load has run "too long"
    task = new_task(tmp_path, embedder=Embedder.from_callable(loading, name="centres"),
                    embed_timeout=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
            for i in range(3):
                assert task.call(f"c0 stuck {i}", lambda: "l0") == "l0"
        assert (task.stats.errors, task.stats.late, task.stats.llm) == (3, 0, 3)
        assert "routing failed" in caplog.text
    finally:
        free.set()
