"""Wall-clock jumps: claims run on the monotonic clock and the boot id, and retention never
deletes traces the newest refit has not seen. The wall clock is faked by replacing
``time.time`` (what diskcache's ``expire`` and trace timestamps read)."""

from __future__ import annotations

import json
import time

import pytest
from _synthetic import make_traces
from _wait import until

from tracer_wrap import TracedTask, names
from tracer_wrap.store import TraceStore

DAY = 86_400.0


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch):
    """``wall(offset)`` moves the wall clock by ``offset`` seconds from now on."""
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def jump(seconds: float) -> None:
        offset[0] += seconds

    return jump


@pytest.mark.parametrize("jump", [16 * 60, 400 * DAY], ids=["+16min", "+400days"])
def test_a_forward_jump_never_frees_a_live_claim(store: TraceStore, wall, jump: float) -> None:
    assert store.claim("t", names.CLAIM_REFIT, ttl=600)
    wall(jump)
    assert not store.claim("t", names.CLAIM_REFIT, ttl=600)  # no second refit at once
    other = TraceStore(store.path)  # another process's view of the same files
    assert not other.claim("t", names.CLAIM_REFIT, ttl=600)


def test_a_backward_jump_never_keeps_a_dead_claim(store: TraceStore, wall) -> None:
    assert store.claim("t", names.CLAIM_REFIT, ttl=0.05)
    wall(-DAY)
    until(lambda: store.claim("t", names.CLAIM_REFIT, ttl=600),
          "the claim to lapse after its ttl, not a day later")


def test_a_claim_of_another_boot_is_dead(store: TraceStore) -> None:
    store.set_setting("t", "x", 1)  # the meta cache exists
    _, meta = store._caches()
    meta.set(f"claim:t:{names.CLAIM_REFIT}",
             json.dumps({"pid": 1, "boot_id": "another-boot", "deadline": 1e18}))
    assert store.claim("t", names.CLAIM_REFIT, ttl=600)
    assert not store.claim("t", names.CLAIM_REFIT, ttl=600)


def test_release_frees_only_the_holders_claim(store: TraceStore) -> None:
    assert store.claim("t", names.CLAIM_REFIT, ttl=600)
    _, meta = store._caches()
    key = f"claim:t:{names.CLAIM_REFIT}"
    mine = json.loads(meta.get(key))
    meta.set(key, json.dumps({**mine, "pid": mine["pid"] + 1}))  # lapsed and taken by another
    store.release("t", names.CLAIM_REFIT)
    assert not store.claim("t", names.CLAIM_REFIT, ttl=600)
    meta.set(key, json.dumps(mine))
    store.release("t", names.CLAIM_REFIT)
    assert store.claim("t", names.CLAIM_REFIT, ttl=600)


def test_retention_never_deletes_traces_no_refit_has_seen(store: TraceStore, embedder, wall,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """While a refit fits, 20 more answers are traced and the wall clock jumps 400 days ahead:
    age retention then finds every trace 400 days old, yet deletes only those the refit saw."""
    task = TracedTask("t", store=store, embedder=embedder, min_traces=20, refit_every=None,
                      audit_rate=0.0, retention={"max_age_seconds": 3600})
    rows = make_traces(60)
    for text, label in rows[:40]:
        task.call(text, lambda label=label: label)
    task.flush()
    runner = task.refitter.runner
    fit = runner.run_fit

    def fit_during_traffic(fn, **kwargs):
        for text, label in rows[40:]:
            store.append("t", text, label)
        wall(400 * DAY)
        return fit(fn, **kwargs)

    monkeypatch.setattr(runner, "run_fit", fit_during_traffic)
    task.refit()
    assert [t.input for t in store.traces("t")] == [text for text, _ in rows[40:]]


def test_prune_keeps_every_trace_above_keep_after_seq(store: TraceStore, wall) -> None:
    for i in range(10):
        store.append("t", f"text {i}", "a")
    wall(400 * DAY)
    assert store.prune("t", max_age_seconds=60, keep_after_seq=6) == 6
    assert [t.seq for t in store.traces("t")] == [7, 8, 9, 10]
    assert store.prune("t", max_traces=1, keep_after_seq=6) == 0
