"""One accounting for every path: what the calls cost, and what answering locally saved.

Counters (:data:`tracer_wrap.names.USAGE_COUNTERS`) are kept per task in the store and summed over
every process and path (decorator, SDK clients, sidecar): ``calls``, ``local`` (answered locally),
``llm`` (LLM answers), ``audits``, ``invalid``, the input and output tokens providers reported and
``usage_calls`` (the LLM answers that reported them), and the traces ``dropped`` or ``poisoned``
on their way to the store. A process adds to them through its :class:`Ledger`, which keeps the
deltas in memory; the background worker (:mod:`tracer_wrap.background`) writes them in one store
transaction a few times a second and at interpreter exit, so counting never waits on the store.

Money comes from one :class:`Price` per task (per call and/or per million input and output
tokens), set in code, ``tracer_wrap.toml``, the environment or ``tracer-wrap price``, and kept in
the store so every reader values calls alike. An LLM call costs ``per_call`` plus its tokens at the
token prices; tokens are averaged over the LLM answers that reported usage. Each local answer saves
one such mean LLM call: ``saved = local x cost_per_llm_call``. :func:`summary` is the one place
that computes these figures; ``status``, the HTML report, ``savings()`` and the sidecar read it.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from . import names
from ._log import fault
from .errors import StoreError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Ledger", "Price", "Usage", "flush_all", "read_summary", "summary"]


@dataclass(frozen=True)
class Price:
    """What one LLM call of a task costs, in any one currency: ``per_call`` plus ``input_per_mtok``
    and ``output_per_mtok`` per million input and output tokens."""

    FIELDS: ClassVar[tuple[str, ...]] = ("per_call", "input_per_mtok", "output_per_mtok")

    per_call: float = 0.0
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_setting(cls, value: Any) -> Price | None:
        """The price stored as a task setting; None when absent or malformed (a field that is
        not a finite number >= 0: a store written by an older release may hold one)."""
        if not isinstance(value, Mapping):
            return None
        try:
            fields = {k: float(value[k]) for k in cls.FIELDS if k in value}
        except (TypeError, ValueError):
            return None
        if not all(math.isfinite(v) and v >= 0 for v in fields.values()):
            return None
        return cls(**fields)

    def describe(self) -> str:
        parts = [f"{self.per_call:g} per call"] if self.per_call else []
        if self.input_per_mtok or self.output_per_mtok:
            parts.append(f"{self.input_per_mtok:g} / {self.output_per_mtok:g} per million input /"
                         " output tokens")
        return " + ".join(parts) or "free"


@dataclass(frozen=True)
class Usage:
    """Tokens one LLM answer consumed, as its provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0


def summary(counters: Mapping[str, int], price: Price | None) -> dict[str, Any]:
    """The figures of a task from its counters and price (the money fields are None without a
    price). ``local_share`` is local answers over local answers plus LLM answers."""
    def get(name: str) -> int:
        return int(counters.get(name, 0))

    calls, local, llm = get(names.COUNTER_CALLS), get(names.COUNTER_LOCAL), get(names.COUNTER_LLM)
    tokens_in, tokens_out = get(names.COUNTER_INPUT_TOKENS), get(names.COUNTER_OUTPUT_TOKENS)
    usage_calls = get(names.COUNTER_USAGE_CALLS)
    out: dict[str, Any] = {
        "calls": calls, "local": local, "llm": llm, "audits": get(names.COUNTER_AUDITS),
        "invalid": get(names.COUNTER_INVALID), "dropped": get(names.COUNTER_DROPPED),
        "poisoned": get(names.COUNTER_POISONED), "input_tokens": tokens_in,
        "output_tokens": tokens_out, "usage_calls": usage_calls,
        "local_share": local / (local + llm) if local + llm else None,
        "llm_calls_avoided": local,
        "price": None if price is None else price.as_dict(),
        "cost_per_llm_call": None, "llm_cost": None, "saved": None,
        "cost_without_tracer_wrap": None,
    }
    if price is not None:
        token_cost = 0.0
        if usage_calls:
            token_cost = (tokens_in * price.input_per_mtok
                          + tokens_out * price.output_per_mtok) / 1e6 / usage_calls
        per_call = price.per_call + token_cost
        out.update(cost_per_llm_call=per_call, llm_cost=llm * per_call, saved=local * per_call,
                   cost_without_tracer_wrap=(llm + local) * per_call)
    return out


def read_summary(store: Store, task: str) -> dict[str, Any]:
    """:func:`summary` of ``task`` from the store's counters and price setting, with ``task``.
    Raises StoreError when the store cannot be read."""
    price = Price.from_setting(store.get_setting(task, names.SETTING_PRICE))
    return {"task": task, **summary(store.counters(task), price)}


class Ledger:
    """Counter deltas of one task in this process, written to the store in the background.

    :meth:`add` only takes a lock and adds integers. :meth:`flush` writes every pending delta in
    one atomic store call (``Store.add_counters``) as a batch with an id; when the store fails,
    the batch is resent unchanged, with its id, by the next flush (it is a handful of integers,
    so nothing grows), and the store adds a batch once even if the failed call had reached it. A
    configured ``price`` is written to the store's price setting with the first counts flushed.
    Thread-safe; after ``fork`` the child starts with no pending deltas (the parent keeps and
    writes its own).
    """

    def __init__(self, store: Callable[[], Store], task: str, price: Price | None = None) -> None:
        self._store = store
        self.task = task
        self._price = price
        self._pending: dict[str, int] = {}
        # A batch the store may or may not have added (its call failed): resent as is.
        self._unsent: tuple[str, dict[str, int]] | None = None
        self._lock = threading.Lock()
        # Held for a whole flush, so a flush that returns has seen every earlier delta written
        # (a background flush may have taken them a moment before).
        self._flushing = threading.Lock()
        _LEDGERS.add(self)

    def add(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (counter name -> delta) to the pending deltas. Never raises."""
        with self._lock:
            for name, delta in counts.items():
                if delta:
                    self._pending[name] = self._pending.get(name, 0) + int(delta)

    def flush(self, timeout: float | None = None) -> bool:
        """Write the pending deltas now; True when every delta added before the call is in the
        store. Waits at most ``timeout`` seconds (None: no limit) for a flush another thread is
        running, then returns False and leaves the deltas pending. Never raises (a store fault is
        logged and the deltas wait for the next flush)."""
        if not self._flushing.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            return self._flush()
        finally:
            self._flushing.release()

    def _flush(self) -> bool:
        with self._lock:
            batches = [] if self._unsent is None else [self._unsent]
            if self._pending:
                batches.append((uuid.uuid4().hex, self._pending))
                self._pending = {}
            price, self._price = self._price, None
        if not batches:
            # The price is written with the first counts, not before: a process that counts
            # nothing (say, one with $TRACER_WRAP_DISABLE set) never opens the store for it.
            with self._lock:
                if price is not None and self._price is None:
                    self._price = price
            return True
        sent = 0
        try:
            store = self._store()
            if price is not None and Price.from_setting(
                    store.get_setting(self.task, names.SETTING_PRICE)) != price:
                store.set_setting(self.task, names.SETTING_PRICE, price.as_dict())
            for batch, deltas in batches:
                store.add_counters(self.task, deltas, batch=batch)
                sent += 1
        except Exception as exc:
            # A broken store fails every step that touches it: one fault for the storm.
            fault("trace store" if isinstance(exc, StoreError) else "usage accounting", exc,
                  task=self.task)
            with self._lock:
                if sent < len(batches):
                    # The store may have added this batch before the call failed: resend it
                    # as is, id included; later batches were never sent, back into pending.
                    self._unsent = batches[sent]
                    for _, deltas in batches[sent + 1:]:
                        for name, delta in deltas.items():
                            self._pending[name] = self._pending.get(name, 0) + delta
                if price is not None and self._price is None:
                    self._price = price
            return False
        with self._lock:
            self._unsent = None
        return True

    def _after_fork(self) -> None:
        # The parent keeps and writes its own pending deltas; a lock a parent thread held at the
        # fork would never be released in the child.
        self._pending = {}
        self._unsent = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def has_pending(self) -> bool:
        """Whether some delta is not written yet. Takes no lock (a finalizer calls it)."""
        return bool(self._pending) or self._unsent is not None

    @property
    def pending(self) -> dict[str, int]:
        """A copy of the deltas not yet written."""
        with self._lock:
            return dict(self._pending)


_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


def flush_all() -> bool:
    """Flush every ledger of this process now; True when all are empty afterwards."""
    return all([ledger.flush() for ledger in list(_LEDGERS)])


def _reset_after_fork() -> None:
    for ledger in list(_LEDGERS):
        ledger._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
