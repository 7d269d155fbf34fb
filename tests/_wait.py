"""Waiting on a condition, not on the clock: the machines that run the tests are shared."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Longest a test waits for a condition before it fails (generous: only a defect takes this long).
PATIENCE = 120.0


def until(condition: Callable[[], object], what: str = "the condition",
          timeout: float = PATIENCE) -> None:
    """Return once ``condition()`` is true; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout:.0f} s")
        time.sleep(0.01)
