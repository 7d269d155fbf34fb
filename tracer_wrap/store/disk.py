"""The embedded store: traces, counters, settings and router versions in one directory.

Layout under the store directory (diskcache over SQLite)::

    traces/   diskcache of trace records, one key per distinct input of a task, and the stored
              vector of each trace (``v:<task>:<seq>``, bytes of :func:`encode_vectors`)
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
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import diskcache
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from .. import background
from ..errors import ConfigError, StoreBusy, StoreError, StoreTampered, TraceRefused
from .base import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    VERSION_ARTIFACTS,
    NewTrace,
    Origin,
    Trace,
    _check_artifact_name,
    _check_task,
    _digest,
    _prune_victims,
    append_one,
    check_new_traces,
    decode_json,
    decode_manifest,
    decode_version,
    read_artifact_file,
    skip_unreadable,
    task_id,
    write_private,
    write_private_text,
)

__all__ = ["TraceStore"]

_CACHE_SETTINGS: dict[str, Any] = {
    # Longest one operation waits for another process's lock before raising StoreError
    # (diskcache's default is 60 s). Nothing on the request path touches the store; the
    # background writer keeps its traces buffered and retries, and flush(timeout) and the exit's
    # last drain are then late by at most this much.
    "timeout": 2.0,
    "eviction_policy": "none",  # traces are data, never a cache to evict
    "size_limit": 2**62,
    "statistics": 0,
    # No memory-mapped file anywhere: a truncated database or WAL index read through a mapping
    # raises SIGBUS, which no exception handler can catch.
    "sqlite_journal_mode": "truncate",
    "sqlite_mmap_size": 0,
    # Every value inside SQLite, none in a file of its own: the database file is created
    # owner-only (below) and SQLite gives its journal the database file's mode.
    "disk_min_file_size": 2**40,
}
_DIRECTORY_MODE = PRIVATE_DIR_MODE


def _private_file(path: Path) -> None:
    """Create ``path`` empty and owner-only unless it exists (SQLite takes an empty file for a
    new database); tighten one of its owner's that is not owner-only (older stores)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(PRIVATE_FILE_MODE)


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: claims then rely on the monotonic clock alone
        return ""


#: This boot of the machine: a claim written under another boot id is dead.
_BOOT_ID = _read_boot_id()


def _monotonic() -> float:
    """Seconds on CLOCK_MONOTONIC: shared by the processes of one boot, immune to clock jumps."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _claim_of(raw: Any) -> dict[str, Any] | None:
    try:
        holder = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _claim_held(raw: Any, now: float) -> bool:
    """Whether the stored claim ``raw`` is alive at monotonic time ``now`` on this boot."""
    holder = _claim_of(raw)
    if holder is None or holder.get("boot_id") != _BOOT_ID:
        return False
    deadline = holder.get("deadline")
    return isinstance(deadline, (int, float)) and now < deadline




#: Longest opening a store retries while other processes' writes keep its database locked.
OPEN_WAIT_SECONDS = 30.0

#: Held by every SQLite operation of this process, and taken before a fork (see _Guarded).
_FORK_GUARD = threading.RLock()
#: Keys read by one SELECT of :meth:`_Guarded.get_many` (SQLite allows 32,766 parameters).
READ_PAGE = 500
#: Longest a fork waits for a running SQLite operation of this process to end.
FORK_WAIT_SECONDS = 1.0


@contextmanager
def _guarded(path: str) -> Iterator[None]:
    """Hold :data:`_FORK_GUARD`; raise the faults of SQLite as StoreError."""
    try:
        with _FORK_GUARD:
            yield
    except diskcache.Timeout as exc:
        raise StoreBusy(f"trace store {path!r} busy: {exc}") from exc
    except sqlite3.Error as exc:  # locked, disk full, read-only, a corrupt database
        # SQLite's own busy wait ran out ("database is locked"): contention, not damage.
        busy = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
        raise (StoreBusy if busy else StoreError)(
            f"trace store {path!r} failed: {type(exc).__name__}: {exc}") from exc


class _Guarded:
    """A diskcache.Cache whose every operation holds :data:`_FORK_GUARD`, so none is running
    while the process forks, and raises StoreError for any fault of SQLite. SQLite keeps the locks
    of every connection of a process in one table of that process: a fork while one thread held a
    lock (a write, a read in progress) leaves the child a table saying the file is locked by a
    connection it does not have, and every connection the child opens then finds the database
    locked forever."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._cache, name)
        if not callable(attr):
            return attr

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with _guarded(self._cache.directory):
                return attr(*args, **kwargs)

        return guarded

    def __getitem__(self, key: str) -> Any:
        with _guarded(self._cache.directory):
            return self._cache[key]

    def __contains__(self, key: str) -> bool:
        with _guarded(self._cache.directory):
            return key in self._cache

    @contextmanager
    def transact(self) -> Iterator[None]:
        with _guarded(self._cache.directory), self._cache.transact():
            yield

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        """The value of each text key (None where there is none), one SELECT per
        :data:`READ_PAGE` keys.

        A refit reads tens of thousands of rows: one ``get`` each released and took back the GIL
        several times per row, which beside busy threads (calls, the embedding worker) cost
        milliseconds a row. Values go through the same :class:`_PlainDisk` as ``get``: a row it
        refuses (pickled, or kept in a file) comes back as a :class:`_Refused` holding the
        StoreTampered, so one damaged row does not hide the others. No expiry is ever set on
        these rows, so none is checked. Each page is its own read; rows written meanwhile may or
        may not be seen.
        """
        cache = self._cache
        found: dict[str, Any] = {}
        for i in range(0, len(keys), READ_PAGE):
            page = list(keys[i:i + READ_PAGE])
            # diskcache's private SQL helper and Disk: its public API reads one key at a time.
            select = ("SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN"
                      f" ({','.join('?' * len(page))})")
            with _guarded(cache.directory):
                rows = cache._sql(select, page).fetchall()
                for key, mode, filename, value in rows:
                    try:
                        found[key] = cache._disk.fetch(mode, filename, value, False)
                    except StoreTampered as exc:
                        found[key] = _Refused(exc)
        return [found.get(key) for key in keys]


class _Refused:
    """A row :meth:`_Guarded.get_many` read but :class:`_PlainDisk` refused."""

    def __init__(self, error: StoreTampered) -> None:
        self.error = error


def _before_fork() -> None:
    global _fork_guarded
    _fork_guarded = _FORK_GUARD.acquire(timeout=FORK_WAIT_SECONDS)


def _after_fork_in_parent() -> None:
    if _fork_guarded:
        _FORK_GUARD.release()


def _after_fork_in_child() -> None:
    global _FORK_GUARD
    _FORK_GUARD = threading.RLock()


_fork_guarded = False
# After the drain before a fork, which writes through this guard (see background.at_fork).
background.at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                   after_in_child=_after_fork_in_child)


class _PlainDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk that never unpickles: keys and values are text, bytes or numbers."""

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreTampered("refusing to unpickle a key of the trace store (tampered file?)")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        # Only raw values held inside SQLite: tracer_wrap never writes a row kept in a file of
        # its own (disk_min_file_size), and a row naming a file would read any path it names.
        if mode == diskcache.core.MODE_PICKLE:
            raise StoreTampered("refusing to unpickle a value of the trace store"
                                " (tampered file?)")
        if mode != diskcache.core.MODE_RAW or filename is not None:
            raise StoreTampered("refusing a value of the trace store kept outside its database"
                                " (tampered file?)")
        return super().fetch(mode, filename, value, read)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, (str, bytes, int, float)) and not read:
            raise ConfigError(f"the trace store keeps text and numbers, not {type(value).__name__}")
        return super().store(value, read, key=key)


class _ReadOnlyCache:
    """The reads :class:`TraceStore` makes of a diskcache.Cache, over read-only SQLite
    connections to the same database (one per thread, as diskcache's), for a store that cannot be
    written (a read-only mount, a snapshot): diskcache's own set-up writes its schema, pragmas and
    settings whenever it opens a cache. Rows are decoded by :class:`_PlainDisk` (a pickled row
    raises StoreTampered) and expired ones skipped, as diskcache does; every write raises
    StoreError."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._uri = f"{(Path(directory) / 'cache.db').as_uri()}?mode=ro"
        self._local = threading.local()
        self._disk = _PlainDisk(directory)
        self._sql("SELECT 1 FROM Cache LIMIT 1")  # no database, or not diskcache's: fail now

    def _sql(self, statement: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = sqlite3.connect(
                self._uri, uri=True, timeout=_CACHE_SETTINGS["timeout"], isolation_level=None)
        return con.execute(statement, params)

    def get(self, key: str, default: Any = None) -> Any:
        rows = self._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
                         " AND (expire_time IS NULL OR expire_time > ?)",
                         (key, time.time())).fetchall()
        if not rows:
            return default
        (mode, filename, value), = rows
        return self._disk.fetch(mode, filename, value, False)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def iterkeys(self) -> Iterator[Any]:
        """Every key, in diskcache's order (read at once: what is iterated is the meta keys)."""
        rows = self._sql("SELECT key, raw FROM Cache ORDER BY key ASC, raw ASC").fetchall()
        return (self._disk.get(key, raw) for key, raw in rows)

    @contextmanager
    def transact(self) -> Iterator[None]:
        yield  # the writes inside raise

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreError(f"trace store {str(Path(self.directory).parent)!r} is opened read-only")

    add = set = delete = incr = _refuse


_MISSING = object()


class _RowTampered(Exception):
    """Row ``index`` of an append met a tampered stored row (:class:`StoreTampered`)."""

    def __init__(self, index: int, error: StoreTampered) -> None:
        super().__init__(str(error))
        self.index, self.error = index, error


class TraceStore:
    """Traces, counters and router versions of any number of tasks, in one directory.

    ``path`` defaults to the default store (see :func:`tracer_wrap.store.open_store`); it is
    created if needed.
    Raises :class:`StoreError` when the directory cannot be created or written.

    ``read_only=True`` opens an existing store without writing to it, for one that cannot be
    written (a read-only mount, a snapshot): nothing is created, every write raises StoreError,
    except :meth:`put_vectors`, which keeps nothing (stored vectors only spare embedding again,
    and a read such as a report may compute some). Raises StoreError when there is no store at
    ``path``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 read_only: bool = False) -> None:
        if path is None:
            from ..options import store_spec

            path = str(store_spec())
        self.path = Path(path)
        self.read_only = read_only
        self._pid = -1
        self._open_lock = threading.Lock()
        self._registered: set[str] = set()  # tasks this object knows are listed in meta
        #: Stored rows of each task this object's reads skipped because they cannot be read.
        self.unreadable: Counter[str] = Counter()
        if read_only:
            self._open()
            return
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
        self._open()

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> None:
        """Open this process's connections. Setting up a database writes to it (diskcache's
        schema and pragmas), so while other processes write it may find the database locked:
        it retries for up to :data:`OPEN_WAIT_SECONDS`, then raises StoreBusy. Raises StoreError
        for any other fault (permissions, a corrupt database). Never on the request path: the
        engine opens its store in the background."""
        for attempt in Retrying(retry=retry_if_exception_type(StoreBusy),
                                stop=stop_after_delay(OPEN_WAIT_SECONDS),
                                wait=wait_random_exponential(multiplier=0.01, max=0.5),
                                reraise=True):
            with attempt:
                self._open_once()
        self._pid = os.getpid()

    def _open_once(self) -> None:
        opened: list[diskcache.Cache | _ReadOnlyCache] = []
        try:
            with _guarded(str(self.path)):
                for part in ("traces", "meta"):
                    if self.read_only:
                        opened.append(_ReadOnlyCache(str(self.path / part)))
                        continue
                    _private_file(self.path / part / "cache.db")
                    opened.append(diskcache.Cache(str(self.path / part), disk=_PlainDisk,
                                                  **_CACHE_SETTINGS))
        except Exception as exc:  # sqlite3 errors, permissions, a corrupt database
            for cache in opened:
                cache.close()
            kind = StoreBusy if isinstance(exc, StoreBusy) else StoreError
            raise kind(f"cannot open trace store {str(self.path)!r}: {exc}") from exc
        self._traces, self._meta = (cast(diskcache.Cache, _Guarded(cache)) for cache in opened)

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
        return append_one(self, task, text, teacher, valid=valid, origin=origin,
                          exchangeable=exchangeable, router_label=router_label, meta=meta, ts=ts)

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
                for i, row in enumerate(rows):
                    try:
                        out.append(self._append_in_transaction(traces, task, row))
                    except StoreTampered as exc:
                        raise _RowTampered(i, exc) from None
            self._register(meta_cache, task)
            self._registered.add(task)
        except _RowTampered as bad:  # its stored row was edited: that row never goes in
            written = self.append_many(task, rows[:bad.index]) if bad.index else []
            raise TraceRefused(f"row {bad.index}: {bad.error}", index=bad.index,
                               written=written) from None
        except diskcache.Timeout as exc:
            raise StoreBusy(f"trace store busy: {exc}") from exc
        except StoreError:
            raise  # raised by an operation of _Guarded: already what it should be
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
            trace = row.first_seen(seq)
            traces.set(index_key, seq)
        else:
            key = f"t:{task}:{seq}"
            trace = Trace.from_json(traces[key], key)
            trace.count += 1
            if row.valid:
                trace.labels[row.teacher] = trace.labels.get(row.teacher, 0) + 1
                trace.teacher = max(trace.labels, key=trace.labels.__getitem__)
                trace.valid = True
        traces.set(f"t:{task}:{seq}", trace.to_json())
        if row.vector is not None:
            traces.set(f"v:{task}:{seq}", row.vector)
        return trace

    def count(self, task: str) -> int:
        """Highest ``seq`` of ``task``: the number of distinct inputs stored, unless pruned."""
        traces, _ = self._caches()
        return int(traces.get(f"n:{task}", 0))

    def iter_traces(self, task: str, *, valid_only: bool = False, start: int = 0
                    ) -> Iterator[Trace]:
        """Traces of ``task`` in the order they were first seen, from sequence number ``start``;
        read in pages of :data:`READ_PAGE`. A row that cannot be read (damaged, edited) is
        skipped, counted in :attr:`unreadable` and logged with its key (rate-limited)."""
        traces, _ = self._caches()
        last = self.count(task)
        for low in range(start + 1, last + 1, READ_PAGE):
            seqs = range(low, min(last, low + READ_PAGE - 1) + 1)
            keys = [f"t:{task}:{seq}" for seq in seqs]
            for key, raw in zip(keys, traces.get_many(keys)):
                if raw is None:  # pruned, or appended concurrently and not committed yet
                    continue
                if isinstance(raw, _Refused):
                    skip_unreadable(self.unreadable, task,
                                    StoreTampered(f"stored trace {key!r}: {raw.error}"))
                    continue
                try:
                    trace = Trace.from_json(raw, key)
                except StoreTampered as exc:
                    skip_unreadable(self.unreadable, task, exc)
                    continue
                if trace.valid or not valid_only:
                    yield trace

    def traces(self, task: str, *, valid_only: bool = False) -> list[Trace]:
        """All traces of ``task`` as a list; see :meth:`iter_traces`."""
        return list(self.iter_traces(task, valid_only=valid_only))

    def _register(self, meta_cache: diskcache.Cache, task: str) -> None:
        """List ``task`` in :meth:`tasks`. Runs inside the caller's transaction: the caller adds
        ``task`` to ``_registered`` once that transaction committed."""
        if task not in self._registered:
            meta_cache.add(f"task:{task}", time.time())

    def tasks(self) -> list[str]:
        """Names of the tasks that have at least one trace, setting or counter, sorted."""
        _, meta_cache = self._caches()
        return sorted(key[5:] for key in meta_cache.iterkeys() if key.startswith("task:"))

    def prune(self, task: str, *, max_traces: int | None = None,
              max_age_seconds: float | None = None, keep_after_seq: int | None = None) -> int:
        """Delete the oldest traces of ``task`` beyond ``max_traces`` or older than
        ``max_age_seconds`` (by first-seen ``ts``), never one whose ``seq`` is above
        ``keep_after_seq``; return how many were deleted.

        Each deletion removes the trace and its dedup entry in one transaction, so a pruned input
        seen again becomes a new trace with a new ``seq``. ``count`` and ``seq`` never go back.
        """
        victims = _prune_victims(self.iter_traces(task), max_traces, max_age_seconds,
                                 keep_after_seq)
        traces, _ = self._caches()
        for seq, text in victims:
            with traces.transact():
                traces.delete(f"t:{task}:{seq}")
                traces.delete(f"v:{task}:{seq}")
                index_key = f"h:{task}:{_digest(text)}"
                if traces.get(index_key) == seq:
                    traces.delete(index_key)
        return len(victims)

    # -- vectors -------------------------------------------------------------------------------

    def put_vectors(self, task: str, vectors: Mapping[int, bytes]) -> None:
        """Store the vector of each trace ``seq`` (bytes of :func:`encode_vectors`), replacing
        any earlier one, in one SQLite transaction. Raises StoreError when the disk refuses."""
        _check_task(task)
        if self.read_only:
            return
        traces, _ = self._caches()
        try:
            with traces.transact():
                for seq, raw in vectors.items():
                    traces.set(f"v:{task}:{int(seq)}", bytes(raw))
        except diskcache.Timeout as exc:
            raise StoreBusy(f"trace store busy: {exc}") from exc
        except StoreError:
            raise  # raised by an operation of _Guarded: already what it should be
        except OSError as exc:
            raise StoreError(f"cannot write trace store {str(self.path)!r}: {exc}") from exc

    def get_vectors(self, task: str, seqs: Sequence[int]) -> list[bytes | None]:
        """The stored vector bytes of each trace ``seq`` (None where there is none); to be read
        with :func:`decode_vectors`, which checks each one's length and embedder."""
        traces, _ = self._caches()
        keys = [f"v:{task}:{int(seq)}" for seq in seqs]
        raws = traces.get_many(keys)
        for key, raw in zip(keys, raws):
            if isinstance(raw, _Refused):
                skip_unreadable(self.unreadable, task,
                                StoreTampered(f"stored vector {key!r}: {raw.error}"))
        return [raw if isinstance(raw, bytes) else None for raw in raws]

    # -- JSONL, the format tracer-llm reads and writes ----------------------------------------

    def export_jsonl(self, task: str, path: str | os.PathLike[str]) -> int:
        """Write the valid traces of ``task`` as ``{"input": ..., "teacher": ...}`` lines to
        ``path``, owner-only (mode 0600, as the store: it holds prompts), atomically; return how
        many. A trace row that cannot be read is skipped (see :meth:`iter_traces`)."""
        n = 0

        def lines() -> Iterator[str]:
            nonlocal n
            for trace in self.iter_traces(task, valid_only=True):
                yield json.dumps({"input": trace.input, "teacher": trace.teacher},
                                 ensure_ascii=False) + "\n"
                n += 1

        write_private_text(path, lines())
        return n

    # -- counters, settings and claims ---------------------------------------------------------

    def incr(self, task: str, counter: str, delta: int = 1) -> int:
        """Atomically add ``delta`` to a named counter of ``task``; return the new value."""
        _, meta_cache = self._caches()
        with meta_cache.transact():
            self._register(meta_cache, task)
            value = int(meta_cache.incr(f"c:{task}:{counter}", delta))
        self._registered.add(task)
        return value

    def add_counters(self, task: str, deltas: Mapping[str, int], *,
                     batch: str | None = None) -> None:
        """Atomically add each delta to its counter of ``task`` (one SQLite transaction). With a
        ``batch`` id, a batch already added (within a day) is not added again, as in every
        store, so a caller that cannot tell whether a failed call was applied resends it."""
        _, meta_cache = self._caches()
        with meta_cache.transact():
            if batch is not None and not meta_cache.add(f"batch:{task}:{batch}", 1,
                                                        expire=86400):
                return
            self._register(meta_cache, task)
            for name, delta in deltas.items():
                meta_cache.incr(f"c:{task}:{name}", int(delta))
        self._registered.add(task)

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
        """A JSON value stored for ``task`` under ``name`` (``default`` when absent). Raises
        StoreTampered naming the row when it is not JSON."""
        _, meta_cache = self._caches()
        key = f"s:{task}:{name}"
        raw = meta_cache.get(key)
        return default if raw is None else decode_json(raw, key)

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
        """Every setting of ``task`` that can be read; one that is not JSON is skipped, counted
        in :attr:`unreadable` and logged with its key."""
        _, meta_cache = self._caches()
        prefix = f"s:{task}:"
        out: dict[str, Any] = {}
        for key in [k for k in meta_cache.iterkeys() if k.startswith(prefix)]:
            try:
                raw = meta_cache.get(key)
                if raw is not None:
                    out[key[len(prefix):]] = decode_json(raw, key)
            except StoreTampered as exc:
                skip_unreadable(self.unreadable, task, exc)
        return out

    def claim(self, task: str, name: str, *, ttl: float) -> bool:
        """Take the named claim of ``task`` if nobody holds it; it expires after ``ttl`` seconds.

        The claim is ``{"pid", "boot_id", "deadline"}`` with the deadline on CLOCK_MONOTONIC,
        which every process of one boot shares and no wall-clock jump moves (diskcache's own
        ``expire`` reads ``time.time()``: a +16 min jump would end a live claim, a -1 day jump
        keep a dead one a day). It is held while the boot id (``/proc/sys/kernel/random/
        boot_id``) is this machine's and the monotonic clock is before the deadline; a claim
        of an earlier boot is dead. Read and write happen in one SQLite transaction, so two
        processes never both take it. A holder that crashes loses the claim when ``ttl`` runs
        out.
        """
        _, meta_cache = self._caches()
        key = f"claim:{task}:{name}"
        now = _monotonic()
        with meta_cache.transact():
            if _claim_held(meta_cache.get(key), now):
                return False
            meta_cache.set(key, json.dumps({"pid": os.getpid(), "boot_id": _BOOT_ID,
                                            "deadline": now + ttl}))
        return True

    def release(self, task: str, name: str) -> None:
        """Give the claim back if this process holds it (one that lapsed and was taken by
        another process stays theirs)."""
        _, meta_cache = self._caches()
        key = f"claim:{task}:{name}"
        with meta_cache.transact():
            holder = _claim_of(meta_cache.get(key))
            if holder is None or (holder.get("pid") == os.getpid()
                                  and holder.get("boot_id") == _BOOT_ID):
                meta_cache.delete(key)

    # -- router versions -----------------------------------------------------------------------

    def router_dir(self, task: str) -> Path:
        return self.path / "routers" / task_id(task)

    def write_artifact(self, task: str, name: str, data: bytes) -> None:
        """Write ``data`` as file ``name`` under :meth:`router_dir`, owner-only (temp file +
        rename: readers see the old content or the new, never half). Raises StoreError when the
        disk refuses."""
        path = self._artifact_path(task, name)
        self._refuse_if_read_only()
        try:
            write_private(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write artifact {str(path)!r}: {exc}") from exc

    def read_artifact(self, task: str, name: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes of artifact ``name``, at most ``max_bytes`` (its recorded size; None:
        :data:`~tracer_wrap.store.base.MAX_ARTIFACT_BYTES`); FileNotFoundError when there is
        none, StoreTampered when it is not a regular file or is larger
        (:func:`~tracer_wrap.store.base.read_artifact_file`: never blocks on a FIFO)."""
        return read_artifact_file(self._artifact_path(task, name), max_bytes)

    def delete_artifact(self, task: str, name: str) -> None:
        self._refuse_if_read_only()
        self._artifact_path(task, name).unlink(missing_ok=True)

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise StoreError(f"trace store {str(self.path)!r} is opened read-only")

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
        """The manifest recorded for ``version`` (None when there is none). Raises
        StoreTampered naming the row when it cannot be read."""
        _, meta_cache = self._caches()
        key = f"v:{task}:{version}"
        raw = meta_cache.get(key)
        return None if raw is None else decode_manifest(raw, key, version)

    def versions(self, task: str) -> list[dict[str, Any]]:
        """Manifests of every kept version of ``task``, oldest first; one that cannot be read is
        skipped, counted in :attr:`unreadable` and logged with its key."""
        _, meta_cache = self._caches()
        last = int(meta_cache.get(f"vseq:{task}", 0))
        found = []
        for version in range(1, last + 1):
            try:
                manifest = self.manifest(task, version)
            except StoreTampered as exc:
                skip_unreadable(self.unreadable, task, exc)
                continue
            if manifest is not None:
                found.append(manifest)
        return found

    def set_current(self, task: str, version: int | None) -> None:
        """Make ``version`` the one every process serves from its next call (None: no router)."""
        _, meta_cache = self._caches()
        if version is None:
            meta_cache.delete(f"cur:{task}")
        else:
            meta_cache.set(f"cur:{task}", int(version))

    def current_version(self, task: str) -> int | None:
        """The version to serve; one indexed SQLite read, cheap enough for every call. Raises
        StoreTampered naming the row when it is not a version number (:meth:`set_current`
        replaces it)."""
        _, meta_cache = self._caches()
        key = f"cur:{task}"
        value = meta_cache.get(key)
        return None if value is None else decode_version(value, key)

    def forget_version(self, task: str, version: int) -> None:
        """Drop a version's manifest and files (never the current one)."""
        if self.current_version(task) == version:
            raise ConfigError(f"version {version} of {task!r} is being served; roll back first")
        _, meta_cache = self._caches()
        meta_cache.delete(f"v:{task}:{version}")
        for suffix in VERSION_ARTIFACTS:
            self.delete_artifact(task, f"v{version}{suffix}")


