"""tracer_wrap: answer easy LLM classification calls locally, with a certified agreement rate.

Put :func:`traced_classifier` on a classify function; every LLM answer becomes a trace, a
classical surrogate is fitted on the traces, and the router answers locally only where the
parity gate certifies agreement with the LLM at the target rate.
"""

from typing import TYPE_CHECKING, Any

from .integrations.zero_code import autolog
from .decorator import TracedClassifier, traced_classifier
from .model.embedder import Embedder
from .errors import (
    ConfigError,
    EmbedderError,
    GateRefused,
    MissingExtraError,
    RouterLoadError,
    StoreError,
    TracerWrapError,
)
from .model.fit import fit_router
from .engine import Stats, TracedTask
from .model.gate import Certificate
from .model.router import Decision, Router
from .store import Origin, Trace, TraceStore

if TYPE_CHECKING:
    from .integrations import savings, wrap_anthropic, wrap_openai

__all__ = [
    "Certificate",
    "ConfigError",
    "Decision",
    "Embedder",
    "EmbedderError",
    "GateRefused",
    "MissingExtraError",
    "Origin",
    "Router",
    "RouterLoadError",
    "Stats",
    "StoreError",
    "Trace",
    "TraceStore",
    "TracedClassifier",
    "TracedTask",
    "TracerWrapError",
    "autolog",
    "fit_router",
    "savings",
    "traced_classifier",
    "wrap_anthropic",
    "wrap_openai",
]

__version__ = "0.1.0"

# The SDK integrations import openai (about a second); users of the decorator alone don't pay it.
_LAZY = {"savings": ".integrations", "wrap_anthropic": ".integrations",
         "wrap_openai": ".integrations"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
