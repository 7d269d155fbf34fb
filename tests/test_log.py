"""The fault log: once a minute per task, step and exception type, with the repeats counted."""

from __future__ import annotations

import logging

from tracer_wrap._log import fault
from tracer_wrap.errors import StoreError


def test_a_storm_is_logged_once_a_minute_and_another_tasks_fault_still_shows(caplog):
    now = [1000.0]
    caplog.set_level(logging.WARNING, logger="tracer_wrap")
    for _ in range(5):
        fault("trace store", StoreError("disk a is full"), task="a", clock=lambda: now[0])
    # Another task's store fails too, with the same exception type: it is news, not a repeat.
    fault("trace store", StoreError("redis b is down"), task="b", clock=lambda: now[0])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "for task 'a'" in lines[0] and "disk a is full" in lines[0]
    assert "for task 'b'" in lines[1] and "redis b is down" in lines[1]
    now[0] += 61
    fault("trace store", StoreError("disk a is full"), task="a", clock=lambda: now[0])
    assert "(4 more since the last report)" in caplog.records[-1].getMessage()
