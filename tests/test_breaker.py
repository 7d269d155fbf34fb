"""The drift breaker: a repeated SPRT on audit agreement, shared through the store."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from tracer_wrap import Embedder, TraceStore
from tracer_wrap.breaker import DriftBreaker
from tracer_wrap.lab.simulate import simulate


def feed(breaker: DriftBreaker, version: int, agreement: float, n: int,
         seed: int = 0) -> int | None:
    """Feed ``n`` audit samples; return how many it took to trip (None: no trip)."""
    rng = random.Random(seed)
    for i in range(1, n + 1):
        if breaker.observe(rng.random() < agreement, version).tripped:
            return i
    return None


def test_no_trip_at_target_trips_fast_below(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    good = DriftBreaker(store, "good", target=0.95)
    assert feed(good, 1, 0.97, 2000) is None
    bad = DriftBreaker(store, "bad", target=0.95)
    took = feed(bad, 1, 0.70, 500)
    assert took is not None and took < 80
    assert bad.tripped() and "below the target" in bad.status().reason
    assert "observations (audit samples" in bad.status().reason  # not all need be audits


def test_long_good_past_does_not_mask_a_drift(tmp_path: Path) -> None:
    breaker = DriftBreaker(TraceStore(tmp_path), "t", target=0.95)
    assert feed(breaker, 1, 0.99, 3000) is None
    took = feed(breaker, 1, 0.75, 500, seed=1)
    assert took is not None and took < 80  # the restarts forgot the good past


def test_false_trip_rate_is_small(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    trips = sum(feed(DriftBreaker(store, f"t{s}", target=0.9), 1, 0.9, 300, seed=s) is not None
                for s in range(40))
    assert trips <= 4  # alpha = 0.01 per cycle; 300 samples at exactly the target


def test_trip_is_shared_and_reset_starts_a_new_epoch(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    store = TraceStore(tmp_path)
    now = [0.0]
    mine = DriftBreaker(store, "t", target=0.95)
    other = DriftBreaker(TraceStore(tmp_path), "t", target=0.95, clock=lambda: now[0])
    assert not other.tripped()
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        assert feed(mine, 3, 0.5, 200) is not None
    assert "drift breaker tripped" in caplog.text
    assert not other.tripped()  # cached view, refreshed after refresh_seconds
    now[0] += 1.5
    assert other.tripped() and other.status().version == 3
    assert store.counter("t", "breaker_trips") == 1
    mine.reset()  # what publishing the replacing version does
    assert not mine.tripped() and store.get_setting("t", "breaker_last_trip")["version"] == 3
    assert mine.status().audits == 0  # a new epoch of the test


# ~15 refits of 6,000 Banking77 traces: 2-3 minutes on a quiet machine, more on a busy one.
@pytest.mark.timeout(1200)
def test_shifted_stream_trips_before_agreement_falls(tmp_path: Path, banking77_train) -> None:
    """Half-way, 24 intents never seen before arrive; the router maps them to old ones."""
    d = banking77_train
    X, y, texts = d["X"], d["y"].astype(str), d["texts"].astype(str)
    rng = np.random.default_rng(0)
    labels = sorted(set(y))
    rng.shuffle(labels)
    old = set(labels[:50])
    perm = rng.permutation(len(y))
    seen = [i for i in perm if y[i] in old]
    new = [i for i in perm if y[i] not in old]
    first, second = seen[:3000], list(rng.permutation(seen[3000:4500] + new[:1500]))
    stream = tmp_path / "shift.jsonl"
    stream.write_text("".join(json.dumps({"input": texts[i], "teacher": y[i]}) + "\n"
                              for i in first + second))
    emb = Embedder.precomputed(dict(zip(texts.tolist(), X)))
    result = simulate(stream, target=0.95, refit_every=500, embedder=emb, audit_rate=0.2,
                      curve_points=40, store=tmp_path / "store")
    assert result["breaker_trips"] >= 1
    # "Before agreement falls far below": within two points over the whole stream.
    assert result["local_agreement"] >= 0.95 - 0.02
    # Over the shifted half, local answers stay close to the target overall...
    after = [p for p in result["curve"] if p["n"] > 3000]
    local_after = sum(p["window_coverage"] * 150 for p in after)
    agreeing_after = sum(p["window_coverage"] * 150 * (p["window_agreement"] or 0) for p in after)
    # Measured 0.88-0.90 here (it moves with float noise in the fits): the local answers given
    # to unseen intents before the trip cost most of the gap.
    assert local_after > 0 and agreeing_after / local_after >= 0.95 - 0.08
    # ...and routing came back once versions calibrated on post-trip traffic were published.
    assert after[-1]["window_coverage"] > 0.3 and after[-1]["window_agreement"] >= 0.9
