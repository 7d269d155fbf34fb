"""A damaged or edited store never stops tracer_wrap: a row that cannot be read is refused (never
followed to a file, never a plain exception), counted and skipped; writing goes on; a damaged
version or pointer is refused and replaced; an artifact file is read bounded, never blocking."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _synthetic import LABELS, make_traces
from _wait import until

from tracer_wrap import TracedTask, background
from tracer_wrap.errors import RouterLoadError, StoreTampered
from tracer_wrap.store import Trace, TraceStore, encode_vectors, open_store
from tracer_wrap.store.migrate import migrate
from tracer_wrap.versions import load_ood, load_version

NAMES = sorted(LABELS)
OPTIONS = {"min_traces": 50, "refit_every": None, "audit_rate": 0.0, "breaker": False,
           "refresh_seconds": 0}


def fitted(spec, embedder) -> dict[str, str]:
    task = TracedTask("t", labels=NAMES, store=spec, embedder=embedder, **OPTIONS)
    rows = dict(make_traces(800))
    for text, label in rows.items():
        task.call(text, lambda label=label: label)
    task.refit()
    task.flush(timeout=30)
    return rows


def _cli(store: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "tracer_wrap.ops.cli", "--store", str(store),
                           *args], capture_output=True, text=True, env=env, timeout=600)


def _set_trace_row(spec: str, seq: int, raw: str) -> None:
    """Overwrite stored trace ``seq`` of task "t" with ``raw``, as an edit of the files would."""
    store = open_store(spec)
    if isinstance(store, TraceStore):
        store._caches()[0].set(f"t:t:{seq}", raw)
    else:
        store._client.hset(store._k("t", "t"), seq, raw)


# -- 1. a row naming a file --------------------------------------------------------------------


def test_a_row_naming_a_file_is_refused_and_never_migrated(tmp_path, embedder) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET_API_KEY=sk-live-123\n")
    store = TraceStore(tmp_path / "s")
    store.append_many("t", [])
    store.append("t", "hello", "refund")
    store.put_vectors("t", {1: encode_vectors("e", np.ones((1, 4)))[0]})
    store.close()
    with sqlite3.connect(tmp_path / "s" / "traces" / "cache.db") as db:  # diskcache MODE_BINARY
        db.execute("UPDATE Cache SET mode=2, filename=?, value=NULL WHERE key='v:t:1'",
                   (os.path.relpath(secret, tmp_path / "s" / "traces"),))
    for reader in (TraceStore(tmp_path / "s"), TraceStore(tmp_path / "s", read_only=True)):
        assert reader.get_vectors("t", [1]) == [None]
        assert reader.unreadable["t"] == 1
        with pytest.raises(StoreTampered, match="outside its database"):
            reader._caches()[0].get("v:t:1")
    summary = migrate(tmp_path / "s", tmp_path / "m")
    assert summary["t"]["unreadable"] == 1
    assert TraceStore(tmp_path / "m").get_vectors("t", [1]) == [None]


def test_migrate_copies_only_vectors_shaped_as_vectors(tmp_path) -> None:
    src = TraceStore(tmp_path / "s")
    src.append("t", "a", "x")
    src.append("t", "b", "x")
    good = encode_vectors("e", np.ones((1, 4)) / 2)[0]
    src.put_vectors("t", {1: good, 2: b"SECRET_API_KEY=sk-live-123\n"})
    summary = migrate(src, tmp_path / "m")
    assert summary["t"]["unreadable"] == 1
    assert TraceStore(tmp_path / "m").get_vectors("t", [1, 2]) == [good, None]


# -- 2. a damaged trace row does not stop writing ------------------------------------------------


@pytest.mark.parametrize("raw, field", [("{oops", "not JSON"), ('{"input": 5}', "'input'"),
                                        ('{"input": "a", "teacher": "b", "labels": "x"}',
                                         "'labels'"),
                                        ('{"input": "a", "teacher": "b", "count": "many"}',
                                         "'count'"),
                                        ('{"input": "a", "teacher": "b", "ts": "now"}', "'ts'"),
                                        ("[1]", "not a JSON object"), ('{"input": "a"}',
                                                                       "no input or no teacher")])
def test_a_trace_row_that_cannot_be_read_raises_store_tampered_naming_it(raw, field) -> None:
    with pytest.raises(StoreTampered, match=field) as info:
        Trace.from_json(raw, "t:t:5")
    assert "t:t:5" in str(info.value)


def test_a_newer_release_s_fields_are_ignored_and_kept() -> None:
    row = json.dumps({"input": "a", "teacher": "b", "labels": {"b": 1}, "future": [1, 2]})
    trace = Trace.from_json(row, "k")
    assert (trace.input, trace.teacher, trace.count) == ("a", "b", 1)
    assert json.loads(trace.to_json())["future"] == [1, 2]


def test_a_damaged_trace_row_is_set_aside_and_later_traces_flow(store_spec, embedder) -> None:
    task = TracedTask("t", labels=NAMES, store=store_spec, embedder=embedder, **OPTIONS)
    for i in range(10):
        task.call(f"input {i}", lambda: "refund")
    assert task.flush(timeout=30)
    _set_trace_row(store_spec, 5, "{oops")
    task.call("input 4", lambda: "refund")  # a repeat of trace 5
    for i in range(10, 40):
        task.call(f"input {i}", lambda: "refund")
    assert task.flush(timeout=30)
    store = open_store(store_spec)
    assert store.count("t") == 40  # every later trace written
    if isinstance(store, TraceStore):  # the repeat's row cannot be rewritten: set aside, counted
        assert store.counter("t", "poisoned") == 1 and len(task.poisoned) == 1
    else:  # Redis counts a repeat apart from the row as first seen: it is written
        assert store.counter("t", "poisoned") == 0
    assert {t.seq for t in store.traces("t")} == set(range(1, 41)) - {5}


def test_one_failing_part_of_a_step_does_not_stop_the_others(store, embedder, monkeypatch,
                                                             caplog) -> None:
    task = TracedTask("t", labels=NAMES, store=store, embedder=embedder,
                      **{**OPTIONS, "refresh_seconds": 0.01})

    def broken() -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(task.serving, "refresh", broken)
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        task.call("hello", lambda: "refund")
        until(lambda: store.count("t") == 1 and store.counter("t", "calls") >= 1,
              "the trace and the counters written although refresh fails")
        until(lambda: any("refresh failed for task 't'" in r.getMessage()
                          for r in caplog.records), "the fault logged with the task")


def test_a_job_that_raises_is_logged_with_its_task(caplog) -> None:
    class Broken:
        task = "broken-task"

        def step(self) -> None:
            raise RuntimeError("a defect")

        def drain(self, timeout: float) -> bool:
            return True

    job = Broken()
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        background.register(job)
        try:
            until(lambda: any("'broken-task'" in r.getMessage() for r in caplog.records),
                  "the job's fault logged with its task")
        finally:
            background.unregister(job)


def test_a_job_without_a_task_name_is_logged_without_one(caplog) -> None:
    class Many:  # as the SDK's Tasks: `task` is a method there, not a name
        def task(self, name: str) -> None: ...

        def step(self) -> None:
            raise RuntimeError("a defect of many tasks")

        def drain(self, timeout: float) -> bool:
            return True

    job = Many()
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        background.register(job)
        try:
            until(lambda: any("a defect of many tasks" in r.getMessage()
                              for r in caplog.records), "the job's fault logged")
        finally:
            background.unregister(job)
    line = next(r.getMessage() for r in caplog.records
                if "a defect of many tasks" in r.getMessage())
    assert "bound method" not in line and "for task" not in line


# -- 3. reads skip a damaged row --------------------------------------------------------------


def test_reads_skip_a_damaged_row_count_it_and_log_its_key(store_spec, embedder, caplog,
                                                           tmp_path) -> None:
    fitted(store_spec, embedder)
    _set_trace_row(store_spec, 5, '{"input": "a", "teacher": "b", "labels": "x"}')
    store = open_store(store_spec)
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        traces = store.traces("t")
        store.traces("t")
    assert len(traces) == 799 and store.unreadable["t"] == 2
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert all("the row is skipped and counted" in line for line in skipped)
    assert len(skipped) == 1 and "'labels'" in skipped[0]  # rate-limited, names the row
    TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS).refit()
    assert store.current_version("t") == 2
    assert migrate(store_spec, tmp_path / "m")["t"]["unreadable"] == 1


def test_the_cli_reads_a_store_with_a_damaged_row(store, embedder, tmp_path) -> None:
    fitted(store, embedder)
    _set_trace_row(str(store.path), 5, "{oops")
    store.close()
    status = _cli(store.path, "status")
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert "damaged rows" in status.stdout
    out = tmp_path / "out.jsonl"
    export = _cli(store.path, "export", "t", "-o", str(out))
    assert export.returncode == 0 and len(out.read_text().splitlines()) == 799
    assert out.stat().st_mode & 0o777 == 0o600  # prompts: owner-only, as the store
    copied = _cli(store.path, "migrate", "--from", str(store.path), "--to",
                  str(tmp_path / "copy"))
    assert copied.returncode == 0, copied.stderr
    assert "1 damaged rows skipped" in copied.stdout


# -- 4. a damaged version, pointer or setting ---------------------------------------------------


def _set_meta(spec: str, key: str, raw: str) -> None:
    store = open_store(spec)
    if isinstance(store, TraceStore):
        store._caches()[1].set(key, raw)
        return
    kind, _, rest = key.partition(":")
    if kind == "cur":
        store._client.set(store._k("t", "cur"), raw)
    elif kind == "v":
        store._client.hset(store._k("t", "v"), rest.rpartition(":")[2], raw)
    else:
        store._client.hset(store._k("t", "s"), rest.rpartition(":")[2], raw)


@pytest.mark.parametrize("key, read", [
    ("v:t:1", lambda s: s.manifest("t", 1)),
    ("cur:t", lambda s: s.current_version("t")),
    ("s:t:routing", lambda s: s.get_setting("t", "routing")),
])
def test_a_damaged_meta_row_raises_store_tampered(store_spec, key, read) -> None:
    store = open_store(store_spec)
    store.set_setting("t", "other", 1)
    _set_meta(store_spec, key, "{not json")
    with pytest.raises(StoreTampered, match="stored"):
        read(store)
    assert store.settings("t") == {"other": 1}  # one damaged setting hides no other


@pytest.mark.parametrize("key", ["v:t:1", "cur:t"])
def test_a_damaged_version_is_refused_and_a_refit_replaces_it(store_spec, embedder,
                                                              key) -> None:
    rows = fitted(store_spec, embedder)
    _set_meta(store_spec, key, "{not json")
    task = TracedTask("t", labels=NAMES, store=store_spec, embedder=embedder,
                      **{**OPTIONS, "refresh_seconds": 0.01, "refit_every": 100})
    texts = list(rows)[:40]
    assert [task.call(t, lambda: "llm") for t in texts] == ["llm"] * 40  # refused: the LLM
    for text, label in make_traces(1000, seed=7)[800:]:
        task.call(text + " x", lambda label=label: label)
    store = open_store(store_spec)

    def current() -> int | None:
        try:
            return store.current_version("t")
        except StoreTampered:  # not replaced yet
            return None

    until(lambda: current() == 2, "a background refit replacing version 1")
    until(lambda: task.version == 2, "the new version served")


def test_rollback_and_status_recover_an_unreadable_pointer(store, embedder) -> None:
    fitted(store, embedder)
    TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS).refit()
    store._caches()[1].set("cur:t", "abc")
    store.close()
    status = _cli(store.path, "status")
    assert status.returncode == 0 and "REFUSED" in status.stdout, status.stdout
    rollback = _cli(store.path, "rollback", "t", "1")
    assert rollback.returncode == 0, rollback.stderr
    assert TraceStore(store.path).current_version("t") == 1


def test_fit_force_replaces_an_unreadable_manifest(store, embedder) -> None:
    fitted(store, embedder)
    store._caches()[1].set("v:t:1", "{not json")
    store.close()
    fit = _cli(store.path, "fit", "t", "--embedder", "hashing", "--force")
    assert fit.returncode == 0 and "Traceback" not in fit.stderr, fit.stderr
    assert TraceStore(store.path).current_version("t") == 2


# -- 5. artifact files are read bounded, never blocking -----------------------------------------


def _read_in_thread(fn) -> list[object]:
    """Run ``fn`` on a thread; return [result or exception] once it ends (a read that blocks
    fails the wait instead of hanging the test run)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    threading.Thread(target=run, daemon=True).start()
    until(lambda: out, "the read to end")
    return out


@pytest.mark.parametrize("kind", ["fifo", "zero", "larger"])
def test_an_artifact_that_is_no_plain_file_is_refused(store, embedder, kind) -> None:
    fitted(store, embedder)
    path = store.router_dir("t") / "v1.npz"
    size = path.stat().st_size
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(b"\0" * (size + 1))
    [result] = _read_in_thread(lambda: load_version(store, "t", 1))
    assert isinstance(result, RouterLoadError), result
    assert isinstance(result.__cause__, StoreTampered)


def test_the_redis_artifacts_directory_is_read_the_same_way(tmp_path) -> None:
    pytest.importorskip("redis")
    from tracer_wrap.store.redis_store import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", artifacts=tmp_path)  # never contacted
    store.write_artifact("t", "v1.npz", b"data")
    folder = next(tmp_path.iterdir())
    os.mkfifo(folder / "v2.npz")
    assert store.read_artifact("t", "v1.npz") == b"data"
    [result] = _read_in_thread(lambda: store.read_artifact("t", "v2.npz"))
    assert isinstance(result, StoreTampered)
    with pytest.raises(StoreTampered):
        store.read_artifact("t", "v1.npz", max_bytes=3)


# -- 6. what a manifest must record ----------------------------------------------------------


def test_a_manifest_without_embedder_or_ood_hash_is_refused(store, embedder) -> None:
    rows = fitted(store, embedder)
    meta = store._caches()[1]
    good = store.manifest("t", 1)
    (store.router_dir("t") / "v1.json").unlink()  # the copy would flag the edit: test the record
    meta.set("v:t:1", json.dumps({k: v for k, v in good.items() if k != "embedder"}))
    with pytest.raises(RouterLoadError, match="no embedder"):
        load_version(store, "t", 1)
    task = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    assert [task.call(t, lambda: "llm") for t in list(rows)[:20]] == ["llm"] * 20
    meta.set("v:t:1", json.dumps({**good, "ood": {k: v for k, v in good["ood"].items()
                                                   if k != "sha256"}}))
    with pytest.raises(RouterLoadError, match="no hash"):
        load_ood(store, "t", 1)
    meta.set("v:t:1", json.dumps(good))
    with pytest.raises(RouterLoadError, match="do not fit"):
        load_ood(store, "t", 1, dim=load_version(store, "t", 1).dim + 1)
