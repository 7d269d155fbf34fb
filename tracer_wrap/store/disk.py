"""The embedded store: traces, counters, settings and router versions in one directory.

Layout under the store directory (diskcache over SQLite)::

    traces/   diskcache of trace records, one key per distinct input of a task
    meta/     diskcache of tasks, counters, settings, refit claims and router versions
    routers/  saved routers, ``<task-id>/v<N>.npz`` with ``v<N>.json`` manifests

Every key is a string and every value a string or integer, and a row or file that asks to be
unpickled (diskcache honours a row's storage mode) is refused with StoreError, so reading a store
never runs code, whatever was written into its files. SQLite runs with a rollback journal and no
memory-mapped I/O: a damaged or truncated file then gives read and write errors, never the SIGBUS
that a memory-mapped WAL index gives, which would kill the host process. SQLite transactions make
appends, counters and claims atomic across threads and processes; a store object survives
``fork`` (the child reopens its connections). The directories it creates are readable by their
owner only (mode 0700): they hold prompts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import diskcache

from ..errors import ConfigError, StoreError, TraceRefused
from .base import (
    VERSION_ARTIFACTS,
    NewTrace,
    Origin,
    Trace,
    _check_artifact_name,
    _check_task,
    _digest,
    _prune_victims,
    check_new_traces,
    read_jsonl,
    task_id,
)

__all__ = ["TraceStore"]

_CACHE_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",  # traces are data, never a cache to evict
    "size_limit": 2**62,
    "statistics": 0,
    # No memory-mapped file anywhere: a truncated database or WAL index read through a mapping
    # raises SIGBUS, which no exception handler can catch.
    "sqlite_journal_mode": "truncate",
    "sqlite_mmap_size": 0,
}
#: Owner-only: a store holds the text of every call.
_DIRECTORY_MODE = 0o700


class _PlainDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk that never unpickles: keys and values are text, bytes or numbers."""

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreError("refusing to unpickle a key of the trace store (tampered file?)")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise StoreError("refusing to unpickle a value of the trace store (tampered file?)")
        return super().fetch(mode, filename, value, read)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, (str, bytes, int, float)) and not read:
            raise ConfigError(f"the trace store keeps text and numbers, not {type(value).__name__}")
        return super().store(value, read, key=key)


class TraceStore:
    """Traces, counters and router versions of any number of tasks, in one directory.

    ``path`` defaults to the default store (see :func:`tracer_wrap.store.open_store`); it is
    created if needed.
    Raises :class:`StoreError` when the directory cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            from ..options import store_spec

            path = str(store_spec())
        self.path = Path(path)
        try:
            self.path.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
            for part in ("traces", "meta", "routers"):
                sub = self.path / part
                sub.mkdir(mode=_DIRECTORY_MODE, exist_ok=True)
                if sub.stat().st_uid == os.getuid():
                    sub.chmod(_DIRECTORY_MODE)
            probe = self.path / f".probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"trace store {str(self.path)!r} is not writable: {exc}") from exc
        self._pid = -1
        self._open_lock = threading.Lock()
        self._registered: set[str] = set()  # tasks this object knows are listed in meta
        self._open()

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._traces = diskcache.Cache(str(self.path / "traces"), disk=_PlainDisk,
                                           **_CACHE_SETTINGS)
            self._meta = diskcache.Cache(str(self.path / "meta"), disk=_PlainDisk,
                                         **_CACHE_SETTINGS)
        except Exception as exc:  # sqlite3 errors, permissions, a corrupt database
            raise StoreError(f"cannot open trace store {str(self.path)!r}: {exc}") from exc
        self._pid = os.getpid()

    def _caches(self) -> tuple[diskcache.Cache, diskcache.Cache]:
        # SQLite connections must not cross a fork: a child reopens them on first use.
        if self._pid != os.getpid():
            with self._open_lock:
                if self._pid != os.getpid():
                    self._open()
        return self._traces, self._meta

    def close(self) -> None:
        """Close the connections of this process (they reopen on next use)."""
        for cache in (self._traces, self._meta):
            cache.close()

    # -- traces ------------------------------------------------------------------------------

    def append(self, task: str, text: str, teacher: str, *, valid: bool = True,
               origin: Origin | str = Origin.LLM, exchangeable: bool = True,
               router_label: str | None = None, meta: Mapping[str, Any] | None = None,
               ts: float | None = None) -> Trace:
        """Record that the teacher answered ``teacher`` for ``text``; return the stored trace.

        A repeat of an input already stored increments its ``count`` and label tally instead of
        adding a row. The read-modify-write runs in one SQLite transaction, so concurrent appends
        from threads and processes are never lost. Raises StoreError when the disk refuses,
        ConfigError when the input or label is not text that can be stored.
        """
        if not isinstance(text, str) or not isinstance(teacher, str):
            raise ConfigError("a trace needs a string input and a string teacher label")
        row = NewTrace(text, teacher, valid, Origin(origin).value, exchangeable, router_label,
                       meta, ts)
        try:
            return self.append_many(task, [row])[0]
        except TraceRefused as exc:
            raise ConfigError(str(exc)) from None

    def append_many(self, task: str, rows: Sequence[NewTrace]) -> list[Trace]:
        """Record many answers in one SQLite transaction (all or none); see :meth:`append`.

        Raises StoreError when the disk refuses (nothing is written), TraceRefused (with the
        ``index`` of the row) when a row can never be stored: the rows before it are written.
        """
        _check_task(task)
        refused = check_new_traces(rows)
        if refused is not None:
            if refused:
                written = self.append_many(task, rows[:refused])
            else:
                written = []
            raise TraceRefused(f"row {refused} is not text that can be stored", index=refused,
                               written=written)
        if not rows:
            return []
        traces, meta_cache = self._caches()
        out: list[Trace] = []
        try:
            with traces.transact():
                for row in rows:
                    out.append(self._append_in_transaction(traces, task, row))
            if task not in self._registered:
                meta_cache.add(f"task:{task}", time.time())
                self._registered.add(task)
        except diskcache.Timeout as exc:
            raise StoreError(f"trace store busy: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot write trace store {str(self.path)!r}: {exc}") from exc
        except Exception as exc:  # sqlite3.OperationalError: disk full, read-only database
            if type(exc).__module__ == "sqlite3":
                raise StoreError(f"cannot write trace store {str(self.path)!r}: {exc}") from exc
            raise
        return out

    @staticmethod
    def _append_in_transaction(traces: diskcache.Cache, task: str, row: NewTrace) -> Trace:
        index_key = f"h:{task}:{_digest(row.text)}"
        seq = traces.get(index_key)
        if seq is None:
            seq = traces.incr(f"n:{task}")
            trace = Trace(row.text, row.teacher, row.valid, row.origin,
                          time.time() if row.ts is None else row.ts, 1, row.exchangeable,
                          {row.teacher: 1} if row.valid else {}, row.router_label,
                          dict(row.meta or {}), seq,
                          served_version=row.served_version, audit_p=row.audit_p)
            traces.set(index_key, seq)
        else:
            trace = Trace.from_json(traces[f"t:{task}:{seq}"])
            trace.count += 1
            if row.valid:
                trace.labels[row.teacher] = trace.labels.get(row.teacher, 0) + 1
                trace.teacher = max(trace.labels, key=trace.labels.__getitem__)
                trace.valid = True
        traces.set(f"t:{task}:{seq}", trace.to_json())
        return trace

    def count(self, task: str) -> int:
        """Highest ``seq`` of ``task``: the number of distinct inputs stored, unless pruned."""
        traces, _ = self._caches()
        return int(traces.get(f"n:{task}", 0))

    def iter_traces(self, task: str, *, valid_only: bool = False, start: int = 0
                    ) -> Iterator[Trace]:
        """Traces of ``task`` in the order they were first seen, from sequence number ``start``."""
        traces, _ = self._caches()
        for seq in range(start + 1, self.count(task) + 1):
            raw = traces.get(f"t:{task}:{seq}")
            if raw is None:  # appended concurrently and not committed yet
                continue
            trace = Trace.from_json(raw)
            if trace.valid or not valid_only:
                yield trace

    def traces(self, task: str, *, valid_only: bool = False) -> list[Trace]:
        """All traces of ``task`` as a list; see :meth:`iter_traces`."""
        return list(self.iter_traces(task, valid_only=valid_only))

    def tasks(self) -> list[str]:
        """Names of the tasks that have at least one trace or setting, sorted."""
        _, meta_cache = self._caches()
        return sorted(key[5:] for key in meta_cache.iterkeys() if key.startswith("task:"))

    def prune(self, task: str, *, max_traces: int | None = None,
              max_age_seconds: float | None = None) -> int:
        """Delete the oldest traces of ``task`` beyond ``max_traces`` or older than
        ``max_age_seconds`` (by first-seen ``ts``); return how many were deleted.

        Each deletion removes the trace and its dedup entry in one transaction, so a pruned input
        seen again becomes a new trace with a new ``seq``. ``count`` and ``seq`` never go back.
        """
        victims = _prune_victims(self.iter_traces(task), max_traces, max_age_seconds)
        traces, _ = self._caches()
        for seq, text in victims:
            with traces.transact():
                traces.delete(f"t:{task}:{seq}")
                index_key = f"h:{task}:{_digest(text)}"
                if traces.get(index_key) == seq:
                    traces.delete(index_key)
        return len(victims)

    # -- JSONL, the format tracer-llm reads and writes ----------------------------------------

    def export_jsonl(self, task: str, path: str | os.PathLike[str]) -> int:
        """Write the valid traces of ``task`` as ``{"input": ..., "teacher": ...}`` lines."""
        n = 0
        tmp = Path(f"{path}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as out:
            for trace in self.iter_traces(task, valid_only=True):
                out.write(json.dumps({"input": trace.input, "teacher": trace.teacher},
                                     ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
        return n

    def import_jsonl(self, path: str | os.PathLike[str], task: str) -> int:
        """Append every line of a JSONL trace file to ``task``; return the number of lines.

        The whole file is validated first, so a malformed line (reported with its number) imports
        nothing. Extra fields are ignored.
        """
        rows = list(read_jsonl(path))
        for text, teacher in rows:
            self.append(task, text, teacher, origin=Origin.IMPORT)
        return len(rows)

    # -- counters, settings and claims ---------------------------------------------------------

    def incr(self, task: str, counter: str, delta: int = 1) -> int:
        """Atomically add ``delta`` to a named counter of ``task``; return the new value."""
        _, meta_cache = self._caches()
        return int(meta_cache.incr(f"c:{task}:{counter}", delta))

    def add_counters(self, task: str, deltas: Mapping[str, int]) -> None:
        """Atomically add each delta to its counter of ``task`` (one SQLite transaction)."""
        _, meta_cache = self._caches()
        with meta_cache.transact():
            for name, delta in deltas.items():
                meta_cache.incr(f"c:{task}:{name}", int(delta))

    def counter(self, task: str, counter: str) -> int:
        _, meta_cache = self._caches()
        return int(meta_cache.get(f"c:{task}:{counter}", 0))

    def counters(self, task: str) -> dict[str, int]:
        """Every counter of ``task``."""
        _, meta_cache = self._caches()
        prefix = f"c:{task}:"
        return {k[len(prefix):]: int(meta_cache[k]) for k in meta_cache.iterkeys()
                if k.startswith(prefix) and k in meta_cache}

    def get_setting(self, task: str, name: str, default: Any = None) -> Any:
        """A JSON value stored for ``task`` under ``name`` (``default`` when absent)."""
        _, meta_cache = self._caches()
        raw = meta_cache.get(f"s:{task}:{name}")
        return default if raw is None else json.loads(raw)

    def set_setting(self, task: str, name: str, value: Any) -> None:
        _, meta_cache = self._caches()
        meta_cache.set(f"s:{task}:{name}", json.dumps(value))
        meta_cache.add(f"task:{task}", time.time())

    def setdefault_setting(self, task: str, name: str, value: Any) -> Any:
        """Store ``value`` under ``name`` unless a value is there; return the stored one.
        Atomic across processes (SQLite ``INSERT`` if absent)."""
        _, meta_cache = self._caches()
        meta_cache.add(f"s:{task}:{name}", json.dumps(value))
        meta_cache.add(f"task:{task}", time.time())
        return self.get_setting(task, name)

    def settings(self, task: str) -> dict[str, Any]:
        """Every setting of ``task``."""
        _, meta_cache = self._caches()
        prefix = f"s:{task}:"
        found = {k[len(prefix):]: meta_cache.get(k) for k in meta_cache.iterkeys()
                 if k.startswith(prefix)}
        return {k: json.loads(v) for k, v in found.items() if v is not None}

    def claim(self, task: str, name: str, *, ttl: float) -> bool:
        """Take the named claim of ``task`` if nobody holds it; it expires after ``ttl`` seconds.

        Atomic across threads and processes (SQLite ``INSERT`` if absent); never waits. A holder
        that crashes loses the claim when ``ttl`` runs out.
        """
        _, meta_cache = self._caches()
        return bool(meta_cache.add(f"claim:{task}:{name}", os.getpid(), expire=ttl))

    def release(self, task: str, name: str) -> None:
        _, meta_cache = self._caches()
        meta_cache.delete(f"claim:{task}:{name}")

    # -- router versions -----------------------------------------------------------------------

    def router_dir(self, task: str) -> Path:
        return self.path / "routers" / task_id(task)

    def write_artifact(self, task: str, name: str, data: bytes) -> None:
        """Write ``data`` as file ``name`` under :meth:`router_dir` (temp file + rename: readers
        see the old content or the new, never half). Raises StoreError when the disk refuses."""
        path = self._artifact_path(task, name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write artifact {str(path)!r}: {exc}") from exc

    def read_artifact(self, task: str, name: str) -> bytes:
        """The bytes of artifact ``name``; FileNotFoundError when there is none."""
        return self._artifact_path(task, name).read_bytes()

    def delete_artifact(self, task: str, name: str) -> None:
        self._artifact_path(task, name).unlink(missing_ok=True)

    def _artifact_path(self, task: str, name: str) -> Path:
        _check_artifact_name(name)
        return self.router_dir(task) / name

    def reserve_version(self, task: str) -> int:
        """The next version number of ``task``, unique across processes."""
        _, meta_cache = self._caches()
        return int(meta_cache.incr(f"vseq:{task}"))

    def put_manifest(self, task: str, version: int, manifest: Mapping[str, Any]) -> None:
        """Record the manifest of a saved version (it is not served until :meth:`set_current`)."""
        _, meta_cache = self._caches()
        meta_cache.set(f"v:{task}:{version}", json.dumps(dict(manifest, version=version)))

    def manifest(self, task: str, version: int) -> dict[str, Any] | None:
        _, meta_cache = self._caches()
        raw = meta_cache.get(f"v:{task}:{version}")
        return None if raw is None else json.loads(raw)

    def versions(self, task: str) -> list[dict[str, Any]]:
        """Manifests of every kept version of ``task``, oldest first."""
        _, meta_cache = self._caches()
        last = int(meta_cache.get(f"vseq:{task}", 0))
        found = (self.manifest(task, v) for v in range(1, last + 1))
        return [m for m in found if m is not None]

    def set_current(self, task: str, version: int | None) -> None:
        """Make ``version`` the one every process serves from its next call (None: no router)."""
        _, meta_cache = self._caches()
        if version is None:
            meta_cache.delete(f"cur:{task}")
        else:
            meta_cache.set(f"cur:{task}", int(version))

    def current_version(self, task: str) -> int | None:
        """The version to serve; one indexed SQLite read, cheap enough for every call."""
        _, meta_cache = self._caches()
        value = meta_cache.get(f"cur:{task}")
        return None if value is None else int(value)

    def forget_version(self, task: str, version: int) -> None:
        """Drop a version's manifest and files (never the current one)."""
        if self.current_version(task) == version:
            raise ConfigError(f"version {version} of {task!r} is being served; roll back first")
        _, meta_cache = self._caches()
        meta_cache.delete(f"v:{task}:{version}")
        for suffix in VERSION_ARTIFACTS:
            self.delete_artifact(task, f"v{version}{suffix}")


