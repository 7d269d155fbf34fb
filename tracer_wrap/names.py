"""Every name tracer_wrap reads from the environment or writes into a store, in one place.

Environment variables of task options are ``TRACER_WRAP_`` and the option's name in capitals
(``target`` -> ``TRACER_WRAP_TARGET``): :func:`option_env_var`. The others are listed here.
Store keys are per task: *settings* (JSON values, the last write wins), *counters* (atomic
integer sums across every process) and *claims* (held by one process at a time).
"""

from __future__ import annotations

import os

__all__ = [
    "CLAIM_REFIT",
    "CONFIG_FILE",
    "COUNTER_AUDITS",
    "COUNTER_BREAKER_EPOCH",
    "COUNTER_BREAKER_TRIPS",
    "COUNTER_CALLS",
    "COUNTER_DROPPED",
    "COUNTER_INPUT_TOKENS",
    "COUNTER_INVALID",
    "COUNTER_LLM",
    "COUNTER_LOCAL",
    "COUNTER_NEW_TRACES",
    "COUNTER_OUTPUT_TOKENS",
    "COUNTER_POISONED",
    "COUNTER_REFITS",
    "COUNTER_UNSEEN_LABELS",
    "COUNTER_USAGE_CALLS",
    "DEFAULT_EMBEDDER",
    "DEFAULT_STORE",
    "ENV_ARTIFACTS",
    "ENV_AUTOLOG",
    "ENV_AUTOLOG_ROUTING",
    "ENV_DISABLE",
    "ENV_EMBEDDER",
    "ENV_GATEWAY_CONFIG",
    "ENV_HASH_KEY",
    "ENV_PREFIX",
    "ENV_REFERENCE_VENVS",
    "ENV_STORE",
    "ENV_TOKEN",
    "FALSE_WORDS",
    "HASHING_EMBEDDER",
    "SETTING_BREAKER",
    "SETTING_BREAKER_LAST_TRIP",
    "SETTING_CALIBRATE_AFTER",
    "SETTING_HASH_KEY",
    "SETTING_LAST_REFIT",
    "SETTING_PINNED",
    "SETTING_PRICE",
    "SETTING_ROUTING",
    "TRUE_WORDS",
    "USAGE_COUNTERS",
    "claim_breaker_trip",
    "counter_breaker",
    "counter_shadow",
    "disabled",
    "option_env_var",
    "setting_breaker_base",
    "setting_spelling",
]

# -- environment --------------------------------------------------------------------------------

ENV_PREFIX = "TRACER_WRAP_"
#: The store (a directory or a ``redis://`` URL) of every task and command that names none.
ENV_STORE = "TRACER_WRAP_STORE"
#: Set to 1/true to turn tracer_wrap off: calls go straight to the LLM, nothing is logged.
ENV_DISABLE = "TRACER_WRAP_DISABLE"
#: A directory shared by every host where a Redis store keeps router files instead of in Redis.
ENV_ARTIFACTS = "TRACER_WRAP_ARTIFACTS"
#: Path or sentence-transformers model name of the default embedder (``hashing``: the tiny
#: deterministic one).
ENV_EMBEDDER = "TRACER_WRAP_EMBEDDER"
#: The sidecar's bearer token and the gateway's ``X-Tracer-Wrap-Token``.
ENV_TOKEN = "TRACER_WRAP_TOKEN"
#: Key of the HMAC-SHA256 hashes ``store_inputs="hash"`` stores (any text), instead of the random
#: per-task key kept in the store: set it to keep the key out of the store, or to make the hashes
#: of two stores comparable.
ENV_HASH_KEY = "TRACER_WRAP_HASH_KEY"
#: The gateway's settings as JSON, handed by ``tracer-wrap gateway`` to its worker processes.
ENV_GATEWAY_CONFIG = "TRACER_WRAP_GATEWAY_CONFIG"
#: Set to 1 by ``tracer-wrap run``: the launcher's ``sitecustomize`` then starts autolog.
ENV_AUTOLOG = "TRACER_WRAP_AUTOLOG"
#: Default routing switch of autolog's tasks in a launched program (1/true: route every task whose
#: store switch is not off). Unset: route nothing until a task's switch is on.
ENV_AUTOLOG_ROUTING = "TRACER_WRAP_AUTOLOG_ROUTING"

#: Where the lab keeps the virtual environments of reference libraries (tracer-llm) it runs.
ENV_REFERENCE_VENVS = "TRACER_WRAP_REFERENCE_VENVS"

#: The configuration file looked up in the working directory (else ``[tool.tracer_wrap]`` of
#: ``pyproject.toml``).
CONFIG_FILE = "tracer_wrap.toml"
DEFAULT_STORE = ".tracer_wrap"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
#: The embedder name that selects the tiny deterministic hashing embedder (tests, quick trials).
HASHING_EMBEDDER = "hashing"

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def disabled() -> bool:
    """Whether ``$TRACER_WRAP_DISABLE`` turns tracer_wrap off."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in TRUE_WORDS


def option_env_var(option: str) -> str:
    """The environment variable of a task option: ``target`` -> ``TRACER_WRAP_TARGET``."""
    return ENV_PREFIX + option.upper()


# -- store settings (JSON values per task) ------------------------------------------------------

#: Routing switch of every process: True answers locally, False is shadow mode; absent: each
#: process's own ``routing`` option.
SETTING_ROUTING = "routing"
#: The task's price, ``{"per_call", "input_per_mtok", "output_per_mtok"}`` (currency units).
SETTING_PRICE = "price"
#: A version served whatever is published, until unpinned.
SETTING_PINNED = "pinned_version"
#: The drift breaker's trip in force (``{"version", "reason", "at", "seq", ...}``), or None.
SETTING_BREAKER = "breaker"
#: The last trip, kept for the record after a reset.
SETTING_BREAKER_LAST_TRIP = "breaker_last_trip"
#: Traces with a sequence number at or below it predate the last trip and never calibrate.
SETTING_CALIBRATE_AFTER = "calibrate_after_seq"
#: Wall-clock time the last refit started.
SETTING_LAST_REFIT = "last_refit_at"
#: A task's random key (64 hex digits) for hashing inputs with ``store_inputs="hash"``, created
#: once by whichever process first needs it.
SETTING_HASH_KEY = "input_hash_key"


def setting_breaker_base(epoch: int) -> str:
    """Audits and disagreements at the last restart of the breaker's test in ``epoch``."""
    return f"breaker:e{epoch}:base"


def setting_spelling(key: str) -> str:
    """The LLM's first spelling of the label whose comparison key is ``key``
    (:func:`tracer_wrap.labels.label_key`), claimed once for every process."""
    return f"spelling:{key}"


# -- store counters (atomic integer sums per task) ----------------------------------------------

#: Calls that reached tracer_wrap (every path).
COUNTER_CALLS = "calls"
#: Calls answered locally: the LLM was not called.
COUNTER_LOCAL = "local"
#: Calls that went to the LLM (audit samples included).
COUNTER_LLM = "llm"
#: LLM calls that were random audit samples of calls the router would have answered.
COUNTER_AUDITS = "audits"
#: LLM answers that matched no label.
COUNTER_INVALID = "invalid"
#: Input and output tokens the provider reported on LLM calls, and how many calls reported them.
COUNTER_INPUT_TOKENS = "input_tokens"
COUNTER_OUTPUT_TOKENS = "output_tokens"
COUNTER_USAGE_CALLS = "usage_calls"
#: LLM answers whose trace was lost: the buffer was full (the store was unreachable too long).
COUNTER_DROPPED = "dropped"
#: LLM answers whose trace the store refused for good (set aside and logged, not retried).
COUNTER_POISONED = "poisoned"
#: Valid traces logged since the last refit started (the refit policy reads it).
COUNTER_NEW_TRACES = "new_valid_traces"
#: LLM answers naming a label the version serving them was not trained on (a drift signal).
COUNTER_UNSEEN_LABELS = "unseen_labels"
COUNTER_REFITS = "refits"
COUNTER_BREAKER_EPOCH = "breaker_epoch"
COUNTER_BREAKER_TRIPS = "breaker_trips"

#: The counters of one call's outcome, summed over every process: what ``status``, the report,
#: ``savings()`` and the sidecar show.
USAGE_COUNTERS = (COUNTER_CALLS, COUNTER_LOCAL, COUNTER_LLM, COUNTER_AUDITS, COUNTER_INVALID,
                  COUNTER_INPUT_TOKENS, COUNTER_OUTPUT_TOKENS, COUNTER_USAGE_CALLS,
                  COUNTER_DROPPED, COUNTER_POISONED)


def counter_breaker(epoch: int, name: str) -> str:
    """Counter ``name`` (``n``: audits, ``bad``: disagreements) of the breaker's ``epoch``."""
    return f"breaker:e{epoch}:{name}"


def counter_shadow(version: int, name: str) -> str:
    """Counter ``name`` (``calls``, ``local``, ``agree``) of ``version`` in shadow mode."""
    return f"shadow:{version}:{name}"


# -- store claims -------------------------------------------------------------------------------

#: Held while a refit of the task runs, by one process of the fleet.
CLAIM_REFIT = "refit"


def claim_breaker_trip(epoch: int) -> str:
    """Taken by the one process that records the trip of ``epoch``."""
    return f"breaker:e{epoch}:trip"
