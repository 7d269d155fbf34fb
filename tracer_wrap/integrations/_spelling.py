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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._log import fault
from ..labels import _key

if TYPE_CHECKING:
    from ..engine import TracedTask

__all__ = ["SETTING_PREFIX", "Spellings"]

#: Store setting names of remembered spellings: ``spelling:<comparison key of the label>``.
SETTING_PREFIX = "spelling:"
#: At most this many spellings per task and process (a task of free-text answers is no label set).
MAX_SPELLINGS = 256
#: An answer longer than this, or of several lines, is no label to remember a spelling of.
MAX_LABEL_CHARS = 64
#: A label with no remembered spelling is looked up in the store again after this many seconds.
RETRY_SECONDS = 30.0


class Spellings:
    """The LLM's spelling of each label of one task. Thread-safe; never raises (a store fault is
    logged and the label keeps the spelling it came with)."""

    def __init__(self, task: TracedTask, clock: Callable[[], float] = time.monotonic) -> None:
        self._task = task
        self._clock = clock
        self._known: dict[str, str] = {}
        self._missing: dict[str, float] = {}  # key -> when the store last had no spelling of it
        self._lock = threading.Lock()

    def learn(self, raw: object) -> object:
        """``raw`` (an LLM's raw label) in the spelling first seen for its label; remembers it
        when it is the first. Anything but one label spelled some way is returned unchanged."""
        if not isinstance(raw, str):
            return raw
        spelled = raw.strip()
        key = _key(spelled)
        known = self._known.get(key)
        if known is not None:
            return known
        try:
            if (len(spelled) > MAX_LABEL_CHARS or "\n" in spelled
                    or len(self._known) >= MAX_SPELLINGS):
                return raw  # free text, not a label
            label = self._task.label_set.normalise(spelled)
            if label is None or _key(label) != key:
                return raw  # invalid, or a label with an explanation: not a spelling of it
            stored = self._task.store.setdefault_setting(self._task.task, SETTING_PREFIX + key,
                                                         spelled)
        except Exception as exc:
            fault("trace store", exc)
            return raw
        known = stored if isinstance(stored, str) and _key(stored) == key else spelled
        with self._lock:
            self._known[key] = known
            self._missing.pop(key, None)
        return known

    def spell(self, label: str) -> str:
        """``label`` (a router's label) in the spelling the LLM answers it in; ``label`` itself
        while no LLM answer of it was seen by any process."""
        key = _key(label)
        known = self._known.get(key)
        if known is not None:
            return known
        now = self._clock()
        missing = self._missing.get(key)
        if missing is not None and now - missing < RETRY_SECONDS:
            return label
        try:
            stored = self._task.store.get_setting(self._task.task, SETTING_PREFIX + key)
        except Exception as exc:
            fault("trace store", exc)
            stored = None
        with self._lock:
            if isinstance(stored, str) and _key(stored) == key:
                self._known[key] = stored
                return stored
            self._missing[key] = now
        return label
