"""Stress: threads and processes (fork as under gunicorn --preload, spawn as under celery)
routing, logging and refitting on one store at once, for a bounded time.

Proves: no trace lost or duplicated, no deadlock (every join has a timeout), no fault inside a
call, and every process ends on the store's newest version. The forked workers inherit a task
(store, router, refit worker) created and used before the fork, as a preloaded app does.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

from _synthetic import LABELS

from tracer_wrap import TracedTask
from tracer_wrap.model.hashing import hashing_embedder
from tracer_wrap.store import Store, open_store

NAMES = sorted(LABELS)
CALLS = 150  # per thread: a fixed workload, however slow the machine is
LLM_SECONDS = 0.005  # the simulated LLM's latency (200 answers a second per thread)
# Past the fixed workload, while waiting for a version that answers locally: a slower LLM, so
# the calls leave the refits (which take seconds under this load) the CPU and do not grow the
# history they must read faster than they can read it.
WAITING_LLM_SECONDS = 0.05
THREADS = 4
OPTIONS = dict(labels=NAMES, min_traces=100, refit_every=150, audit_rate=0.2, breaker=False,
               refresh_seconds=0.1)


def make_task(store: str | Store) -> TracedTask:
    return TracedTask("t", store=store, embedder=hashing_embedder(), **OPTIONS)


def text_for(who: str, i: int) -> tuple[str, str]:
    rng = random.Random(f"{who}-{i}")
    label = NAMES[i % len(NAMES)]
    return f"{rng.choice(LABELS[label])} please {rng.choice(LABELS[label])} {who}-{i}", label


# Bounds, not expectations: far beyond what a busy machine needs (the test takes ~40 s), they
# only turn a real deadlock into a failure, and a stuck child prints its stacks before them.
BOUND = 600.0


def wait_for(path: Path, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


class Faults(logging.Handler):
    """The warnings tracer_wrap logs in a worker (each fault it counts logs one), so a failure
    says which fault a worker met."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def serve(task: TracedTask, name: str, root: Path) -> dict:
    """Call CALLS times from each of THREADS threads, then report; then end on the final
    version."""
    faulthandler.dump_traceback_later(BOUND - 60, exit=True)
    faults = Faults()
    logging.getLogger("tracer_wrap").addHandler(faults)
    (root / f"ready-{name}").write_text("")
    wait_for(root / "go")
    llm_calls = [0] * THREADS
    failures: list[str] = []

    def work(thread: int) -> None:
        # A fixed workload, then on until this process answered locally (refits run in the
        # background, so when a certified version arrives depends on the machine's load; the
        # deadline only turns a refit that never comes into a failure).
        deadline = time.monotonic() + BOUND / 2
        i = 0
        while i < CALLS or (task.stats.local < 4 * CALLS // 10 and time.monotonic() < deadline):
            text, label = text_for(f"{name}t{thread}", i)
            latency = LLM_SECONDS if i < CALLS else WAITING_LLM_SECONDS

            def llm(label: str = label, latency: float = latency) -> str:
                # An LLM call waits on the network, which lets the other threads (and
                # tracer_wrap's background writer) run; a loop that never waits would produce
                # answers faster than any store takes them (the bounded buffer then drops and
                # counts them: tests/test_reliability.py).
                time.sleep(latency)
                llm_calls[thread] += 1
                return label
            try:
                result = task.call(text, llm)
                if result != label and result not in NAMES:
                    failures.append(f"bad result {result!r}")
            except Exception as exc:  # must never happen
                failures.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BOUND)
        if thread.is_alive():
            failures.append("thread deadlocked")
    task.close(wait=True)
    refitted_here = [m for m in task.store.versions("t") if m.get("refit_pid") == os.getpid()]
    report = {"name": name, "pid": os.getpid(), "refits": len(refitted_here),
              "llm_calls": sum(llm_calls), "failures": failures, "dropped": task.stats.dropped,
              "poisoned": len(task.poisoned),
              "errors": task.stats.errors, "faults": faults.lines, "local": task.stats.local}
    (root / f"done-{name}.json").write_text(json.dumps(report))
    wait_for(root / "final")
    # Every process picks up the newest version within refresh_seconds (in the background).
    deadline = time.monotonic() + BOUND
    while task.version != task.store.current_version("t") and time.monotonic() < deadline:
        time.sleep(0.02)
    final_calls: list[str] = []
    task.call(f"exchange rate please fx fee final {name}",
              lambda: final_calls.append(name) or "exchange_rate")
    report["llm_calls"] += len(final_calls)
    report.update(final=task.version, current=task.store.current_version("t"))
    (root / f"final-{name}.json").write_text(json.dumps(report))
    # Exiting flushes the process's traces; should that ever hang, print every thread's stack
    # (into the test's captured stderr) and exit, so the failure says where.
    faulthandler.dump_traceback_later(BOUND / 2, exit=True)
    return report


_PRELOADED: TracedTask | None = None


def forked_worker(name: str, root: str) -> None:
    assert _PRELOADED is not None
    serve(_PRELOADED, name, Path(root))


def spawned_worker(name: str, root: str) -> None:
    serve(make_task((Path(root) / "spec").read_text()), name, Path(root))


def test_threads_and_forked_and_spawned_processes_share_one_store(tmp_path: Path,
                                                                   store_spec: str) -> None:
    global _PRELOADED
    (tmp_path / "spec").write_text(store_spec)
    task = _PRELOADED = make_task(store_spec)
    preload_calls = 0
    for i in range(200):  # the preloaded app serves, logs and refits before forking
        text, label = text_for("pre", i)
        task.call(text, lambda label=label: label)
        preload_calls += 1
    # Leave its refit worker thread alive, as a preloaded app would: it does not exist in a
    # forked child, which must start its own.
    deadline = time.monotonic() + BOUND
    while task.refitter.runner.running and time.monotonic() < deadline:
        time.sleep(0.01)
    future = task.refit_in_background()
    assert future is not None
    future.result(timeout=BOUND)
    assert task.version is not None and task.refitter.runner._threads is not None
    fork, spawn = multiprocessing.get_context("fork"), multiprocessing.get_context("spawn")
    procs = [fork.Process(target=forked_worker, args=(f"fork{i}", str(tmp_path))) for i in range(2)]
    procs += [spawn.Process(target=spawned_worker, args=(f"spawn{i}", str(tmp_path)))
              for i in range(2)]
    try:
        for p in procs:
            p.start()
        names = ["fork0", "fork1", "spawn0", "spawn1"]
        for name in names:
            wait_for(tmp_path / f"ready-{name}")
        (tmp_path / "go").write_text("")
        for name in names:
            wait_for(tmp_path / f"done-{name}.json")
        store = open_store(store_spec)
        # Everyone is idle: a last refit (if the gate publishes, a new version) that all must see.
        make_task(store).refit()
        (tmp_path / "final").write_text("")
        for p in procs:
            p.join(timeout=BOUND)
            assert p.exitcode == 0, f"{p.name} exit code {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    reports = [json.loads((tmp_path / f"final-{name}.json").read_text()) for name in names]
    traces = store.traces("t")
    llm_calls = preload_calls + sum(r["llm_calls"] for r in reports)
    # Zero lost, zero duplicated: every input that reached the LLM is stored exactly once, or
    # counted as dropped should a process's buffer overflow on a starved machine.
    dropped = sum(r["dropped"] for r in reports)
    assert len(traces) + dropped == llm_calls == sum(t.count for t in traces) + dropped
    assert len({t.input for t in traces}) == len(traces)
    assert len(store.versions("t")) >= 2 and store.counter("t", "refits") >= 2
    # One refit at a time across every process: the refits' time spans never overlap.
    spans = sorted((m["refit_started"], m["saved_at"]) for m in store.versions("t")
                   if "refit_started" in m)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    newest = store.current_version("t")
    for r in reports:
        # The message is a string: pytest would cut a dict's repr before the faults.
        assert r["failures"] == [] and r["errors"] == r["poisoned"] == 0, json.dumps(r)
        assert r["final"] == r["current"] == newest, json.dumps(r)
    assert sum(r["llm_calls"] for r in reports) > 100 and sum(r["local"] for r in reports) > 100
