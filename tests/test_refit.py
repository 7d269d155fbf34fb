"""Refit policies, executors and the one-refit-at-a-time claim, across real processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _wait import until

from tracer_wrap import Embedder, GateRefused, TracedTask, TraceStore, names
from tracer_wrap.model.gate import binomial_pvalue
from tracer_wrap.refit import (
    RefitRunner,
    RefitState,
    calibration_chances,
    calibration_coins,
    refit_after_delay,
    refit_after_traces,
    refit_never,
    refit_on_doubling,
)
from tracer_wrap.store import Trace
from tracer_wrap.versions import publish

DIM, CLASSES = 16, 4
_CENTERS = np.random.default_rng(0).standard_normal((CLASSES, DIM))
_CENTERS /= np.linalg.norm(_CENTERS, axis=1, keepdims=True)
SPAWN = multiprocessing.get_context("spawn")


def synth_embed(texts: list[str]) -> np.ndarray:
    """Text ``c<k> ...`` -> centre k plus noise fixed by the text (same in every process)."""
    rows = []
    for text in texts:
        k = int(text.split()[0][1:])
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        rows.append(_CENTERS[k] + 0.15 * np.random.default_rng(seed).standard_normal(DIM))
    return np.array(rows)


def slow_refit_embed(texts: list[str]) -> np.ndarray:
    """Like synth_embed, but a refit's batch announces itself and then hangs (to be killed)."""
    if len(texts) > 1:
        Path(os.environ["TW_TEST_READY"]).write_text(str(os.getpid()))
        time.sleep(600)
    return synth_embed(texts)


def make_task(store: str | TraceStore, **kw: object) -> TracedTask:
    # refresh_seconds=0: every call re-reads the store's current version, so tests that compare
    # task objects (or processes) need not wait for a cache to expire.
    options: dict = dict(embedder=Embedder.from_callable(synth_embed, name="synth"), target=0.9,
                         min_traces=100, refit_every=None, audit_rate=0.0, breaker=False,
                         refresh_seconds=0)
    options.update(kw)
    return TracedTask("t", store=store, **options)


def feed(task: TracedTask, n: int, prefix: str = "") -> None:
    for i in range(n):
        task.call(f"c{i % CLASSES} {prefix}{i}", lambda i=i: f"l{i % CLASSES}")


# -- policies --------------------------------------------------------------------------------


def test_policies_compose_like_tenacity() -> None:
    fresh, stale = RefitState(600, 10.0, 1000), RefitState(5, 7200.0, 1000)
    either = refit_after_traces(500) | refit_after_delay(3600)
    both = refit_after_traces(500) & refit_after_delay(3600)
    assert either(fresh) and either(stale)
    assert not both(fresh) and not both(stale) and both(RefitState(600, 7200.0, 1000))
    assert not refit_after_delay(10)(RefitState(0, 1e9, 10))  # nothing new: nothing to learn
    assert not refit_never(fresh)


def test_only_uniform_draws_of_traffic_calibrate() -> None:
    def trace(seq: int, **kw: object) -> Trace:
        return Trace(f"x{seq}", "a", seq=seq, **kw)  # type: ignore[arg-type]

    traces = [
        trace(1),                                                   # nothing answered
        trace(2, exchangeable=False),                               # not drawn like traffic
        trace(3, origin="audit", served_version=3, audit_p=0.02),   # v3's slice: an audit
        trace(4, served_version=3, audit_p=1.0),                    # v3's slice: deferred
        trace(5, exchangeable=False, served_version=3, audit_p=1.0),  # deferred outside it
        # Not routed while v3 answered (its embedding was late, or routing failed): no slice
        # coin was drawn for it.
        trace(6, exchangeable=False, served_version=3),
    ]
    # The history's share for plain traffic (1200 / 1 plain trace, clipped to 0.4), the slice
    # always, the rest never: they train.
    assert calibration_chances(traces).tolist() == [0.4, 0.0, 1.0, 1.0, 0.0, 0.0]
    # Traces logged before the last breaker trip only train.
    assert calibration_chances(traces, after_seq=3).tolist() == [0.0] * 3 + [1.0, 0.0, 0.0]
    # The plain share is sized by the plain traces that may still calibrate: after a trip, those
    # logged since (500: 0.4), not the 4,000 before it (4,500 in all would give 0.3).
    long = [trace(seq) for seq in range(1, 4501)]
    assert set(calibration_chances(long, after_seq=4000)[4000:].tolist()) == {0.4}
    assert set(calibration_chances(long).tolist()) == {0.3}


def test_the_slice_gives_valid_pvalues_at_the_null_where_audits_alone_do_not() -> None:
    # One served period with its audit slice, split by the chances calibration_chances gives its
    # traces; agreement exactly at target on the whole traffic, 0.99 on what the version answers:
    # P(p <= u) <= u over many histories for the exact test on the calibration traces. The same
    # test on the audit samples alone, without the slice's deferred inputs, is not valid.
    rate = 0.05
    chance = calibration_chances([
        Trace("a", "x", seq=1, origin="audit", served_version=1, audit_p=rate),
        Trace("s", "x", seq=2, served_version=1, audit_p=1.0),
        Trace("d", "x", seq=3, exchangeable=False, served_version=1, audit_p=1.0)])
    rng = np.random.default_rng(8)
    target, handled_share, draws, n = 0.9, 0.6, 2000, 3000
    deferred_agreement = (target - handled_share * 0.99) / (1 - handled_share)
    exact, wrong = [], []
    for _ in range(draws):
        handled = rng.random(n) < handled_share
        sliced = rng.random(n) < rate
        kind = np.where(handled, 0, np.where(sliced, 1, 2))  # audit, slice deferred, deferred
        cal = (~handled | sliced) & (rng.random(n) < chance[kind])
        agree = (rng.random(n) < np.where(handled, 0.99, deferred_agreement))[cal]
        kind = kind[cal]
        exact.append(binomial_pvalue(int(agree.sum()), agree.size, target))
        audits = kind == 0
        wrong.append(binomial_pvalue(int(agree[audits].sum()), int(audits.sum()), target))
    for u in (0.01, 0.05, 0.1, 0.2):
        assert np.mean(np.array(exact) <= u) <= u + 3 * np.sqrt(u * (1 - u) / draws)
    assert np.mean(np.array(wrong) <= 0.05) > 0.2


def test_calibration_coins_are_uniform_and_fixed_by_the_sequence_number() -> None:
    from scipy.stats import kstest

    seqs = np.arange(1, 20_001)
    coins = calibration_coins(seqs)
    assert np.all((coins >= 0) & (coins < 1))
    assert kstest(coins, "uniform").pvalue > 1e-4  # fails on a biased or constant hash
    # Neighbours are not correlated (a counter fed to a weak hash would be).
    assert abs(np.corrcoef(coins[:-1], coins[1:])[0, 1]) < 0.05
    assert np.array_equal(calibration_coins(seqs[::7]), coins[::7])  # whatever else exists


def test_a_refit_calibrates_on_the_traces_whose_coins_say_so(tmp_path: Path) -> None:
    task = make_task(str(tmp_path), audit_rate=0.3)

    def expected(fresh_after: int | None = None) -> int:
        traces = list(task.store.iter_traces("t", valid_only=True))
        seqs = np.array([t.seq for t in traces])
        calibrates = calibration_coins(seqs) < calibration_chances(traces)
        if fresh_after is not None:  # an incumbent re-certified on the fresh ones
            calibrates &= seqs > fresh_after
        return int(calibrates.sum())

    feed(task, 400)
    router = task.refit()
    # A fresh draw from the refit's seed would hit this count by chance only (sd ~10).
    assert router.info["n_calibration"] == expected()
    assert router.certificate_for(0.9).certified  # the later traces are of a served period
    feed(task, 400, "later")
    audits = [t for t in task.store.iter_traces("t") if t.origin == "audit"]
    # Audit samples always calibrate, whatever their coin (more than a third would not).
    assert sum(calibration_coins(np.array([t.seq for t in audits])) >= 0.4) > 10
    later = task.refit()
    fresh = (router.info["max_seq"]
             if later.info.get("publish", {}).get("served") == "incumbent" else None)
    assert later.info["n_calibration"] == expected(fresh)
    task.close()


def test_time_policy_uses_the_injected_clock(tmp_path: Path) -> None:
    now = [1000.0]
    task = make_task(str(tmp_path), refit_policy=refit_after_delay(60), refit_executor="inline",
                     clock=lambda: now[0])
    feed(task, 150)  # never refitted before: due at once
    assert task.version == 1
    feed(task, 50, "b")
    assert task.version == 1  # 0 s later
    now[0] += 61
    feed(task, 1, "c")
    assert task.store.counter("t", "refits") == 2


def test_inline_refit_every_n_traces_swaps_version(tmp_path: Path) -> None:
    task = make_task(str(tmp_path), refit_every=300, refit_executor="inline", min_traces=300)
    feed(task, 299)
    assert task.router is None
    feed(task, 1, "x")
    assert task.version == 1 and task.router is not None and task.router.threshold is not None
    assert task.stats.errors == 0


def test_early_refits_double_the_history_then_come_every_refit_every(tmp_path: Path) -> None:
    # Shadow mode: every call reaches the LLM, so every call is a new trace.
    task = make_task(str(tmp_path), min_traces=200, refit_every=500, refit_executor="inline",
                     routing=False)
    for i in range(1850):
        task.call(f"c{i % CLASSES} n{i}", lambda i=i: f"l{i % CLASSES}")
    until(lambda: not task.refitter.runner.running, "the last refit to finish")
    # The background worker may start a due refit a few traces after the calling thread would.
    fitted_on = [m["n_traces"] for m in task.store.versions("t")]
    assert len(fitted_on) == 5, fitted_on
    for n, due in zip(fitted_on, (200, 400, 800, 1300, 1800)):
        assert due <= n <= due + 25, fitted_on
    assert task.stats.errors == 0


def test_doubling_policy() -> None:
    never_refitted = float("inf")
    assert refit_on_doubling()(RefitState(1, never_refitted, 200))
    assert not refit_on_doubling()(RefitState(199, 5.0, 400))
    assert refit_on_doubling()(RefitState(200, 5.0, 400))
    either = refit_after_traces(500) | refit_on_doubling()
    assert not either(RefitState(499, 5.0, 1299)) and either(RefitState(500, 5.0, 1300))


def test_a_refit_embeds_only_the_traces_without_a_stored_vector(tmp_path: Path) -> None:
    embedded: list[str] = []

    def counting(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return synth_embed(texts)

    def task_with(name: str, **kw: object) -> TracedTask:
        return make_task(str(tmp_path), embedder=Embedder.from_callable(counting, name=name,
                                                                        cache_bytes=0), **kw)

    task = task_with("synth")
    feed(task, 300)
    assert embedded == []  # no router yet: nothing needed a vector
    task.refit()
    assert len(embedded) == 300
    embedded.clear()
    # Calls routed by the served version are embedded once, when routed; their traces keep it.
    shadow = task_with("synth", routing=False)  # routed, and every call reaches the LLM
    feed(shadow, 40, "routed ")
    shadow.flush()
    assert len(embedded) == 40 and shadow.stats.llm == 40
    embedded.clear()
    imported = [f"c{i % CLASSES} imported {i}" for i in range(25)]
    for i, text in enumerate(imported):
        task.store.append("t", text, f"l{i % CLASSES}")
    task.refit()
    assert sorted(embedded) == sorted(imported)
    embedded.clear()
    task.refit()
    assert embedded == []
    # Another embedder: no stored vector is in its space, so every trace is embedded again.
    valid = len(task.store.traces("t", valid_only=True))
    task_with("synth-v2").refit()
    assert len(embedded) == valid
    embedded.clear()
    task.refit()  # the first embedder's vectors were replaced: embedded once more, then kept
    assert len(embedded) == valid
def test_a_refit_contests_the_served_version_on_fresh_traces(tmp_path: Path) -> None:
    task = make_task(str(tmp_path), routing=False)  # every call traced, so every trace calibrates
    feed(task, 300)
    first = task.refit()
    assert "publish" not in first.info and first.info["delta"] == task.options.delta
    feed(task, 600, "later")
    task.refit()
    manifest = task.store.manifest("t", task.store.current_version("t"))
    assert manifest is not None
    record = manifest["publish"]
    assert record["incumbent_version"] == 1 and record["delta_each"] == task.options.delta / 2
    assert record["served"] in ("candidate", "incumbent") and record["incumbent_calibration"] > 0
    # Only traces logged after version 1 read its traces may re-certify it.
    assert record["incumbent_calibration"] <= 600
    task.close()


def test_a_label_never_seen_refits_at_once(tmp_path: Path) -> None:
    # ood_quantile=0.99: nearly every input is deferred as out of distribution, so the LLM
    # answers it while the version answers locally elsewhere (a deferred call).
    task = make_task(str(tmp_path), refit_policy=refit_after_traces(100_000),
                     refit_executor="inline", ood_quantile=0.99)
    feed(task, 300)
    task.refit()
    assert task.version == 1 and task.router is not None and task.router.threshold is not None
    refits = task.store.counter("t", "refits")
    task.call("c0 the first of a new intent", lambda: "brand_new")
    task.flush()
    # One answer: a refit already ran (inline), not waiting for 100,000 traces, and learnt it.
    assert task.store.counter("t", "unseen_labels") == 1
    assert task.store.counter("t", "refits") == refits + 1
    assert task.version == 2 and "brand_new" in task.router.labels
    task.close()


def test_a_label_never_seen_starts_no_refit_while_no_version_answers(tmp_path: Path) -> None:
    # Target 0.9999: version 1 certifies nothing, so it answers nothing locally; a new label is
    # then no drift to guard against, and another refit would only test the gate once more on
    # the same traces.
    task = make_task(str(tmp_path), target=0.9999, targets=(0.9999,),
                     refit_policy=refit_after_traces(100_000), refit_executor="inline")
    feed(task, 300)
    task.refit()
    assert task.version == 1 and task.router is not None and task.router.threshold is None
    refits = task.store.counter("t", "refits")
    for i in range(5):
        task.call(f"c0 a new intent {i}", lambda: "brand_new")
    task.flush()
    assert task.store.counter("t", "refits") == refits and task.version == 1
    assert task.store.counter("t", "unseen_labels") == 0
    task.close()


def test_deferred_answers_naming_a_label_never_seen_feed_the_breaker(tmp_path: Path) -> None:
    # Refits are explicit only, so no refit learns the new label meanwhile (as while a background
    # refit runs); ood_quantile=0.99 defers nearly every input to the LLM.
    task = make_task(str(tmp_path), refit_policy=refit_never, refit_executor="inline",
                     breaker=True, ood_quantile=0.99)
    feed(task, 300)
    task.refit()
    assert task.version == 1 and task.router is not None and task.router.threshold is not None
    calls = 0
    while task.store.counter("t", "breaker_trips") == 0 and calls < 40:
        task.call(f"c{calls % CLASSES} new intent {calls}", lambda: "brand_new")
        calls += 1
    assert task.store.counter("t", "unseen_labels") == calls
    # Each deferred answer naming the new label counted as a disagreement: a few trip it; audits
    # alone (one in fifty calls) would take hundreds of calls.
    assert task.store.counter("t", "breaker_trips") == 1 and 1 < calls <= 10
    task.close()


def test_a_label_only_in_the_versions_calibration_traces_does_not_feed_the_breaker(
        tmp_path: Path) -> None:
    # As above, but the label was among the traces version 1 was fitted on, only in its
    # calibration part (a label too rare to land in the training part): the gate already
    # counted those traces against it, so its later calls are no drift signal.
    task = make_task(str(tmp_path), refit_policy=refit_never, refit_executor="inline",
                     breaker=True, ood_quantile=0.99)
    feed(task, 300)
    task.refit()
    router, ood = task.router, task.serving.served().ood
    assert router is not None and ood is not None and router.threshold is not None
    assert router.info["trace_labels"] == sorted(router.labels)  # every label trained on
    info = {**router.info, "trace_labels": [*router.info["trace_labels"], "rare_intent"]}
    publish(task.store, "t", router.with_certificates(
        router.embedding_certificates, router.certificates if router.has_text_model else None,
        info=info), ood=ood, force=True)
    until(lambda: task.version == 2, "version 2 served")
    for i in range(40):
        task.call(f"c{i % CLASSES} rare intent {i}", lambda: "rare_intent")
    task.flush()
    # Most were deferred (the few answered locally leave no trace): far more than the few
    # deferred answers naming a new label that trip the breaker below.
    assert task.store.counter("t", "unseen_labels") >= 30
    assert task.store.counter("t", "breaker_trips") == 0
    calls = 0
    while task.store.counter("t", "breaker_trips") == 0 and calls < 40:
        task.call(f"c{calls % CLASSES} new intent {calls}", lambda: "brand_new")
        calls += 1
    assert task.store.counter("t", "breaker_trips") == 1 and 1 < calls <= 10
    task.close()


def test_background_thread_refit_serves_meanwhile(tmp_path: Path) -> None:
    task = make_task(str(tmp_path))
    feed(task, 200)
    future = task.refit_in_background()
    assert future is not None
    feed(task, 50, "during")  # calls are served while the refit runs
    assert future.result(timeout=120) is not None
    assert task.version == 1
    task.close()


def test_claim_lets_one_refit_run(tmp_path: Path) -> None:
    task = make_task(str(tmp_path))
    feed(task, 150)
    assert task.store.claim("t", "refit", ttl=60)
    with pytest.raises(GateRefused, match="already running"):
        task.refit()
    task.store.release("t", "refit")
    task.refit()
    assert task.version == 1


def test_refit_waits_for_this_process_s_background_refit(tmp_path: Path) -> None:
    """A script's ``refit()`` while its own background refit runs (the claim is held) waits for
    it, then fits on every trace, instead of raising GateRefused."""
    task = make_task(str(tmp_path))
    feed(task, 200)
    runner = task.refitter.runner
    entered, release = threading.Event(), threading.Event()
    fit, wait = runner.run_fit, runner.wait

    def held_fit(fn, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait()
        return fit(fn, **kwargs)

    def waiting() -> None:  # the explicit refit reached its wait: let the background one end
        release.set()
        wait()

    runner.run_fit, runner.wait = held_fit, waiting  # type: ignore[method-assign]
    try:
        background = task.refit_in_background()
        assert background is not None and entered.wait(120)
        assert task.refit() is not None
        assert background.result(timeout=120) is not None
        assert [m["version"] for m in task.store.versions("t")] == [1, 2]
    finally:
        release.set()
        task.close()


def test_runner_inline_returns_done_future() -> None:
    runner = RefitRunner("inline")
    future = runner.submit(lambda: 42)
    assert future is not None and future.result() == 42


# -- processes ---------------------------------------------------------------------------------


def serve_worker(store_path: str, worker: int, n: int, barrier: object, out: object) -> None:
    # Audits keep traces (and so refits) coming once a router answers most calls.
    task = make_task(store_path, refit_every=100, min_traces=100, audit_rate=0.2)
    barrier.wait(timeout=120)  # type: ignore[attr-defined]
    seen: list[int | None] = []
    failures = llm_calls = 0

    def llm(label: str) -> str:
        nonlocal llm_calls
        # A real LLM call waits on the network, letting the background writer and refits run.
        time.sleep(0.001)
        llm_calls += 1
        return label

    # At least n calls, then on until this process has served two versions and answered locally
    # (refits run in background threads, so how many calls that takes depends on the load).
    for i in range(40 * n):
        try:
            task.call(f"c{i % CLASSES} w{worker} {i}", lambda i=i: llm(f"l{i % CLASSES}"))
        except Exception:
            failures += 1
        seen.append(task.version)
        if (i >= n and len({v for v in seen if v is not None}) >= 2
                and task.stats.local > 0):
            break
    task.close(wait=True)
    barrier.wait(timeout=120)  # type: ignore[attr-defined]
    task.call(f"c0 w{worker} last", lambda: llm("l0"))
    out.put({"worker": worker, "failures": failures, "errors": task.stats.errors,  # type: ignore[attr-defined]
             "llm_calls": llm_calls, "local": task.stats.local,
             "seen": seen, "final": task.version,
             "current": task.store.current_version("t")})


def test_two_processes_share_refits_and_versions(tmp_path: Path) -> None:
    barrier, out = SPAWN.Barrier(2), SPAWN.Queue()
    n = 500
    procs = [SPAWN.Process(target=serve_worker, args=(str(tmp_path), w, n, barrier, out))
             for w in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    store = TraceStore(str(tmp_path))
    traces = store.traces("t")
    # No lost trace: every call that reached the LLM is in the store, once.
    assert sum(t.count for t in traces) == len(traces) == sum(r["llm_calls"] for r in results)
    assert sum(r["local"] for r in results) > 0
    manifests = store.versions("t")
    assert len(manifests) >= 2 and store.counter("t", "refits") == len(manifests)
    spans = sorted((m["refit_started"], m["saved_at"]) for m in manifests)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start  # no two refits ever overlapped
    for r in results:
        assert r["failures"] == 0 and r["errors"] == 0
        assert r["final"] == r["current"] == store.current_version("t")
        assert len({v for v in r["seen"] if v is not None}) >= 2  # it switched versions live


def refit_worker(store_path: str, ready: str) -> None:
    os.environ["TW_TEST_READY"] = ready
    task = make_task(store_path, embedder=Embedder.from_callable(slow_refit_embed, name="synth"),
                     refit_claim_ttl=1.0)
    task.refit()


def test_killed_refit_keeps_version_and_claim_lapses(tmp_path: Path) -> None:
    task = make_task(str(tmp_path), refit_claim_ttl=1.0)
    feed(task, 150)
    task.refit()
    assert task.version == 1
    # Traces nobody embedded yet (imported), so the next refit has something to embed.
    for i in range(50):
        task.store.append("t", f"c{i % CLASSES} more {i}", f"l{i % CLASSES}")
    ready = tmp_path / "ready"
    proc = SPAWN.Process(target=refit_worker, args=(str(tmp_path), str(ready)))
    proc.start()
    for _ in range(600):
        if ready.exists() or not proc.is_alive():
            break
        time.sleep(0.1)
    assert ready.exists(), "the refit process never reached its fit"
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    if time.monotonic() - killed_at < 0.5:  # the dead refit still holds its claim
        with pytest.raises(GateRefused):
            task.refit()
    assert task.version == 1 and task.route("c1 probe") is not None
    for _ in range(300):  # the claim lapses after its 1 s time-to-live
        if task.store.claim("t", "refit", ttl=1):
            break
        time.sleep(0.1)
    task.store.release("t", "refit")
    task.refit()
    assert task.version == 2


def test_killed_fit_process_fails_open(tmp_path: Path) -> None:
    task = make_task(str(tmp_path), refit_executor="process")
    feed(task, 150)
    future = task.refit_in_background()
    assert future is not None
    runner = task.refitter.runner
    pids: list[int] = []
    for _ in range(600):
        pids = runner.worker_pids()
        if pids or future.done():
            break
        time.sleep(0.02)
    assert pids, "no fit process was started"
    os.kill(pids[0], signal.SIGKILL)
    assert future.result(timeout=120) is None  # logged, not raised
    assert task.version is None and task.stats.errors == 1
    feed(task, 10, "after")  # calls still work, the claim was released
    assert task.refit() is not None and task.version == 1  # a fresh process pool fits
    task.close()


def test_an_interrupt_during_an_inline_refit_reaches_the_caller(tmp_path: Path) -> None:
    # Ctrl-C while `tracer-wrap demo` refits inline: the KeyboardInterrupt must stop the caller,
    # not be logged as a failed refit while the stream goes on. The traces that asked for the
    # refit ask again.
    interrupted = [False]

    def embed(texts: list[str]) -> np.ndarray:
        if len(texts) > 1 and not interrupted[0]:  # the refit's batch
            interrupted[0] = True
            raise KeyboardInterrupt
        return synth_embed(texts)

    task = make_task(str(tmp_path), refit_every=100, refit_executor="inline",
                     embedder=Embedder.from_callable(embed, name="synth", cache_bytes=0))
    with pytest.raises(KeyboardInterrupt):
        feed(task, 100)
    assert interrupted[0] and task.stats.errors == 0 and task.version is None
    assert not task.refitter.runner.running
    assert task.store.counter("t", names.COUNTER_NEW_TRACES) >= 100
    feed(task, 1, "after")  # the next write refits
    assert task.version == 1
    task.close()


def test_runner_inline_reraises_an_interrupt() -> None:
    runner = RefitRunner("inline")

    def job() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.submit(job)
    assert not runner.running
