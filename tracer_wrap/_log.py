"""The library's logger, and a rate limit so a fault in a storm of calls is logged once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("tracer_wrap")

_QUIET_SECONDS = 60.0
_last: dict[tuple[str, str, str], tuple[float, int]] = {}
_lock = threading.Lock()


def fault(step: str, exc: BaseException, *, task: str | None = None,
          then: str = "calls go on without it",
          clock: Callable[[], float] = time.monotonic) -> None:
    """Log that ``step`` (of ``task``, when given) failed with ``exc``, and what happens ``then``
    (by default that calls go on without that step).

    The same task, step and exception type are logged at most once a minute, with the number of
    repeats since the last line, so a broken disk does not flood the application's logs, while
    another task's fault (say, on another store) is still logged when it first happens.
    """
    key = (task or "", step, type(exc).__name__)
    now = clock()
    with _lock:
        last, repeats = _last.get(key, (-_QUIET_SECONDS, 0))
        if now - last < _QUIET_SECONDS:
            _last[key] = (last, repeats + 1)
            return
        _last[key] = (now, 0)
    more = f" ({repeats} more since the last report)" if repeats else ""
    of = f" for task {task!r}" if task else ""
    # Not "calling the LLM instead": most steps (trace logging, the store writes, refits,
    # telemetry) fail after the LLM answered, or off the request path.
    logger.warning("tracer_wrap %s failed%s; %s: %s: %s%s", step, of, then,
                   type(exc).__name__, exc, more, exc_info=logger.isEnabledFor(logging.DEBUG))
