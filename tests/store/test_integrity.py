"""Integrity of what a store holds: an edited manifest copy is refused, a pickled row is never
unpickled (by ``tracer-wrap status``, a refit or a call), and every file is owner-only."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import diskcache
import pytest
from _synthetic import LABELS, make_traces

from tracer_wrap import TracedTask
from tracer_wrap.errors import StoreTampered
from tracer_wrap.store import TraceStore
from tracer_wrap.store.base import write_private

NAMES = sorted(LABELS)
OPTIONS = {"min_traces": 50, "refit_every": None, "audit_rate": 0.0, "breaker": False,
           "refresh_seconds": 0}


def fitted(store: TraceStore, embedder) -> dict[str, str]:
    task = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    rows = dict(make_traces(800))
    for text, label in rows.items():
        task.call(text, lambda label=label: label)
    task.refit()
    assert task.version == 1 and task.router is not None
    return rows


# -- (a) the manifest copy beside the arrays ----------------------------------------------------


def _edit_labels(m: dict) -> None:
    m["labels"] = list(reversed(m["labels"]))


def _edit_thresholds(m: dict) -> None:
    for cert in m["certificates"]:
        cert["threshold"] = 0.0 if cert["threshold"] is not None else None


def _edit_embedder(m: dict) -> None:
    m["embedder"] = "/tmp/attacker-model"


@pytest.mark.parametrize("edit", [_edit_labels, _edit_thresholds, _edit_embedder],
                         ids=["labels", "thresholds", "embedder"])
def test_an_edited_manifest_copy_is_refused_and_calls_go_to_the_llm(store, embedder, caplog,
                                                                    edit) -> None:
    rows = fitted(store, embedder)
    path = store.router_dir("t") / "v1.json"
    manifest = json.loads(path.read_bytes())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    texts = list(rows)[:40]
    fresh = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        answers = [fresh.call(t, lambda: "from the llm") for t in texts]
    assert answers == ["from the llm"] * 40  # nothing answered locally
    assert fresh.router is None
    faults = [r.getMessage() for r in caplog.records if "router load failed" in r.getMessage()]
    assert len(faults) == 1 and "differs from the manifest" in faults[0]


def test_an_untouched_manifest_copy_loads(store, embedder) -> None:
    rows = fitted(store, embedder)
    fresh = TracedTask("t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    assert [fresh.call(t, lambda: "llm") for t in list(rows)[:40]].count("llm") < 40


# -- (b) pickled rows -------------------------------------------------------------------------


class _Bomb:
    """Creates ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(store: TraceStore, part: str, key: str, marker: Path) -> None:
    """Write ``key`` as a pickled row with diskcache's own default Disk, as an attacker with
    write access to the files would."""
    with diskcache.Cache(str(store.path / part)) as raw:
        raw.set(key, _Bomb(marker))
    with diskcache.Cache(str(store.path / part)) as raw:
        assert raw._sql("SELECT mode FROM Cache WHERE key = ?", (key,)).fetchone()[0] \
            == diskcache.core.MODE_PICKLE


def test_the_bomb_would_go_off_if_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Bomb(marker)))
    assert marker.exists()  # so its absence below means nothing was unpickled


@pytest.mark.parametrize("part, key", [("meta", "cur:t"), ("traces", "t:t:1"),
                                       ("traces", "n:t")])
def test_a_pickled_row_is_refused_by_status_refits_and_calls(store, embedder, tmp_path,
                                                             part, key) -> None:
    fitted(store, embedder)
    marker = tmp_path / f"pwned-{part}-{key.replace(':', '_')}"
    store.close()
    _plant(store, part, key, marker)
    # tracer-wrap status, in a process of its own
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    status = subprocess.run([sys.executable, "-m", "tracer_wrap.ops.cli", "--store",
                             str(store.path), "status"], capture_output=True, text=True,
                            env=env, timeout=300)
    # Never a traceback: a damaged trace row is skipped and reported, a damaged current-version
    # pointer shows as refused; only the count of traces, which every read needs, stops it.
    assert "Traceback" not in status.stderr
    if key == "n:t":
        assert status.returncode == 1 and "unpickle" in status.stderr, status.stderr
    else:
        shown = "REFUSED" if key == "cur:t" else "damaged rows"
        assert status.returncode == 0 and shown in status.stdout, status.stdout
    # a refit
    reopened = TraceStore(store.path)
    task = TracedTask("t", labels=NAMES, store=reopened, embedder=embedder, **OPTIONS)
    if key == "n:t":  # a refit needs the count of traces: it stops, loudly
        with pytest.raises(StoreTampered, match="unpickle"):
            task.refit()
    else:  # the damaged trace is skipped; the tampered pointer is replaced
        task.refit()
        assert reopened.current_version("t") == 2
        if key == "t:t:1":
            assert reopened.unreadable["t"] >= 1
    # calls through the engine: answered, by the LLM if need be; traced or not, never executed
    assert task.call("refund my money please", lambda: "refund") == "refund"
    task.flush(timeout=5)
    assert not marker.exists()


# -- (c) owner-only files -----------------------------------------------------------------------


def test_every_file_and_folder_of_a_store_is_owner_only(tmp_path, embedder) -> None:
    previous = os.umask(0o022)  # the usual umask: files would otherwise be world-readable
    try:
        store = TraceStore(tmp_path / "store")
        fitted(store, embedder)
        store.append("t", "x" * 19_000, "refund")  # large values stay inside SQLite too
        write_private(tmp_path / "artifacts" / "task-1" / "v1.npz", b"data")  # Redis's folder
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"cache.db", "cache.db-journal", "v1.npz", "v1.json"} <= names, names
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [p for p in tmp_path.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700 or path == tmp_path, path


def test_an_older_store_is_tightened_when_opened(tmp_path) -> None:
    store = TraceStore(tmp_path / "store")
    store.append("t", "hello", "greeting")
    store.close()
    db = tmp_path / "store" / "traces" / "cache.db"
    db.chmod(0o644)
    TraceStore(tmp_path / "store").count("t")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
