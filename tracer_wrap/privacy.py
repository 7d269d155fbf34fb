"""Privacy: what of an input reaches the trace store.

The LLM always gets the caller's input untouched; the store and the router see it as traced.

* ``redact``: a function ``str -> str`` applied to the input before it is stored, e.g.
  :func:`redact_pii`. The router routes the redacted text too, since it was fitted and certified
  on redacted traces (routing the raw text would measure it on inputs its guarantee never saw).
  A redact hook that raises or returns a non-string stores nothing for that call and sends it to
  the LLM (the fault is logged) rather than risk storing the raw text.
* ``store_inputs="hash"``: the store keeps only a keyed hash (HMAC-SHA256) of each input
  (audit-only tasks: the teacher's labels and counts are kept, the text is not). Such a task
  cannot be fitted. The key is random, 32 bytes per task, created once in the store
  (:func:`hash_key`; ``$TRACER_WRAP_HASH_KEY`` replaces it), so nobody can confirm a guessed
  input by hashing it (public datasets, dictionaries) without the key, while one input always
  gets the same hash within its task (repeats are counted as one trace).
* Every string of a call the store keeps follows the same rule: the input, an invalid LLM
  answer (it may quote the input) and every string in the trace's ``meta``. Labels are kept as
  they are; in a task that declares none, an answer that ``redact`` would change is no label but
  an invalid answer (:class:`~tracer_wrap.labels.LabelSet`), so it is stored redacted too.
* ``retention``: ``{"max_traces": N, "max_age_seconds": S}``, enforced on the store after each
  refit (:meth:`TraceStore.prune`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from . import names
from .errors import ConfigError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["HASH_PREFIX", "StoreInputs", "check_retention", "hash_input", "hash_key",
           "map_strings", "redact_pii"]

StoreInputs = Literal["raw", "hash"]
Redactor = Callable[[str], str]

#: Prefix of a stored hashed input, so a hashed trace is never mistaken for text.
HASH_PREFIX = "hmac-sha256:"

_EMAIL = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")
# A run of 13-19 digits, optionally split by single spaces or hyphens (how cards are written).
_CARD = re.compile(r"(?<![\d])\d(?:[ \-]?\d){12,18}(?![\d])")
# International or national phone numbers: optional +country, 7-15 digits with separators.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?"
                    r"\d{2,4}(?:[\s.\-]?\d{2,4}){2,4}(?![\w])")

_DATE = re.compile(r"\d{4}[\-./]\d{1,2}[\-./]\d{1,2}|\d{1,2}[\-./]\d{1,2}[\-./]\d{4}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "<CARD>" if _luhn(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    if _DATE.fullmatch(match.group()) or not 7 <= len(digits) <= 15:
        return match.group()
    return "<PHONE>"


def redact_pii(text: str) -> str:
    """``text`` with e-mail addresses, card numbers (13-19 digits passing the Luhn check) and
    phone numbers (7-15 digits, optional ``+country``, spaces, dots, hyphens, brackets) replaced by
    ``<EMAIL>``, ``<CARD>`` and ``<PHONE>``.

    Cards are replaced before phones, so a card number that fails the Luhn check may still be
    replaced as a phone number when it is short enough; a false positive only loses some text of
    a stored trace, never a call.
    """
    text = _EMAIL.sub("<EMAIL>", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def hash_key(store: Store, task: str) -> bytes:
    """The key ``store_inputs="hash"`` hashes the inputs of ``task`` with: the UTF-8 bytes of
    ``$TRACER_WRAP_HASH_KEY`` when set, else the task's random 32-byte key in the store, created
    by the first process that asks (an atomic ``setdefault_setting``: every process of the task
    gets the same key). Reads the store: call it off the request path and keep the result.
    Raises StoreError when the store cannot be read or written."""
    configured = os.environ.get(names.ENV_HASH_KEY)
    if configured:
        return configured.encode("utf-8", "surrogatepass")
    stored = store.setdefault_setting(task, names.SETTING_HASH_KEY, secrets.token_hex(32))
    try:
        return bytes.fromhex(str(stored))
    except ValueError:
        raise ConfigError(f"setting {names.SETTING_HASH_KEY!r} of {task!r} is not a hex key"
                          ) from None


def hash_input(text: str, key: bytes) -> str:
    """What ``store_inputs="hash"`` stores for ``text``: ``hmac-sha256:`` and the hex HMAC-SHA256
    of its UTF-8 bytes under ``key`` (lone surrogates are escaped, so any Python string
    hashes)."""
    data = text.encode("utf-8", "surrogatepass")
    return HASH_PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (JSON-like: mappings, lists, scalars) with ``fn`` applied to every string in it
    but mapping keys; a new structure, ``value`` itself is not changed."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {key: map_strings(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(item, fn) for item in value]
    return value


def check_retention(retention: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Validate a ``retention`` option; raise ConfigError naming the bad key or value."""
    if retention is None:
        return None
    if not isinstance(retention, Mapping):
        raise ConfigError(f"retention must be a mapping, got {retention!r}")
    unknown = set(retention) - {"max_traces", "max_age_seconds"}
    if unknown:
        raise ConfigError(f"unknown retention option(s) {sorted(map(str, unknown))};"
                          " use max_traces and max_age_seconds")
    checked: dict[str, Any] = {}
    for name, value in retention.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"retention {name} must be a positive number, got {value!r}")
        if name == "max_traces" and int(value) != value:
            raise ConfigError(f"retention max_traces must be an integer, got {value!r}")
        checked[name] = int(value) if name == "max_traces" else float(value)
    return checked or None
