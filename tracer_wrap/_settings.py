"""Environment variables tracer_wrap reads, in one place, and the defaults they override."""

from __future__ import annotations

import os
from pathlib import Path

#: Directory of the default trace store.
ENV_STORE = "TRACER_WRAP_STORE"
#: Set to 1/true to turn every tracer_wrap step off: calls go straight to the LLM, nothing is logged.
ENV_DISABLE = "TRACER_WRAP_DISABLE"
#: Path or sentence-transformers model name of the default embedder.
ENV_EMBEDDER = "TRACER_WRAP_EMBEDDER"

DEFAULT_STORE = Path(".tracer_wrap")
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def store_path() -> Path:
    """The default store directory: ``$TRACER_WRAP_STORE`` or ``./.tracer_wrap``."""
    return Path(os.environ.get(ENV_STORE) or DEFAULT_STORE)


def disabled() -> bool:
    """Whether ``$TRACER_WRAP_DISABLE`` turns tracer_wrap off."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def default_embedder() -> str:
    """The default embedding model: ``$TRACER_WRAP_EMBEDDER`` or all-MiniLM-L6-v2."""
    return os.environ.get(ENV_EMBEDDER) or DEFAULT_EMBEDDER
