"""The version a process serves for one task, and everything that may veto its local answers.

One :class:`Serving` per task and process, used by every path of a call (decorator, SDK clients,
sidecar) through :mod:`tracer_wrap.engine`. A call reads only this process's snapshot: the
background worker (:mod:`tracer_wrap.background`) re-reads the store every ``refresh_seconds``
(:meth:`Serving.refresh`), so a slow, locked or unreachable store never holds a call, and during
an outage the last snapshot keeps serving. ``refresh_seconds=0`` reads the store on every call
instead (tests, diagnostics).

* **the version**: the store's current version, loaded with its hash check
  (:func:`~tracer_wrap.versions.load_version`), swapped as a whole (:class:`Served`) so a call
  never mixes two versions; this process serves a version it publishes at once
  (:meth:`Serving.install`). A version that fails to load, or that was fitted with another
  embedder than this process's, is refused once (the fault is logged) and the process answers
  nothing locally until another version is current;
* its **out-of-distribution** scorer: an input the router accepts but that lies far from every
  training trace is deferred;
* the **routing switch**: the store setting every process reads (shadow mode when off), else the
  task's ``routing`` option;
* the **drift breaker** (:mod:`tracer_wrap.breaker`): while tripped, nothing is answered locally;
* the **audit rate**: the share of would-be local answers sent to the LLM anyway.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from . import background, names
from ._log import fault
from .breaker import DriftBreaker
from .errors import ConfigError, EmbedderError, RouterLoadError, StoreError, StoreTampered
from .model.ood import OODScorer
from .model.router import Decision, Router
from .versions import certified_coverage, load_ood, load_version

if TYPE_CHECKING:
    from .model.embedder import Embedder
    from .options import TaskOptions
    from .store import Store

__all__ = ["AUDIT_FLOOR_SHARE", "AUDIT_REFERENCE", "Served", "Serving"]

#: The audit rate starts falling once the served router was calibrated on this many traces: it
#: scales with ``sqrt(AUDIT_REFERENCE / n_calibration)``, down to a quarter of ``audit_rate``.
AUDIT_REFERENCE = 1000
AUDIT_FLOOR_SHARE = 0.25


@dataclass(frozen=True)
class Served:
    """A version as this process serves it: router and OOD scorer, or why there is none."""

    version: int | None
    router: Router | None = None
    ood: OODScorer | None = None
    reason: str = "no router fitted yet"

    @property
    def certified(self) -> bool:
        """Whether the router certifies the served target (it may answer some calls locally)."""
        return self.router is not None and self.router.threshold is not None

    @property
    def n_calibration(self) -> int:
        return 0 if self.router is None else int(self.router.info.get("n_calibration", 0))

    @functools.cached_property
    def coverage(self) -> float | None:
        """The coverage the router certifies at its served target, as its manifest says
        (:func:`~tracer_wrap.versions.certified_coverage`); None without a router. Computed once
        per version served, in memory: a call never reads the store for it."""
        if self.router is None:
            return None
        return certified_coverage({"certificates": self.router.frontier()}, self.router.target)


@dataclass(frozen=True)
class _Unreadable:
    """A current-version pointer that cannot be read, and why."""

    reason: str


#: How long the first call of a task waits for the first read of the store (sync paths only).
FIRST_LOAD_SECONDS = 0.1


class Serving:
    """What one task serves in this process; see the module docstring.

    ``store`` and ``embedder`` are getters (both open lazily). Thread-safe; :meth:`after_fork`
    gives a forked child fresh locks.
    """

    def __init__(self, task: str, options: TaskOptions, store: Callable[[], Store],
                 embedder: Callable[[], Embedder]) -> None:
        self.task = task
        self.options = options
        self._store = store
        self._embedder = embedder
        self._lock = threading.Lock()
        # Set by the first read of the store, or once a call has waited for it: while the store
        # cannot be read (an outage, a lock held by another process, a damaged file) the read
        # never succeeds, and without the second case every call would wait the whole
        # FIRST_LOAD_SECONDS (measured: 0.1 s on every call of a process started during an outage).
        self._settled = threading.Event()
        self._served = Served(None)
        self._refused: int | None = None
        self._routing = options.routing
        self._tripped = False
        self._refreshed_at = -math.inf
        self._breaker: DriftBreaker | None = None

    # -- what a call reads -----------------------------------------------------------------------

    def served(self, *, wait: bool = True) -> Served:
        """The version to serve now. With ``wait``, the first call of a task waits up to
        :data:`FIRST_LOAD_SECONDS` for the first read of the store, and later calls never wait,
        whether that read succeeded or not (calls arriving together during the first wait each
        wait at most that long). Raises StoreError only with ``refresh_seconds=0`` (then it reads
        the store itself)."""
        if self.options.refresh_seconds == 0:
            self.refresh()
        elif wait and not self._settled.is_set():
            background.wake()
            self._settled.wait(FIRST_LOAD_SECONDS)
            self._settled.set()
        return self._served

    def routing_on(self) -> bool:
        """The routing switch: the store's setting if set, else the ``routing`` option."""
        return self._routing

    def tripped(self) -> bool:
        """Whether the drift breaker is tripped."""
        return self._tripped

    def audit_rate(self, served: Served) -> float:
        """The audit rate for ``served``: ``audit_rate`` falling with its calibration size."""
        rate = self.options.audit_rate
        n = served.n_calibration
        if callable(rate):
            return float(rate(n))
        return rate * max(AUDIT_FLOOR_SHARE, math.sqrt(AUDIT_REFERENCE / max(n, AUDIT_REFERENCE)))

    # -- keeping the snapshot fresh ----------------------------------------------------------------

    def due(self) -> bool:
        """Whether the background worker should refresh the snapshot: it is older than
        ``refresh_seconds`` (never with ``refresh_seconds=0``, where every call reads the store)."""
        refresh = self.options.refresh_seconds
        return refresh > 0 and self.options.monotonic() - self._refreshed_at >= refresh

    def refresh(self) -> None:
        """Re-read the version, routing switch and breaker from the store; load a new version.
        Raises StoreError when the store cannot be read (the snapshot is kept)."""
        store = self._store()
        try:
            version: int | None | _Unreadable = store.current_version(self.task)
        except StoreTampered as exc:
            fault("reading the current version", exc, task=self.task)
            version = _Unreadable(f"the current version cannot be read: {exc}")
        # A routing switch or breaker row that cannot be read is taken on the safe side: routing
        # off, breaker tripped (every call goes to the LLM until it is written again).
        routing = self._setting(store, names.SETTING_ROUTING, False)
        trip = self._setting(store, names.SETTING_BREAKER, {})
        if isinstance(version, _Unreadable):
            with self._lock:
                self._served = Served(None, reason=version.reason)
        elif version != self._served.version and version != self._refused:
            served = self._load(version)
            with self._lock:
                self._served = served
        self._routing = self.options.routing if routing is None else bool(routing)
        self._tripped = isinstance(trip, dict) and self.options.breaker is not False
        self._refreshed_at = self.options.monotonic()
        self._settled.set()

    def _setting(self, store: Store, name: str, unreadable: object) -> object:
        """A setting of the task; ``unreadable`` (logged) when its row cannot be read."""
        try:
            return store.get_setting(self.task, name)
        except StoreTampered as exc:
            fault("reading a setting", exc, task=self.task)
            return unreadable

    def invalidate(self) -> None:
        """Re-read the store at the next refresh (the routing switch or breaker changed here)."""
        self._refreshed_at = -math.inf

    def install(self, version: int, router: Router, ood: OODScorer | None) -> None:
        """Serve ``version`` now: this process just published it (its bytes were just written,
        so they are not read back)."""
        router.target = self.options.target
        with self._lock:
            self._served = Served(version, router,
                                  ood if self.options.ood_quantile is not None else None, "")
            self._refused = None
            self._tripped = False
        self._settled.set()

    def note_trip(self) -> None:
        """The breaker tripped in this process: stop answering locally at once."""
        self._tripped = True

    def _load(self, version: int | None) -> Served:
        if version is None:
            return Served(None)
        store = self._store()
        try:
            router = load_version(store, self.task, version)
            embedder = self._embedder()
            fitted_with = router.info.get("embedder")
            if fitted_with != embedder.name:  # load_version refuses a manifest without one
                raise RouterLoadError(
                    f"version {version} of {self.task!r} was fitted with embedder {fitted_with!r};"
                    f" this process embeds with {embedder.name!r}")
            router.target = self.options.target
            ood = load_ood(store, self.task, version, dim=router.dim) \
                if self.options.ood_quantile is not None else None
        except (StoreError, EmbedderError):
            raise  # transient (the store or the model cannot be reached): the next refresh retries
        except Exception as exc:  # whatever fails to load is refused, never served
            self._refused = version
            fault("router load", exc, task=self.task)
            return Served(version, reason=f"version {version} cannot be served: {exc}")
        self._refused = None
        return Served(version, router, ood, reason="")

    # -- deciding --------------------------------------------------------------------------------

    def decide(self, served: Served, texts: Sequence[str] | None, vectors: np.ndarray
               ) -> list[tuple[Decision, bool]]:
        """The router's decision for each input, vetoed when out of distribution; each with
        whether the OOD check vetoed it. ``texts`` may be None (route by embedding).
        Raises ConfigError when the vectors do not have the router's dimension."""
        router = served.router
        if router is None:
            raise ValueError("no router is served")
        if vectors.ndim != 2 or vectors.shape[1] != router.dim:
            raise ConfigError(f"embeddings of dimension {vectors.shape[-1]} do not fit version"
                              f" {served.version} of {self.task!r} ({router.dim} dimensions)")
        decisions = router.route_many(texts, vectors)
        vetoes: list[str | None] = [None] * len(decisions)
        local = [i for i, d in enumerate(decisions) if d.local]
        if served.ood is not None and local:  # only a local answer can be vetoed
            for i, veto in zip(local, served.ood.vetoes(vectors[local],
                                                        [decisions[i].label for i in local])):
                vetoes[i] = veto
        return [(replace(decision, local=False, reason=veto), True) if veto is not None
                else (decision, False) for decision, veto in zip(decisions, vetoes)]

    @property
    def breaker(self) -> DriftBreaker | None:
        """The drift breaker of this task (None when the ``breaker`` option turns it off)."""
        if self._breaker is None and self.options.breaker is not False:
            with self._lock:
                if self._breaker is None:
                    extra = dict(self.options.breaker) if not isinstance(
                        self.options.breaker, bool) else {}
                    self._breaker = DriftBreaker(
                        self._store(), self.task, target=self.options.target,
                        clock=self.options.monotonic,
                        **{"refresh_seconds": self.options.refresh_seconds, **extra})
        return self._breaker

    def after_fork(self) -> None:
        # A child of fork inherits a lock perhaps held by a parent thread that does not exist in
        # the child: start afresh.
        self._lock = threading.Lock()
        if self._breaker is not None:
            self._breaker._lock = threading.Lock()
