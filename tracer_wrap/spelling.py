"""The spelling an LLM answers each label in, per task, so a local answer is spelled the same way.

A task's label set matches spellings loosely (``"Card Arrival"``, ``"card_arrival"`` and
``"card-arrival."`` are one label: :class:`tracer_wrap.labels.LabelSet` ignores case, spaces,
underscores, hyphens, quotes and a final full stop). What the caller's code sees must not depend on
who answered, so :class:`Spellings` remembers, per task and per label, the first spelling the LLM
itself answered it in, and:

* :meth:`Spellings.learn` maps every LLM answer onto that spelling before the engine normalises
  it, so without a fixed label set (``labels=None``) ``"Card Arrival"`` and ``"card_arrival"``
  become one label, not two;
* :meth:`Spellings.spell` gives a local answer the LLM's spelling of the router's label (with
  ``labels=["Card Arrival"]`` and an LLM that answers ``card_arrival``, local answers say
  ``card_arrival`` too).

Each spelling is one task setting of the store (``spelling:<key>``), claimed atomically
(``setdefault_setting``), so every process agrees on it. An answer that is not one label spelled
differently (a label followed by an explanation, an invalid answer) teaches nothing.

The engine applies both on every path (:class:`tracer_wrap.engine.TracedTask`: the decorator,
the SDK clients, the gateway, the sidecar). Neither method touches the store: both read this
process's memory. The task's background step claims a spelling first seen here and looks up the
ones another process claimed; until it has, a process answers in the spelling it saw first (or
the router's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import names
from .errors import StoreError
from .labels import label_key

if TYPE_CHECKING:
    from .engine import TracedTask

__all__ = ["Spellings"]

#: At most this many spellings per task and process (a task of free-text answers is no label set).
MAX_SPELLINGS = 256
#: An answer longer than this, or of several lines, is no label to remember a spelling of.
MAX_LABEL_CHARS = 64
#: A label with no remembered spelling is looked up in the store again after this many seconds.
RETRY_SECONDS = 30.0


class Spellings:
    """The LLM's spelling of each label of one task; see the module docstring. Thread-safe;
    :meth:`learn` and :meth:`spell` never raise and never wait; the store work is done by the
    task's background step (:meth:`step`, :meth:`drain`)."""

    def __init__(self, task: TracedTask, clock: Callable[[], float] = time.monotonic) -> None:
        self._task = task
        self._clock = clock
        self._known: dict[str, str] = {}
        self._claims: dict[str, str] = {}  # key -> spelling seen here first, not yet claimed
        self._wanted = False  # a local answer needed a spelling this process does not know
        self._loaded_at: float | None = None  # when the store's spellings were last read
        self._lock = threading.Lock()

    def learn(self, raw: object) -> object:
        """``raw`` (an LLM's raw label) in the spelling known for its label; the first spelling
        seen becomes the known one (and is claimed for every process in the background).
        Anything but one label spelled some way is returned unchanged."""
        if not isinstance(raw, str):
            return raw
        spelled = raw.strip()
        key = label_key(spelled)
        known = self._known.get(key)
        if known is not None:
            return known
        try:
            label = self._task.label_set.normalise(spelled)
        except Exception:  # a label set that cannot read it: not a label
            return raw
        if (label is None or label_key(label) != key or len(spelled) > MAX_LABEL_CHARS
                or "\n" in spelled):
            return raw  # invalid, free text, or a label with an explanation
        with self._lock:
            if key not in self._known:
                if len(self._known) >= MAX_SPELLINGS:
                    return raw  # a task of free-text answers is no label set
                self._known[key] = self._claims[key] = spelled
            known = self._known[key]
        # Claimed at the worker's next step (within background.TICK): waking it here would cost
        # the call a wake-up and the worker a step per new spelling.
        return known

    def spell(self, label: str) -> str:
        """``label`` (a router's label) in the spelling the LLM answers it in; ``label`` itself
        while this process knows none (the store's spellings are read again in the background,
        at most every :data:`RETRY_SECONDS`)."""
        known = self._known.get(label_key(label))
        if known is not None:
            return known
        self._wanted = True
        return label

    # -- the background job ----------------------------------------------------------------------

    def step(self) -> None:
        """Claim the spellings first seen here; read every process's spellings once, and again
        when a local answer needed an unknown one (at most every :data:`RETRY_SECONDS`). Raises
        StoreError (what is left waits for the next step)."""
        with self._lock:
            claims = dict(self._claims)
        store, task = self._task.store, self._task.task
        for key, spelled in claims.items():
            stored = store.setdefault_setting(task, names.setting_spelling(key), spelled)
            with self._lock:
                if isinstance(stored, str) and label_key(stored) == key:
                    self._known[key] = stored  # another process claimed it first
                self._claims.pop(key, None)
        now = self._clock()
        if self._loaded_at is not None and not (
                self._wanted and now - self._loaded_at >= RETRY_SECONDS):
            return
        settings = store.settings(task)
        with self._lock:
            for name, stored in settings.items():
                key = _spelling_key(name)
                if (key and isinstance(stored, str) and label_key(stored) == key
                        and key not in self._claims
                        and (key in self._known or len(self._known) < MAX_SPELLINGS)):
                    self._known[key] = stored
            self._loaded_at, self._wanted = now, False

    def drain(self, timeout: float) -> bool:
        """Do the pending store work now; True when none is left. A store fault is retried
        until ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.step()
                return True
            except StoreError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _spelling_key(setting: str) -> str:
    """The label key of a spelling setting's name ("" for any other setting)."""
    prefix = names.setting_spelling("")
    return setting[len(prefix):] if setting.startswith(prefix) else ""
