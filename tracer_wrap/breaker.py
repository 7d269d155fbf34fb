"""The drift breaker: stop answering locally when live agreement is credibly below the target.

Audit samples are calls the router would have answered but that went to the LLM anyway, drawn at
random; whether the router's label agreed with the LLM's is an unbiased draw of the agreement on
handled traffic. The breaker runs a one-sided *repeated* sequential probability ratio test (Wald's
SPRT restarted whenever it accepts the null, which makes it a CUSUM-like change detector) on those
draws, per router version:

    H0: agreement = target          H1: agreement = target - margin

The log-likelihood ratio of the draws since the last restart is compared with Wald's boundaries:
above ``log((1 - beta) / alpha)`` the breaker trips; below ``log(beta / (1 - alpha))`` the test
restarts from the current counts, so a long good past cannot mask a later drift. While the true
agreement is at or above the target a trip is a false alarm of probability about ``alpha`` per
test cycle; at ``target - margin`` or below it trips after a few dozen audit samples.

State lives in the store (atomic counters and settings), so every process serving the task feeds
the same test and sees the same trip. The test runs per *epoch*, not per version: a routine refit
does not wipe the evidence gathered so far (it was fitted and calibrated on the same, possibly
stale, traces), but a trip ends the epoch once a refit publishes the version that replaces the
tripped one (:meth:`DriftBreaker.reset`), which is how a new version resets a tripped breaker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import names
from ._log import logger
from .errors import ConfigError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["BreakerStatus", "DriftBreaker"]

#: A version trips at most once (the claim makes racing processes agree on who records it).
_TRIP_CLAIM_SECONDS = 365 * 24 * 3600.0


@dataclass(frozen=True)
class BreakerStatus:
    """The test of one version: audit samples and disagreements in total and since the last
    restart, the log-likelihood ratio since the restart, and whether (and why) it tripped."""

    version: int | None
    audits: int
    disagreements: int
    window_audits: int
    window_disagreements: int
    llr: float
    tripped: bool
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DriftBreaker:
    """A repeated one-sided SPRT on audit agreement, shared through the store.

    Parameters: ``target`` the agreement promised, ``margin`` the drop the test is tuned to
    detect quickly, ``alpha`` the false-trip probability per test cycle, ``beta`` the miss
    probability per cycle (it sets the restart boundary). ``refresh_seconds`` bounds how stale
    this process's view of a trip made elsewhere may be (read from ``clock``, monotonic).
    """

    def __init__(self, store: Store, task: str, *, target: float, margin: float = 0.10,
                 alpha: float = 0.005, beta: float = 0.05, refresh_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < margin < target:
            raise ConfigError(f"breaker margin must be in (0, target), got {margin!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not 0.0 < value < 0.5:
                raise ConfigError(f"breaker {name} must be in (0, 0.5), got {value!r}")
        self.store = store
        self.task = task
        p0 = min(target, 1.0 - 1e-4)  # a target of 1 would make one disagreement infinitely telling
        p1 = p0 - margin
        self.target = target
        self.agree_llr = math.log(p1 / p0)
        self.disagree_llr = math.log((1.0 - p1) / (1.0 - p0))
        self.upper = math.log((1.0 - beta) / alpha)
        self.lower = math.log(beta / (1.0 - alpha))
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[bool, float] | None = None

    # -- feeding the test ------------------------------------------------------------------------

    def observe(self, agree: bool, version: int | None = None) -> BreakerStatus:
        """Add one observation of ``version``: an audit sample's agreement, or a disagreement
        the engine saw otherwise (a deferred answer naming a label the version never saw); trip
        (once per epoch) when the test says so.

        Counts are atomic store counters. A trip records the reason in the store (every process
        stops answering locally) and logs a warning; the returned status has ``tripped`` set.
        The caller is expected to schedule a refit.
        """
        epoch = self.store.counter(self.task, names.COUNTER_BREAKER_EPOCH)
        if not agree:
            self.store.incr(self.task, names.counter_breaker(epoch, "bad"))
        n = self.store.incr(self.task, names.counter_breaker(epoch, "n"))
        status = self.status(epoch=epoch, audits=n)
        if status.tripped:
            return status
        if status.llr >= self.upper and self.store.claim(self.task, names.claim_breaker_trip(epoch),
                                                          ttl=_TRIP_CLAIM_SECONDS):
            return self._trip(version, status)
        if status.llr <= self.lower:
            # Enough evidence that all is fine so far: restart, so the past cannot absorb a
            # later drift.
            self.store.set_setting(self.task, names.setting_breaker_base(epoch),
                                   [status.audits, status.disagreements])
        return status

    def status(self, *, epoch: int | None = None, audits: int | None = None) -> BreakerStatus:
        """The current test, read from the store."""
        store, task = self.store, self.task
        epoch = store.counter(task, names.COUNTER_BREAKER_EPOCH) if epoch is None else epoch
        n = store.counter(task, names.counter_breaker(epoch, "n")) if audits is None else audits
        bad = store.counter(task, names.counter_breaker(epoch, "bad"))
        n0, bad0 = store.get_setting(task, names.setting_breaker_base(epoch), [0, 0])
        wn, wbad = max(0, n - n0), max(0, bad - bad0)
        llr = wbad * self.disagree_llr + (wn - wbad) * self.agree_llr
        record = self.last_trip()
        return BreakerStatus(record["version"] if record else None, n, bad, wn, wbad, llr,
                             record is not None, record["reason"] if record else "")

    # -- reading the state ------------------------------------------------------------------------

    def tripped(self) -> bool:
        """Whether the breaker is tripped; re-read from the store at most every
        ``refresh_seconds`` (at once in the process that tripped or reset it)."""
        now = self._clock()
        with self._lock:
            cached = self._cached
            if cached is not None and now - cached[1] < self.refresh_seconds:
                return cached[0]
        value = self.last_trip() is not None
        with self._lock:
            self._cached = (value, now)
        return value

    def last_trip(self) -> dict[str, Any] | None:
        """The record of the trip in force (None when not tripped)."""
        record = self.store.get_setting(self.task, names.SETTING_BREAKER)
        return record if isinstance(record, dict) else None

    def reset(self) -> None:
        """Clear the trip and start a new epoch of the test (done when a refit replaces the
        tripped version, or by hand after checking the LLM itself changed). The cleared record
        stays readable under the ``breaker_last_trip`` setting."""
        record = self.last_trip()
        if record is not None:
            self.store.set_setting(self.task, names.SETTING_BREAKER_LAST_TRIP, record)
        self.store.incr(self.task, names.COUNTER_BREAKER_EPOCH)
        self.store.set_setting(self.task, names.SETTING_BREAKER, None)
        with self._lock:
            self._cached = (False, self._clock())

    def _trip(self, version: int | None, status: BreakerStatus) -> BreakerStatus:
        agreement = 1.0 - status.window_disagreements / max(1, status.window_audits)
        # Not "audit samples": the engine also counts a deferred answer naming a label the
        # version never saw (a new intent) as a disagreement, so a trip may have no audit in it.
        reason = (f"{status.window_disagreements} of the last {status.window_audits} observations"
                  f" (audit samples, and deferred answers naming a label the version never saw)"
                  f" disagreed with the LLM (agreement {agreement:.3f}); the sequential test says"
                  f" live agreement is below the target {self.target:g}")
        seq = self.store.count(self.task)
        self.store.set_setting(self.task, names.SETTING_CALIBRATE_AFTER, seq)
        self.store.set_setting(self.task, names.SETTING_BREAKER, {
            "version": version, "reason": reason, "at": time.time(), "seq": seq,
            "audits": status.audits, "disagreements": status.disagreements,
        })
        self.store.incr(self.task, names.COUNTER_BREAKER_TRIPS)
        with self._lock:
            self._cached = (True, self._clock())
        logger.warning("tracer_wrap drift breaker tripped for %r, version %s: %s. Every call goes"
                       " to the LLM until a refit publishes a new version.", self.task, version,
                       reason)
        return BreakerStatus(version, status.audits, status.disagreements, status.window_audits,
                             status.window_disagreements, status.llr, True, reason)
