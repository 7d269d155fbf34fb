"""tracer_wrap: answer easy LLM classification calls locally, with a certified agreement rate.

Put :func:`traced_classifier` on a classify function, or wrap an OpenAI / Anthropic client with
:func:`wrap_openai` / :func:`wrap_anthropic`, or call :func:`autolog` once: every LLM answer
becomes a trace, a classical surrogate is fitted on the traces, and the router answers locally
only where the Learn-then-Test gate certifies agreement with the LLM at the target rate.

The SDK integrations import on first use, so ``import tracer_wrap`` loads neither the SDKs nor
the command-line tools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .accounting import Price, Usage
from .background import flush
from .decorator import TracedClassifier, traced_classifier
from .engine import Plan, Reply, Stats, TracedTask
from .errors import (
    ConfigError,
    EmbedderError,
    GateRefused,
    MissingExtraError,
    RouterLoadError,
    StoreError,
    TracerWrapError,
)
from .model.embedder import Embedder
from .model.fit import fit_router
from .model.gate import Certificate
from .model.router import Decision, Router
from .options import TaskOptions
from .privacy import redact_pii
from .refit import refit_after_delay, refit_after_traces, refit_never
from .store import Origin, Store, Trace, TraceStore, open_store
from .versions import pin, rollback, unpin

if TYPE_CHECKING:
    from .integrations import wrap_anthropic, wrap_openai
    from .integrations.zero_code import autolog
    from .ops.status import savings

__all__ = [
    "Certificate",
    "ConfigError",
    "Decision",
    "Embedder",
    "EmbedderError",
    "GateRefused",
    "MissingExtraError",
    "Origin",
    "Plan",
    "Price",
    "Reply",
    "Router",
    "RouterLoadError",
    "Stats",
    "Store",
    "StoreError",
    "TaskOptions",
    "Trace",
    "TraceStore",
    "TracedClassifier",
    "TracedTask",
    "TracerWrapError",
    "Usage",
    "autolog",
    "fit_router",
    "flush",
    "open_store",
    "pin",
    "redact_pii",
    "refit_after_delay",
    "refit_after_traces",
    "refit_never",
    "rollback",
    "savings",
    "traced_classifier",
    "unpin",
    "wrap_anthropic",
    "wrap_openai",
]

__version__ = "0.1.0"

# openai takes about a second to import: users of the decorator alone don't pay for it.
_LAZY = {"wrap_anthropic": ".integrations", "wrap_openai": ".integrations",
         "autolog": ".integrations.zero_code", "savings": ".ops.status"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
