"""Where traces, counters, settings and router versions live: a directory, or Redis for a fleet.

Everything above the store uses the :class:`Store` protocol only. :func:`open_store` opens the
store a spec names: an open store as is, a ``redis://`` URL (:class:`RedisStore`, extra
``redis``) or a directory (:class:`TraceStore`, diskcache over SQLite).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..options import store_spec
from .base import (
    REDIS_SCHEMES,
    VERSION_ARTIFACTS,
    NewTrace,
    Origin,
    Store,
    Trace,
    decode_vectors,
    encode_vectors,
    read_jsonl,
    task_id,
)
from .disk import TraceStore

if TYPE_CHECKING:
    from .redis_store import RedisStore

__all__ = ["REDIS_SCHEMES", "VERSION_ARTIFACTS", "NewTrace", "Origin", "RedisStore", "Store",
           "Trace", "TraceStore", "decode_vectors", "encode_vectors", "open_store", "read_jsonl",
           "task_id"]


def open_store(spec: Store | str | os.PathLike[str] | None = None, *,
               reads_only: bool = False) -> Store:
    """The store ``spec`` names: an open store as is, a ``redis://`` URL, or a directory.

    ``None`` means the default store (:func:`tracer_wrap.options.store_spec`:
    ``$TRACER_WRAP_STORE``, the ``store`` key of ``tracer_wrap.toml``, else ``./.tracer_wrap``).
    ``reads_only`` says the caller only reads: a directory that cannot be written (a read-only
    mount) is then opened read-only (:class:`TraceStore` ``read_only``).
    Raises StoreError when the store cannot be opened, MissingExtraError when a Redis URL is given
    and redis-py is not installed, ConfigError for a bad configuration file.
    """
    if isinstance(spec, Store):
        return spec
    spec = store_spec(spec)
    if isinstance(spec, Store):
        return spec
    if isinstance(spec, str) and spec.startswith(REDIS_SCHEMES):
        from .redis_store import RedisStore

        return RedisStore(spec)
    try:
        return TraceStore(spec)
    except StoreError as exc:
        if not reads_only:
            raise
        try:
            return TraceStore(spec, read_only=True)
        except StoreError:
            raise exc from None  # not a read-only store: what the read-write open met


def __getattr__(name: str) -> Any:
    # redis-py is an optional extra: import the Redis store only when it is asked for.
    if name == "RedisStore":
        from .redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
