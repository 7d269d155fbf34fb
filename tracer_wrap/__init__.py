"""tracer_wrap: answer easy LLM classification calls locally, with a certified agreement rate.

Put :func:`traced_classifier` on a classify function; every LLM answer becomes a trace, a
classical surrogate is fitted on the traces, and the router answers locally only where the
parity gate certifies agreement with the LLM at the target rate.
"""

from .decorator import TracedClassifier, traced_classifier
from .embedder import Embedder
from .errors import (
    ConfigError,
    EmbedderError,
    GateRefused,
    MissingExtraError,
    RouterLoadError,
    StoreError,
    TracerWrapError,
)
from .fit import fit_router
from .flow import Stats, TracedTask
from .gate import Certificate
from .router import Decision, Router
from .store import Origin, Trace, TraceStore

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
    "fit_router",
    "traced_classifier",
]

__version__ = "0.1.0"
