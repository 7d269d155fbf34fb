"""Fault injection: every fault of the LLM, the store, the embedder, a refit or a router file.

For each: the caller's outcome is what it would be without tracer_wrap (the result, or the SDK's
own error), a storm of calls logs the fault once, and traces flow again once the fault clears.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from _mount import bind_mount, unmount_all
from _synthetic import LABELS, make_traces
from llm_server import LLMServer, serve_llm

import tracer_wrap.refit as refit_module
from tracer_wrap import Embedder, TracedTask, TraceStore, flush, traced_classifier
from tracer_wrap.errors import EmbedderError, StoreError
from tracer_wrap.integrations import wrap_anthropic, wrap_openai

NAMES = sorted(LABELS)
# refresh_seconds=0: task objects compared in one test see each other's versions at once.
OPTIONS = {"min_traces": 50, "refit_every": None, "audit_rate": 0.0, "breaker": False,
           "refresh_seconds": 0}


def teacher(text: str) -> str:
    lowered = text.lower()
    hits = [(lowered.find(w), label) for label, words in LABELS.items()
            for w in words if w in lowered]
    return min(hits)[1] if hits else "refund"


def warnings(caplog, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and words in r.getMessage()]


def feed(task: TracedTask, n: int = 200, seed: int = 0) -> dict[str, str]:
    rows = dict(make_traces(n, seed=seed))
    for text, label in rows.items():
        task.call(text, lambda label=label: label)
    return rows


# -- the LLM ---------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


def _openai(server, store, embedder, wrapped):
    raw = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0, timeout=0.3)
    client = wrap_openai(raw, task="intent", labels=NAMES, store=store, embedder=embedder,
                         **OPTIONS) if wrapped else raw

    def ask(text):
        resp = client.chat.completions.create(model="m",
                                              messages=[{"role": "user", "content": text}])
        return resp.choices[0].message.content

    return ask


def _anthropic(server, store, embedder, wrapped):
    raw = anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t", max_retries=0,
                              timeout=0.3)
    client = wrap_anthropic(raw, task="intent", labels=NAMES, store=store, embedder=embedder,
                            **OPTIONS) if wrapped else raw

    def ask(text):
        resp = client.messages.create(model="m", max_tokens=5,
                                      messages=[{"role": "user", "content": text}])
        return resp.content[0].text

    return ask


def _outcome(ask, text):
    try:
        return "ok", ask(text)
    except Exception as exc:  # the SDK's own error, compared by type
        return "error", type(exc)


@pytest.mark.parametrize("sdk", [_openai, _anthropic], ids=["openai", "anthropic"])
@pytest.mark.parametrize("kind", ["429", "500", "timeout", "garbage"])
def test_llm_faults_give_the_same_outcome_as_without_tracer_wrap(
        server, store, embedder, sdk, kind):
    plain, traced = sdk(server, store, embedder, False), sdk(server, store, embedder, True)
    server.fail(kind, times=None, delay=1.0)
    without = [_outcome(plain, f"refund please #{i}") for i in range(3)]
    within = [_outcome(traced, f"refund please #{i}") for i in range(3)]
    assert within == without and all(kind == "error" for kind, _ in within)
    flush()
    assert store.count("intent") == 0  # a failed LLM call logs no trace
    server.clear_faults()
    assert traced("refund please #ok") == "refund"
    flush()
    assert [t.input for t in store.traces("intent")] == ["refund please #ok"]


def test_a_classify_function_returning_garbage_is_returned_unchanged(store, embedder):
    garbage = [None, 42, b"\xff", {"x": 1}, "", "I cannot help with that", "x" * 100_000]

    @traced_classifier(task="t", labels=NAMES, store=store, embedder=embedder)
    def classify(text):
        return garbage[int(text.split("#")[1])]

    for i, value in enumerate(garbage):
        assert classify(f"refund #{i}") is value
    assert classify.stats.errors == 0
    flush()
    assert store.traces("t", valid_only=True) == []


def test_a_label_of_that_raises_still_counts_the_llm_answer(store, embedder, caplog):
    @traced_classifier(task="t", labels=NAMES, store=store, embedder=embedder,
                       label_of=lambda result: result["label"])
    def classify(text):
        return {"lbl": "refund"}  # a result label_of cannot read

    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        for i in range(5):
            assert classify(f"refund #{i}") == {"lbl": "refund"}
    assert warnings(caplog, "KeyError")
    assert classify.stats.llm == 5 and classify.stats.invalid == 5
    flush()
    assert store.counter("t", "llm") == 5 and store.counter("t", "invalid") == 5
    assert store.traces("t", valid_only=True) == []


# -- the store ----------------------------------------------------------------------------------


class FlakyStore(TraceStore):
    """A store whose appends fail (disk full, read-only) until ``error`` is set back to None,
    raising what the real store raises for them (a StoreError carrying the sqlite error)."""

    error: BaseException | None = None

    def append_many(self, *args, **kwargs):
        if self.error is not None:
            raise StoreError(f"cannot write trace store: {self.error}") from self.error
        return super().append_many(*args, **kwargs)


@pytest.mark.parametrize("error", [
    sqlite3.OperationalError("database or disk is full"),
    sqlite3.OperationalError("attempt to write a readonly database")],
                         ids=["disk-full", "read-only"])
def test_a_failing_store_is_logged_once_per_storm_and_loses_nothing(tmp_path, embedder, caplog,
                                                                      error):
    store = FlakyStore(tmp_path / "s")
    task = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    feed(task, 100)
    task.refit()
    rows = list(make_traces(300, seed=5))
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        store.error = error  # inside the capture: the background worker may meet it first
        results = [task.call(text, lambda label=label: label) for text, label in rows[:200]]
        assert not task.flush(timeout=0.2)  # the store refuses: the traces wait in the buffer
    assert results == [label for _, label in rows[:200]]
    # Once for the storm, not per call (matched on this store's error: the process's background
    # worker may also log faults of other tests' stores).
    assert len(warnings(caplog, f"cannot write trace store: {error}")) == 1
    assert task.stats.errors > 0 and store.count("t") == 100
    store.error = None  # the disk has room again
    for text, label in rows[200:]:
        assert task.call(text, lambda label=label: label) == label
    assert task.flush()
    # Every LLM answer of the storm and after it became a trace: none was lost.
    assert store.count("t") == task.stats.llm and task.stats.dropped == 0


def test_a_real_disk_full_in_a_process_fails_open_and_recovers(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past a size: a real full disk, even for root.
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from _synthetic import make_traces
from tracer_wrap import TracedTask
from tracer_wrap.model.hashing import hashing_embedder
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
task = TracedTask("t", store={str(tmp_path / "s")!r}, embedder=hashing_embedder(), refit_every=None)
rows = make_traces(3000)
for text, label in rows[:10]:
    task.call(text, lambda label=label: label)
resource.setrlimit(resource.RLIMIT_FSIZE, (task.store.path.stat().st_size, resource.RLIM_INFINITY))
ok = all(task.call(text * 20, lambda label=label: label) == label for text, label in rows[10:2000])
full = task.flush(timeout=2.0)  # the disk refuses: the traces wait in the buffer
errors = task.stats.errors
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
for text, label in rows[2000:2010]:
    task.call(text, lambda label=label: label)
task.flush()
print(ok and not full, errors > 0, task.store.count("t"), task.stats.llm, task.stats.dropped)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    ok, errors, stored, llm, dropped = out.stdout.split()
    # Every LLM answer, the ones made while the disk was full included, became a trace.
    assert (ok, errors, dropped) == ("True", "True", "0") and stored == llm == "2010"
    assert out.stderr.count("tracer_wrap trace store failed") <= 1


def test_a_read_only_mount_fails_open_and_recovers_when_writable(tmp_path, embedder, caplog):
    # chmod does not stop root; a read-only bind mount does.
    source, target = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    target.mkdir()
    if not bind_mount(source, target, "ro"):
        pytest.skip("cannot bind-mount here")
    task = None
    try:
        with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
            # Created inside the capture: the background worker may meet the fault first.
            task = TracedTask("t", store=str(target / "store"), embedder=embedder, **OPTIONS)
            assert [task.call(f"refund #{i}", lambda: "refund") for i in range(50)] == \
                ["refund"] * 50
            assert not task.flush(timeout=0.2)  # buffered while the store cannot be opened
        assert len(warnings(caplog, str(target))) == 1, [r.getMessage() for r in caplog.records]
        subprocess.run(["umount", str(target)], check=True)
        assert bind_mount(source, target)  # the operator fixes the mount
        task.call("refund #after", lambda: "refund")
        assert task.flush()
        # Nothing was lost: the calls made while the store was read-only are traced too.
        assert sorted(t.input for t in task.store.traces("t")) == sorted(
            [f"refund #{i}" for i in range(50)] + ["refund #after"])
    finally:
        if task is not None and task._store is not None:
            task.store.close()
        unmount_all(target)


# -- the embedder ------------------------------------------------------------------------------


def test_an_embedder_that_fails_to_load_fails_open_then_recovers(
        store, embedder, monkeypatch, caplog):
    fitter = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    rows = feed(fitter, 800)
    fitter.refit()

    def missing(*args, **kwargs):
        raise EmbedderError("cannot load all-MiniLM-L6-v2: no such file")

    monkeypatch.setattr(Embedder, "default", classmethod(missing))
    task = TracedTask("t", labels=NAMES, store=store, **OPTIONS)  # a new process, no embedder
    texts = list(rows)[:100]
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        assert [task.call(t, lambda t=t: rows[t]) for t in texts] == [rows[t] for t in texts]
    assert len(warnings(caplog, "routing failed")) == 1 and task.stats.local == 0
    monkeypatch.setattr(Embedder, "default", classmethod(lambda cls, *a, **k: embedder))
    assert [task.call(t, lambda: "never") for t in texts].count("never") < len(texts)
    assert task.stats.local > 0


# -- refits ------------------------------------------------------------------------------------


def test_a_refit_that_raises_is_logged_once_and_calls_go_on(store, embedder, monkeypatch, caplog):
    def broken(**kwargs):
        raise MemoryError("fit ran out of memory")

    monkeypatch.setattr(refit_module, "fit_router", broken)
    task = TracedTask("t", labels=NAMES, store=store, embedder=embedder, refit_executor="inline",
                      **{**OPTIONS, "refit_every": 20})
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        rows = feed(task, 800)
        task.flush()
    assert task.stats.errors > 1 and len(warnings(caplog, "refit failed")) == 1
    assert task.version is None and store.counter("t", "refits") == 0
    monkeypatch.undo()  # the fit works again: the next due refit publishes
    feed(task, 40, seed=9)
    assert task.version is not None
    assert [task.call(t, lambda: "never") for t in list(rows)[:50]].count("never") < 50


# -- router files ------------------------------------------------------------------------------


def test_a_router_file_edited_after_load_is_refused_on_reload_and_replaced_by_a_refit(
        store, embedder, caplog):
    serving = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    rows = feed(serving, 800)
    serving.refit()
    assert serving.router is not None and serving.version == 1
    path = store.router_dir("t") / "v1.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated while loaded
    texts = list(rows)[:60]
    # The serving process keeps the version it loaded and verified.
    assert [serving.call(t, lambda: "llm") for t in texts].count("llm") < 60
    # A process that loads now (a restart, a new worker) refuses the file and calls the LLM.
    fresh = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        assert [fresh.call(t, lambda t=t: rows[t]) for t in texts] == [rows[t] for t in texts]
    assert fresh.router is None and len(warnings(caplog, "router load failed")) == 1
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # edited by one bit: refused as well
    assert TracedTask("t", store=store, embedder=embedder, **OPTIONS).router is None
    serving.refit()  # a new version heals every process
    assert fresh.version == serving.version == 2 and fresh.router is not None
    assert os.path.exists(store.router_dir("t") / "v2.npz")
