"""A :class:`~tracer_wrap.store.Store` in Redis, for many processes on many hosts.

Keys (``{p}`` is the prefix, ``{t}`` the task's :func:`~tracer_wrap.store.task_id`)::

    {p}:tasks          hash   task name -> first-seen time
    {p}:id             string this store's random id, set once (SET NX): what it is, whatever
                              URL reaches it (migrate)
    {p}:{t}:h          hash   input digest -> seq (the dedup index)
    {p}:{t}:t          hash   seq -> trace JSON as first seen
    {p}:{t}:c          hash   seq -> count
    {p}:{t}:l:{seq}    hash   label -> tally (valid answers only)
    {p}:{t}:o          zset   seq, scored by seq (order)
    {p}:{t}:vec        hash   seq -> stored vector (bytes of ``encode_vectors``)
    {p}:{t}:n          string highest seq (INCR)
    {p}:{t}:ctr / :s   hash   counters (HINCRBY) / settings (JSON)
    {p}:{t}:ctrbatch:{id}  string  a counter batch already added (expires after a day)
    {p}:{t}:claim:{n}  string refit claims (SET NX PX)
    {p}:{t}:vseq / :v  string / hash   version numbers / manifests
    {p}:{t}:cur        string the current version (read by each process's background refresh);
                              changes are also PUBLISHed
                              on ``{p}:versions`` as ``<task>\\t<version>``
    {p}:{t}:a          hash   artifact name -> bytes

An append is one Lua script (atomic: dedup, seq, count and tally together). Every method raises
StoreError when Redis cannot be reached in ``socket_timeout`` seconds; the engine keeps the
traces of calls in its own bounded buffer meanwhile (:class:`tracer_wrap.engine.TracedTask`), so
the store itself holds nothing in memory.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .. import names
from .._log import fault
from ..errors import ConfigError, MissingExtraError, StoreError, StoreTampered, TraceRefused
from .base import (
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
)

__all__ = ["RedisStore", "display_url"]

# Deletes a claim only when its holder's token is the caller's: a claim that lapsed while its
# holder still ran may already be another process's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Adds a batch of counter deltas once: the batch's id is remembered for a day, so a batch resent
# after a connection dropped mid-call (Redis may have run it) is not counted twice.
_ADD_COUNTERS = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) then
  redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2])
  for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""

# One page of traces in one reply: each trace's JSON, count and flat label tallies, encoded as
# one JSON document. Pipelining an HGETALL per trace cost a reply parsed in Python per trace,
# which beside busy threads waits for the GIL each time (BENCHMARKS.md, "What a refit reads").
# A pruned trace comes back as [false, false].
_PAGE = """
local raws = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
local counts = redis.call('HMGET', KEYS[2], unpack(ARGV, 2))
local out = {}
for i = 2, #ARGV do
  local row = {raws[i - 1], counts[i - 1]}
  local tally = redis.call('HGETALL', ARGV[1] .. ARGV[i])
  for j = 1, #tally do row[#row + 1] = tally[j] end
  out[#out + 1] = row
end
return cjson.encode(out)
"""

_APPEND = """
local seq = redis.call('HGET', KEYS[1], ARGV[1])
local new = 0
if not seq then
  seq = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], ARGV[1], seq)
  redis.call('HSET', KEYS[2], seq, ARGV[2])
  redis.call('ZADD', KEYS[5], seq, seq)
  redis.call('HSETNX', KEYS[6], ARGV[5], ARGV[6])
  new = 1
end
local count = redis.call('HINCRBY', KEYS[3], seq, 1)
if ARGV[4] == '1' then redis.call('HINCRBY', ARGV[7] .. seq, ARGV[3], 1) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[7], seq, ARGV[8]) end
local base = ''
local labels = {}
if new == 0 then
  base = redis.call('HGET', KEYS[2], seq)
  labels = redis.call('HGETALL', ARGV[7] .. seq)
end
return {new, tonumber(seq), count, base, labels}
"""


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingExtraError("redis", "redis") from exc
    return redis


class RedisStore:
    """Traces, counters, claims and router versions in one Redis database.

    ``url`` is ``redis://host:port/db`` (or ``rediss://``, ``unix://``). Nothing is contacted until
    first use. ``buffer`` bounds the traces kept in memory while Redis is unreachable.
    Router files live in Redis, unless ``artifacts`` names a directory every host mounts (default
    ``$TRACER_WRAP_ARTIFACTS``), for routers too large to keep in Redis memory; their SHA-256 stays
    in the manifest in Redis and is checked before loading either way.
    ``path`` is the URL with its password hidden (:func:`display_url`), for every message.
    Raises MissingExtraError when redis-py is not installed, ConfigError for a malformed URL.
    """

    def __init__(self, url: str, *, prefix: str = "tw", socket_timeout: float = 2.0,
                 artifacts: str | os.PathLike[str] | None = None) -> None:
        redis = _redis()
        #: The URL for messages and logs, its password hidden (:func:`display_url`).
        self.path = display_url(url)
        artifacts = artifacts or os.environ.get(names.ENV_ARTIFACTS) or None
        self.artifacts = Path(artifacts) if artifacts is not None else None
        self.prefix = prefix
        self._unreachable = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        self._redis_error = redis.RedisError
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                                socket_connect_timeout=socket_timeout)
        except ValueError as exc:  # a malformed URL: its port, its database number, ...
            raise ConfigError(f"redis store {self.path!r}: {exc}") from None
        self._append_script = self._client.register_script(_APPEND)
        self._add_counters_script = self._client.register_script(_ADD_COUNTERS)
        self._release_script = self._client.register_script(_RELEASE)
        self._page_script = self._client.register_script(_PAGE)
        #: Stored rows of each task this object's reads skipped because they cannot be read.
        self.unreadable: Counter[str] = Counter()

    # -- plumbing ------------------------------------------------------------------------------

    def _k(self, task: str, *parts: str) -> str:
        return ":".join((self.prefix, task_id(task), *parts))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._redis_error as exc:
            raise StoreError(f"redis store {self.path!r}: {exc}") from exc

    def identity(self) -> str:
        """What this store is, whatever URL spelling opened it, with no secret in it: a random
        id kept in the store itself (``{p}:id``, written by the first call, atomically), so it
        survives restarts of a persistent server and differs between databases and prefixes.
        Raises StoreError when Redis cannot be reached."""
        key = f"{self.prefix}:id"
        self._call(self._client.set, key, uuid.uuid4().hex, nx=True)
        return f"redis store {self._call(self._client.get, key).decode()}"

    def close(self) -> None:
        """Close this process's connections (they reopen on next use)."""
        self._client.close()

    # -- traces ------------------------------------------------------------------------------

    def append(self, task: str, text: str, teacher: str, *, valid: bool = True,
               origin: Origin | str = Origin.LLM, exchangeable: bool = True,
               router_label: str | None = None, meta: Mapping[str, Any] | None = None,
               ts: float | None = None) -> Trace:
        """Record a teacher answer atomically (see :meth:`TraceStore.append`). Raises
        StoreError when Redis cannot be reached, ConfigError for text that cannot be stored."""
        return append_one(self, task, text, teacher, valid=valid, origin=origin,
                          exchangeable=exchangeable, router_label=router_label, meta=meta, ts=ts)

    def append_many(self, task: str, rows: Sequence[NewTrace]) -> list[Trace]:
        """Record many answers in one MULTI/EXEC (all or none), one round trip.

        Raises StoreError when Redis cannot be reached in ``socket_timeout`` (nothing is written;
        should the connection drop after Redis ran the transaction, a retry counts those inputs
        twice), TraceRefused (with the ``index`` of the row) when a row can never be stored: the
        rows before it are written.
        """
        _check_task(task)
        refused = check_new_traces(rows)
        if refused is not None:
            written = self.append_many(task, rows[:refused]) if refused else []
            raise TraceRefused(f"row {refused} is not text that can be stored", index=refused,
                               written=written)
        if not rows:
            return []
        traces = [row.first_seen(0) for row in rows]
        pipe = self._client.pipeline(transaction=True)
        for trace, row in zip(traces, rows):
            self._send(task, trace, row.vector, client=pipe)
        try:
            replies = pipe.execute()
        except self._unreachable as exc:
            raise StoreError(f"redis store {self.path!r}: {exc}") from exc
        except self._redis_error as exc:
            raise TraceRefused(f"redis store {self.path!r} refused traces: {exc}",
                               index=0) from exc
        return [self._appended(task, trace, reply) for trace, reply in zip(traces, replies)]

    def _send(self, task: str, trace: Trace, vector: bytes | None, client: Any) -> Any:
        base = Trace(**{**trace.__dict__, "labels": {}, "seq": 0})
        return self._append_script(
            keys=[self._k(task, "h"), self._k(task, "t"), self._k(task, "c"), self._k(task, "n"),
                  self._k(task, "o"), f"{self.prefix}:tasks", self._k(task, "vec")],
            args=[_digest(trace.input), base.to_json(), trace.teacher, int(trace.valid), task,
                  trace.ts, self._k(task, "l", ""), vector or b""], client=client)

    def _appended(self, task: str, trace: Trace, reply: Any) -> Trace:
        new, seq, count, raw, labels = reply
        if new:
            trace.seq = int(seq)
            return trace
        try:
            return _assemble(raw, int(seq), int(count), _pairs(labels),
                             f"{self._k(task, 't')}[{int(seq)}]")
        except (StoreTampered, ValueError) as exc:
            # The script already counted this answer (count and tally are kept apart from the
            # damaged row): it is written, and only the row as first seen cannot be read back.
            fault("reading a stored row (skipped)", exc, task=task)
            trace.seq, trace.count = int(seq), int(count)
            return trace

    def count(self, task: str) -> int:
        return int(self._call(self._client.get, self._k(task, "n")) or 0)

    def iter_traces(self, task: str, *, valid_only: bool = False,
                    start: int = 0) -> Iterator[Trace]:
        """Traces in ``seq`` order from sequence number ``start``; read in pages of 500, each
        page one script call (each page a consistent snapshot; a trace pruned between pages is
        skipped)."""
        order = self._k(task, "o")
        low = start + 1
        while True:
            seqs = self._call(self._client.zrangebyscore, order, low, "+inf", start=0, num=500)
            if not seqs:
                return
            page = self._call(self._page_script, keys=[self._k(task, "t"), self._k(task, "c")],
                              args=[self._k(task, "l", ""), *seqs])
            # A stored row of bytes that are not UTF-8 (only an edit writes one) reads as
            # replacement characters here, and is refused below as any other damaged row.
            for seq, (raw, count, *tally) in zip(seqs, json.loads(
                    page.decode("utf-8", "replace") if isinstance(page, bytes) else page)):
                if not raw:  # pruned meanwhile
                    continue
                key = f"{self._k(task, 't')}[{int(seq)}]"
                try:
                    try:
                        labels = {str(tally[i]): int(tally[i + 1])
                                  for i in range(0, len(tally), 2)}
                        times = int(count or 1)
                    except (ValueError, TypeError, IndexError):
                        raise StoreTampered(f"stored trace {key!r} has a count or a label"
                                            " tally that is not a number") from None
                    trace = _assemble(raw, int(seq), times, labels, key)
                except StoreTampered as exc:
                    skip_unreadable(self.unreadable, task, exc)
                    continue
                if trace.valid or not valid_only:
                    yield trace
            low = int(seqs[-1]) + 1

    def traces(self, task: str, *, valid_only: bool = False) -> list[Trace]:
        return list(self.iter_traces(task, valid_only=valid_only))

    def tasks(self) -> list[str]:
        return sorted(k.decode() for k in self._call(self._client.hkeys, f"{self.prefix}:tasks"))

    def prune(self, task: str, *, max_traces: int | None = None,
              max_age_seconds: float | None = None, keep_after_seq: int | None = None) -> int:
        """Delete the oldest traces beyond ``max_traces`` or older than ``max_age_seconds``, never
        one whose ``seq`` is above ``keep_after_seq``.

        Each deletion (trace, count, tally, order entry and dedup entry) is one MULTI/EXEC.
        """
        victims = _prune_victims(self.iter_traces(task), max_traces, max_age_seconds,
                                 keep_after_seq)
        for seq, text in victims:
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(self._k(task, "t"), seq)
            pipe.hdel(self._k(task, "c"), seq)
            pipe.hdel(self._k(task, "vec"), seq)
            pipe.delete(self._k(task, "l", str(seq)))
            pipe.zrem(self._k(task, "o"), seq)
            pipe.hdel(self._k(task, "h"), _digest(text))
            self._call(pipe.execute)
        return len(victims)

    def put_vectors(self, task: str, vectors: Mapping[int, bytes]) -> None:
        """Store the vector of each trace ``seq`` (one HSET), replacing earlier ones."""
        _check_task(task)
        if vectors:
            self._call(self._client.hset, self._k(task, "vec"),
                       mapping={str(int(seq)): bytes(raw) for seq, raw in vectors.items()})

    def get_vectors(self, task: str, seqs: Sequence[int]) -> list[bytes | None]:
        """The stored vector bytes of each trace ``seq`` (None where there is none), read in
        pages of 1,000 (HMGET)."""
        out: list[bytes | None] = []
        for i in range(0, len(seqs), 1000):
            page = [str(int(seq)) for seq in seqs[i:i + 1000]]
            out.extend(self._call(self._client.hmget, self._k(task, "vec"), page))
        return out

    def export_jsonl(self, task: str, path: str | os.PathLike[str]) -> int:
        from .disk import TraceStore

        return TraceStore.export_jsonl(self, task, path)  # type: ignore[arg-type]

    # -- counters, settings and claims ---------------------------------------------------------

    def incr(self, task: str, counter: str, delta: int = 1) -> int:
        pipe = self._client.pipeline(transaction=True)
        pipe.hincrby(self._k(task, "ctr"), counter, delta)
        pipe.hsetnx(f"{self.prefix}:tasks", task, time.time())  # listed in tasks() with it
        return int(self._call(pipe.execute)[0])

    def add_counters(self, task: str, deltas: Mapping[str, int], *,
                     batch: str | None = None) -> None:
        """Atomically add each delta to its counter of ``task`` (one Lua script). With a
        ``batch`` id, a batch already added (within a day) is not added again: a caller that
        lost the connection mid-call resends the same batch without counting it twice."""
        if batch is None:
            pipe = self._client.pipeline(transaction=True)
            for name, delta in deltas.items():
                pipe.hincrby(self._k(task, "ctr"), name, int(delta))
            pipe.hsetnx(f"{self.prefix}:tasks", task, time.time())  # listed in tasks() with them
            self._call(pipe.execute)
            return
        args: list[str | int | float] = [task, time.time()]
        for name, delta in deltas.items():
            args += [name, int(delta)]
        self._call(self._add_counters_script,
                   keys=[self._k(task, "ctr"), self._k(task, "ctrbatch", batch),
                         f"{self.prefix}:tasks"], args=args)

    def counter(self, task: str, counter: str) -> int:
        return int(self._call(self._client.hget, self._k(task, "ctr"), counter) or 0)

    def counters(self, task: str) -> dict[str, int]:
        raw = self._call(self._client.hgetall, self._k(task, "ctr"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def get_setting(self, task: str, name: str, default: Any = None) -> Any:
        """A JSON value stored for ``task`` under ``name`` (``default`` when absent). Raises
        StoreTampered naming the key when it is not JSON."""
        raw = self._call(self._client.hget, self._k(task, "s"), name)
        return default if raw is None else decode_json(raw, f"{self._k(task, 's')}[{name}]")

    def set_setting(self, task: str, name: str, value: Any) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._k(task, "s"), name, json.dumps(value))
        pipe.hsetnx(f"{self.prefix}:tasks", task, time.time())
        self._call(pipe.execute)

    def setdefault_setting(self, task: str, name: str, value: Any) -> Any:
        """Store ``value`` under ``name`` unless a value is there (``HSETNX``); return the
        stored one."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hsetnx(self._k(task, "s"), name, json.dumps(value))
        pipe.hsetnx(f"{self.prefix}:tasks", task, time.time())
        pipe.hget(self._k(task, "s"), name)
        raw = self._call(pipe.execute)[-1]
        return decode_json(raw, f"{self._k(task, 's')}[{name}]")

    def settings(self, task: str) -> dict[str, Any]:
        """Every setting of ``task`` that can be read; one that is not JSON is skipped, counted
        in :attr:`unreadable` and logged with its key."""
        key = self._k(task, "s")
        out: dict[str, Any] = {}
        for name, raw in self._call(self._client.hgetall, key).items():
            try:
                out[name.decode()] = decode_json(raw, f"{key}[{name!r}]")
            except (StoreTampered, UnicodeError) as exc:
                skip_unreadable(self.unreadable, task, StoreTampered(str(exc)))
        return out

    def claim(self, task: str, name: str, *, ttl: float) -> bool:
        """Take the claim if nobody holds it (``SET NX PX``); it expires after ``ttl`` seconds.

        The expiry is counted by the Redis server (``PX`` is a duration, not a date), so no
        jump of a client's wall clock can end a live claim early or keep a dead one alive: the
        clients never compare times. Only the server's own clock matters, as for every Redis
        expiry. The claim's value names its holder (host, process, and a nonce per process)."""
        return bool(self._call(self._client.set, self._k(task, "claim", name), _holder(),
                               nx=True, px=max(1, int(ttl * 1000))))

    def release(self, task: str, name: str) -> None:
        """Give the claim back if this process holds it (one that lapsed and was taken by
        another process stays theirs); atomic (one Lua script)."""
        self._call(self._release_script, keys=[self._k(task, "claim", name)], args=[_holder()])

    # -- artifacts and versions ----------------------------------------------------------------

    def write_artifact(self, task: str, name: str, data: bytes) -> None:
        _check_artifact_name(name)
        if self.artifacts is not None:
            path = self.artifacts / task_id(task) / name
            try:
                write_private(path, bytes(data))  # other hosts see old or new, never half
            except OSError as exc:
                raise StoreError(f"cannot write artifact {str(path)!r}: {exc}") from exc
            return
        self._call(self._client.hset, self._k(task, "a"), name, bytes(data))

    def read_artifact(self, task: str, name: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes of artifact ``name``; FileNotFoundError when there is none. From the
        ``artifacts`` directory, read as :meth:`TraceStore.read_artifact` reads (bounded by
        ``max_bytes``, never blocking: StoreTampered for a FIFO, a link, a larger file)."""
        _check_artifact_name(name)
        if self.artifacts is not None:
            return read_artifact_file(self.artifacts / task_id(task) / name, max_bytes)
        data = self._call(self._client.hget, self._k(task, "a"), name)
        if data is None:
            raise FileNotFoundError(f"no artifact {name!r} of {task!r} in {self.path!r}")
        return bytes(data)

    def delete_artifact(self, task: str, name: str) -> None:
        if self.artifacts is not None:
            (self.artifacts / task_id(task) / name).unlink(missing_ok=True)
            return
        self._call(self._client.hdel, self._k(task, "a"), name)

    def reserve_version(self, task: str) -> int:
        return int(self._call(self._client.incr, self._k(task, "vseq")))

    def put_manifest(self, task: str, version: int, manifest: Mapping[str, Any]) -> None:
        self._call(self._client.hset, self._k(task, "v"), str(int(version)),
                   json.dumps(dict(manifest, version=version)))

    def manifest(self, task: str, version: int) -> dict[str, Any] | None:
        """The manifest recorded for ``version`` (None when there is none). Raises
        StoreTampered naming the key when it cannot be read."""
        key = self._k(task, "v")
        raw = self._call(self._client.hget, key, str(int(version)))
        return None if raw is None else decode_manifest(raw, f"{key}[{version}]", int(version))

    def versions(self, task: str) -> list[dict[str, Any]]:
        """Manifests of every kept version, oldest first; one that cannot be read is skipped,
        counted in :attr:`unreadable` and logged with its key."""
        key = self._k(task, "v")
        raw = self._call(self._client.hgetall, key)
        found = []
        for field in raw:
            try:
                if not field.isdigit():
                    raise StoreTampered(f"stored row {key}[{field!r}] is not a version")
                found.append(decode_manifest(raw[field], f"{key}[{field.decode()}]",
                                             int(field)))
            except StoreTampered as exc:
                skip_unreadable(self.unreadable, task, exc)
        return sorted(found, key=lambda m: int(m["version"]))

    def set_current(self, task: str, version: int | None) -> None:
        """Serve ``version`` from every process's next call; announced on ``{prefix}:versions``."""
        pipe = self._client.pipeline(transaction=True)
        if version is None:
            pipe.delete(self._k(task, "cur"))
        else:
            pipe.set(self._k(task, "cur"), int(version))
        pipe.publish(f"{self.prefix}:versions", f"{task}\t{version}")
        self._call(pipe.execute)

    def current_version(self, task: str) -> int | None:
        """The version to serve: one GET (tens of microseconds on a LAN). Raises StoreTampered
        naming the key when it is not a version number (:meth:`set_current` replaces it)."""
        key = self._k(task, "cur")
        value = self._call(self._client.get, key)
        return None if value is None else decode_version(value, key)

    def forget_version(self, task: str, version: int) -> None:
        if self.current_version(task) == version:
            raise ConfigError(f"version {version} of {task!r} is being served; roll back first")
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._k(task, "v"), str(int(version)))
        pipe.hdel(self._k(task, "a"), *(f"v{version}{s}" for s in VERSION_ARTIFACTS))
        self._call(pipe.execute)


def display_url(url: str) -> str:
    """A store URL as people may see it (messages, logs, ``status``, reports): its password,
    in the user part or a ``password=`` query argument, replaced by ``***``; a user part with no
    password is hidden whole (``redis://secret@host`` is a password to some clients). Text that
    is not a URL is returned as it is."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        netloc = (f"{parts.username or ''}:***@{host}" if parts.password is not None
                  else f"***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        query = [(key, "***" if key == "password" else value) for key, value in query]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
    return urlunsplit(parts._replace(netloc=netloc))


def _pairs(flat: Any) -> dict[str, int]:
    if isinstance(flat, dict):
        return {k.decode(): int(v) for k, v in flat.items()}
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _assemble(raw: bytes | str, seq: int, count: int, labels: dict[str, int],
              key: str = "") -> Trace:
    """The trace of a stored row; StoreTampered naming ``key`` when it cannot be read."""
    trace = Trace.from_json(raw, key)
    trace.seq, trace.count = seq, count
    if labels:
        trace.labels = labels
        trace.teacher = max(labels, key=labels.__getitem__)
        trace.valid = True
    return trace


_NONCE = uuid.uuid4().hex  # with the pid, tells apart processes of one host across restarts


def _holder() -> str:
    """This process's name as the holder of a claim (a forked child has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_NONCE}"
