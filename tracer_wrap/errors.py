"""The error hierarchy: everything tracer_wrap raises derives from :class:`TracerWrapError`.

Inside a user's traced call these errors are caught, logged and the call goes to the LLM (fail
open); they reach the caller only from explicit API use (fitting, loading, configuration).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "EmbedderError",
    "GateRefused",
    "MissingExtraError",
    "RouterLoadError",
    "StoreBusy",
    "StoreError",
    "StoreTampered",
    "TraceRefused",
    "TracerWrapError",
]


class TracerWrapError(Exception):
    """Root of every error tracer_wrap raises."""


class ConfigError(TracerWrapError, ValueError):
    """A setting or argument has a value tracer_wrap cannot use."""


class StoreError(TracerWrapError, OSError):
    """The trace store cannot be opened, read or written."""


class StoreBusy(StoreError):
    """Another process held the disk store's lock longer than one operation waits for it (2 s).
    Transient: the same operation may succeed when retried."""


class StoreTampered(TracerWrapError):
    """A row or file of the store is not what tracer_wrap writes: a row that asks to be
    unpickled or names a file, a record that does not decode, an artifact that is no plain file
    or exceeds its recorded size. Its files were edited or damaged. It is refused, never read or
    followed. Not an OSError on purpose: diskcache takes an OSError while reading for a row
    deleted meanwhile and would quietly skip it."""


class TraceRefused(TracerWrapError):
    """The store refused a trace for good (retrying cannot help); it is set aside.

    ``index`` is the refused row of an ``append_many``; ``written`` the traces of the rows before
    it, which were stored."""

    def __init__(self, message: str, *, index: int = 0,
                 written: Sequence[object] | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.written = list(written or [])


class EmbedderError(TracerWrapError):
    """The embedding model cannot be loaded or failed on an input."""


class RouterLoadError(TracerWrapError):
    """A saved router is missing, corrupted, tampered with or incompatible; it is not loaded."""


class GateRefused(TracerWrapError):
    """The parity gate certified no threshold; ``reasons`` maps each target to why."""

    def __init__(self, message: str, reasons: dict[float, str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or {}


class MissingExtraError(TracerWrapError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install it with: pip install 'tracer-wrap[{extra}]'"
        )
        self.module = module
        self.extra = extra
