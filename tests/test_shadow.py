"""Shadow mode: routing off logs and fits, reports what it would have done; one setting turns it
on."""

from __future__ import annotations

from pathlib import Path

from _wait import until
from test_refit import CLASSES, make_task


def test_shadow_report_and_switch(tmp_path: Path) -> None:
    now = [0.0]
    shadow = make_task(str(tmp_path), routing=False, refit_executor="inline", refit_every=300,
                       monotonic=lambda: now[0], refresh_seconds=1.0)
    for i in range(450):  # v1 is fitted at 300 traces, then shadows 150 calls
        assert shadow.call(f"c{i % CLASSES} {i}", lambda i=i: f"l{i % CLASSES}") == \
            f"l{i % CLASSES}"
    assert shadow.stats.local == 0 and shadow.version is not None
    report = shadow.shadow_report()
    assert report["routing"] is False and report["calls"] > 0
    assert report["would_answer_locally"] > 0.8 * report["calls"] and report["agreement"] >= 0.9
    assert report["certified_coverage"] > 0.8
    # One setting, seen by every task object on the store (here a second one) within refresh.
    other = make_task(str(tmp_path), routing=False, monotonic=lambda: now[0], refresh_seconds=1.0)
    other.set_routing(True)
    assert other.routing_enabled()
    assert not shadow.routing_enabled()  # cached for refresh_seconds
    now[0] += 2
    until(shadow.routing_enabled, "the background refresh")
    shadow.call("c1 after", lambda: "l1")
    assert shadow.stats.local + shadow.stats.audits == 1
