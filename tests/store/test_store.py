"""The trace store: dedup, JSONL both ways, bad input, and appends from threads and processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import sqlite3
import stat
import threading

import diskcache
import pytest

from tracer_wrap.errors import ConfigError, StoreBusy, StoreError, StoreTampered
from tracer_wrap.ops.imports import discover, import_task
from tracer_wrap.store import Origin, TraceStore


def test_identical_inputs_are_counted_not_stored_twice(store):
    store.append("t", "where is my card", "card_arrival")
    store.append("t", "where is my card", "card_arrival")
    trace = store.append("t", "where is my card", "card_delivery_estimate")
    assert store.count("t") == 1
    assert trace.count == 3
    assert trace.labels == {"card_arrival": 2, "card_delivery_estimate": 1}
    assert trace.teacher == "card_arrival"  # the most frequent label trains


def test_trace_fields_and_task_namespaces(store):
    store.append("a", "x", "l1", origin=Origin.AUDIT, meta={"user": 7}, ts=123.0,
                 router_label="l2")
    store.append("b", "x", "other")
    store.append("a", "garbage out", "I cannot help with that", valid=False)
    [first, second] = store.traces("a")
    assert (first.input, first.teacher, first.origin, first.meta, first.ts, first.router_label) == \
        ("x", "l1", "audit", {"user": 7}, 123.0, "l2")
    assert not second.valid and second.labels == {}
    assert [t.input for t in store.traces("a", valid_only=True)] == ["x"]
    assert store.traces("b")[0].teacher == "other"
    assert store.tasks() == ["a", "b"]


def test_jsonl_round_trip_in_tracer_llm_format(store, tmp_path):
    for i in range(5):
        store.append("t", f"text {i}", f"label{i % 2}")
    store.append("t", "bad", "??", valid=False)
    out = tmp_path / "traces.jsonl"
    assert store.export_jsonl("t", out) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"input": "text 0", "teacher": "label0"}
    # Imports have one path, which applies the task's options (tracer_wrap.ops.imports).
    (found,) = discover(out).tasks
    assert import_task(store, found, "copy")["lines"] == 5
    assert [(t.input, t.teacher, t.origin) for t in store.traces("copy")][:1] == \
        [("text 0", "label0", "import")]


def test_a_malformed_import_names_its_line_and_imports_nothing(store, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "teacher": "x"}\n\n{"input": "b"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:3"):
        discover(path)
    assert store.count("t") == 0


def test_bad_task_and_values_are_refused(store):
    with pytest.raises(ConfigError):
        store.append("", "x", "y")
    with pytest.raises(ConfigError):
        store.append("t", b"bytes", "y")  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_unwritable_path_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(StoreError, match="not writable"):
        TraceStore(locked / "store")


def test_a_path_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not writable"):
        TraceStore(blocker / "store")


def test_claims_are_exclusive_and_expire(store):
    assert store.claim("t", "refit", ttl=60)
    assert not store.claim("t", "refit", ttl=60)
    store.release("t", "refit")
    assert store.claim("t", "refit", ttl=0.01)
    import time

    time.sleep(0.05)
    assert store.claim("t", "refit", ttl=60)


def test_threads_lose_no_trace(store):
    def work(worker: int) -> None:
        for i in range(150):
            store.append("t", f"w{worker}-{i}", "a")
            store.append("t", "shared", "a")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count("t") == 8 * 150 + 1
    shared = [t for t in store.traces("t") if t.input == "shared"]
    assert len(shared) == 1 and shared[0].count == 8 * 150
    assert len({t.seq for t in store.traces("t")}) == store.count("t")


def _append_many(path: str, worker: int, n: int) -> None:
    store = TraceStore(path)

    def append(text: str) -> None:
        # On a loaded machine another process can hold the write lock past the store's wait
        # (StoreBusy, the transaction rolled back); the engine's background writer retries
        # then, and so does this writer.
        while True:
            try:
                store.append("t", text, "a")
                return
            except StoreBusy:
                continue

    for i in range(n):
        append(f"p{worker}-{i}")
        append("shared")


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_processes_lose_no_trace(tmp_path, method):
    path = str(tmp_path / "store")
    TraceStore(path)
    ctx = mp.get_context(method)
    procs = [ctx.Process(target=_append_many, args=(path, w, 200)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = TraceStore(path)
    assert store.count("t") == 3 * 200 + 1
    assert next(t for t in store.traces("t") if t.input == "shared").count == 600


def _append_in_child(store: TraceStore) -> None:
    store.append("t", "from the child", "a")


def test_a_store_opened_before_fork_works_in_the_child(store):
    store.append("t", "from the parent", "a")
    child = mp.get_context("fork").Process(target=_append_in_child, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    store.append("t", "parent again", "a")
    assert [t.input for t in store.traces("t")] == ["from the parent", "from the child",
                                                    "parent again"]


def test_migrate_renumbers_where_calibration_restarts_after_a_trip(tmp_path):
    from tracer_wrap import names
    from tracer_wrap.store.migrate import migrate

    src, dst = TraceStore(tmp_path / "src"), TraceStore(tmp_path / "dst")
    for i in range(3):
        dst.append("t", f"the destination's own #{i}", "a")
    for i in range(8):
        src.append("t", f"input #{i}", "a")
    # A breaker trip after the source's trace 5: only traces 6-8 may calibrate.
    src.set_setting("t", names.SETTING_CALIBRATE_AFTER, 5)
    src.set_setting("t", names.SETTING_BREAKER, {"version": None, "seq": 5})
    migrate(src, dst)
    after = dst.get_setting("t", names.SETTING_CALIBRATE_AFTER)
    assert after == 3 + 5 and dst.get_setting("t", names.SETTING_BREAKER)["seq"] == after
    assert sorted(t.input for t in dst.traces("t") if t.seq > after) == [
        f"input #{i}" for i in (5, 6, 7)]


def test_a_store_opened_read_only_reads_everything_and_writes_nothing(tmp_path):
    store = TraceStore(tmp_path / "s")
    store.append("t", "where is my card", "card_arrival")
    store.add_counters("t", {"calls": 3}, batch="b1")
    store.set_setting("t", "price", {"per_call": 0.01})
    store.put_vectors("t", {1: b"\x01\x02"})
    store.write_artifact("t", "v1.json", b"{}")
    files = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}

    reader = TraceStore(tmp_path / "s", read_only=True)
    assert reader.tasks() == ["t"] and reader.count("t") == 1
    assert [(t.input, t.teacher) for t in reader.traces("t")] == [("where is my card",
                                                                   "card_arrival")]
    assert reader.counters("t") == {"calls": 3} and reader.counter("t", "calls") == 3
    assert reader.settings("t") == {"price": {"per_call": 0.01}}
    assert reader.get_vectors("t", [1, 2]) == [b"\x01\x02", None]
    assert reader.read_artifact("t", "v1.json") == b"{}"
    for write in (lambda: reader.append("t", "new", "refund"),
                  lambda: reader.incr("t", "calls"),
                  lambda: reader.set_setting("t", "x", 1),
                  lambda: reader.claim("t", "refit", ttl=5),
                  lambda: reader.write_artifact("t", "v2.json", b"{}"),
                  lambda: reader.delete_artifact("t", "v1.json"),
                  lambda: reader.prune("t", max_traces=0)):
        with pytest.raises(StoreError, match="read-only"):
            write()
    reader.put_vectors("t", {1: b"\x09"})  # a cache of the embedder's output: keeps nothing
    assert {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()} == files

    with pytest.raises(StoreError):
        TraceStore(tmp_path / "none", read_only=True)
    assert not (tmp_path / "none").exists()


def test_a_store_opened_read_only_refuses_pickled_rows(tmp_path):
    store = TraceStore(tmp_path / "s")
    store.set_setting("t", "price", {"per_call": 0.01})
    store.close()
    with sqlite3.connect(tmp_path / "s" / "meta" / "cache.db") as con:
        con.execute("UPDATE Cache SET mode = ?, value = ? WHERE key = 's:t:price'",
                    (diskcache.core.MODE_PICKLE, pickle.dumps({"per_call": 1})))
    with pytest.raises(StoreTampered):
        TraceStore(tmp_path / "s", read_only=True).get_setting("t", "price")
