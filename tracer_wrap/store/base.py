"""What every store is: the :class:`Store` protocol, the :class:`Trace` record and shared helpers.

:class:`~tracer_wrap.store.disk.TraceStore` (diskcache over SQLite, the embedded default) and
:class:`~tracer_wrap.store.redis_store.RedisStore` (a fleet of hosts) implement the protocol;
:func:`~tracer_wrap.store.open_store` picks one from a path or a ``redis://host:port/db`` URL.
Everything above the store (the engine, refits, the CLI, the sidecar) uses only the protocol.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._log import fault
from ..errors import ConfigError, StoreTampered

__all__ = ["REDIS_SCHEMES", "VERSION_ARTIFACTS", "NewTrace", "Origin", "Store", "Trace",
           "append_one",
           "check_new_traces", "decode_json", "decode_manifest", "decode_vectors",
           "decode_version", "encode_vectors", "read_jsonl",
           "skip_unreadable", "task_id", "well_formed_vector"]

#: URL schemes :func:`open_store` hands to :class:`~tracer_wrap.store.redis_store.RedisStore`.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: Suffixes of the artifacts of version N (``v{N}.npz`` router arrays, ``v{N}.json`` manifest,
#: ``v{N}.ood.npz`` OOD prototypes).
VERSION_ARTIFACTS = (".npz", ".json", ".ood.npz")

class Origin(str, Enum):
    """Where a trace came from."""

    LLM = "llm"  #: a normal call that went to the LLM
    AUDIT = "audit"  #: a random audit sample: the LLM was asked although the router could answer
    IMPORT = "import"  #: imported from a file


@dataclass
class Trace:
    """One distinct input of a task and what the teacher said about it.

    ``teacher`` is the most frequent valid label among ``labels`` (the raw output when the trace
    is invalid). ``exchangeable`` is True when the input was drawn like live traffic (logged
    while every call went to the LLM, in a served version's audit slice whether it was an audit
    sample or deferred, or imported), so the gate may test it exactly.
    ``router_label`` is what the serving router would have answered (audit samples only).
    ``served_version`` is the version that was answering calls locally when this call was
    routed (None when none was: no router, not certified, routing off, breaker tripped).
    ``audit_p`` is the probability that this call reached the LLM given how it was routed: the
    audit rate for an audit sample, 1.0 when the served version deferred it or none served, None
    when the engine did not route it (an answer recorded without a plan while a version served).
    Both are as of the first time the input was seen; traces written before they existed load
    them as None.
    """

    input: str
    teacher: str
    valid: bool = True
    origin: str = Origin.LLM.value
    ts: float = 0.0
    count: int = 1
    exchangeable: bool = True
    labels: dict[str, int] = field(default_factory=dict)
    router_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    served_version: int | None = None
    audit_p: float | None = None

    def to_json(self) -> str:
        # vars(), not dataclasses.asdict: asdict deep-copies every field, a third of an append.
        fields = vars(self)
        if "_unknown" in fields:  # read from a newer release's row: written back with it
            fields = {**fields["_unknown"], **{k: v for k, v in fields.items()
                                               if k != "_unknown"}}
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes, key: str = "") -> Trace:
        """The trace a stored row holds; ``key`` names the row in the error.

        Every field is checked for its type (``input`` and ``teacher`` are required, the others
        take their defaults when absent, as in rows written before they existed). Keys this
        release does not know are ignored, so that during a rolling upgrade a process of the
        older release reads what a newer one wrote; they are kept and written back with the
        trace when it is rewritten (a repeat of its input). Raises StoreTampered naming ``key``
        and the field when the row is not a JSON object of trace fields: never a plain
        exception, so the callers' paths for a damaged row (set the answer aside, skip the row)
        apply."""
        try:
            row = json.loads(raw)
        except (ValueError, TypeError, RecursionError) as exc:  # not JSON, not text, too deep
            raise StoreTampered(f"stored trace {key!r} is not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise StoreTampered(f"stored trace {key!r} is not a JSON object")
        unknown = {}
        for name, value in row.items():
            check = _TRACE_FIELDS.get(name)
            if check is None:
                unknown[name] = value
            elif not check(value):
                raise StoreTampered(f"stored trace {key!r} has a field {name!r} of the wrong"
                                    f" type ({type(value).__name__})")
        if "input" not in row or "teacher" not in row:
            raise StoreTampered(f"stored trace {key!r} has no input or no teacher")
        if unknown:
            trace = cls(**{k: v for k, v in row.items() if k not in unknown})
            trace._unknown = unknown  # type: ignore[attr-defined]
            return trace
        return cls(**row)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


#: What each field of a stored trace must be (:meth:`Trace.from_json`).
_TRACE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "input": lambda v: isinstance(v, str),
    "teacher": lambda v: isinstance(v, str),
    "valid": lambda v: isinstance(v, bool),
    "origin": lambda v: isinstance(v, str),
    "ts": _is_number,
    "count": lambda v: _is_int(v) and v >= 1,
    "exchangeable": lambda v: isinstance(v, bool),
    "labels": lambda v: isinstance(v, dict) and all(_is_int(n) and n >= 0 for n in v.values()),
    "router_label": lambda v: v is None or isinstance(v, str),
    "meta": lambda v: isinstance(v, dict),
    "seq": lambda v: _is_int(v) and v >= 0,
    "served_version": lambda v: v is None or _is_int(v),
    "audit_p": lambda v: v is None or (_is_number(v) and 0 <= v <= 1),
}


@dataclass(frozen=True)
class NewTrace:
    """One teacher answer to record, as :meth:`Store.append_many` takes it (the arguments of
    :meth:`Store.append`), with the input's ``vector`` (bytes of :func:`encode_vectors`) when it
    was embedded: stored in the same transaction, replacing the trace's earlier one."""

    text: str
    teacher: str
    valid: bool = True
    origin: str = Origin.LLM.value
    exchangeable: bool = True
    router_label: str | None = None
    meta: Mapping[str, Any] | None = None
    ts: float | None = None
    served_version: int | None = None
    audit_p: float | None = None
    vector: bytes | None = None

    def first_seen(self, seq: int) -> Trace:
        """The trace this row makes when its input is new: count 1, numbered ``seq``, stamped
        now unless ``ts`` is given."""
        return Trace(self.text, self.teacher, self.valid, self.origin,
                     time.time() if self.ts is None else self.ts, 1, self.exchangeable,
                     {self.teacher: 1} if self.valid else {}, self.router_label,
                     dict(self.meta or {}), seq, self.served_version, self.audit_p)


def append_one(store: Store, task: str, text: str, teacher: str, *, valid: bool,
               origin: Origin | str, exchangeable: bool, router_label: str | None,
               meta: Mapping[str, Any] | None, ts: float | None) -> Trace:
    """:meth:`Store.append` by way of the store's ``append_many`` (one home for both stores).
    Raises ConfigError when the input or label is not text that can be stored."""
    from ..errors import TraceRefused

    if not isinstance(text, str) or not isinstance(teacher, str):
        raise ConfigError("a trace needs a string input and a string teacher label")
    row = NewTrace(text, teacher, valid, Origin(origin).value, exchangeable, router_label,
                   meta, ts)
    try:
        return store.append_many(task, [row])[0]
    except TraceRefused as exc:
        raise ConfigError(str(exc)) from None


def check_new_traces(rows: Sequence[NewTrace]) -> int | None:
    """Index of the first row a store must refuse for good (not text, or text that cannot be
    encoded, such as a lone surrogate), or None when every row can be written."""
    for i, row in enumerate(rows):
        if not isinstance(row.text, str) or not isinstance(row.teacher, str):
            return i
        try:
            row.text.encode("utf-8")
            row.teacher.encode("utf-8")
            if row.router_label is not None:
                row.router_label.encode("utf-8")
            if row.vector is not None and not isinstance(row.vector, bytes):
                return i
            Origin(row.origin)
        except (UnicodeError, ValueError):
            return i
    return None


@runtime_checkable
class Store(Protocol):
    """What tracer_wrap needs from a store; :class:`TraceStore` and ``RedisStore`` implement it.

    Traces are keyed per task by input (a repeat increments ``count`` and the label tally) and
    numbered by ``seq`` in the order first seen; ``count(task)`` is the highest ``seq`` handed out
    (the number of distinct inputs unless :meth:`prune` removed some). Counters, claims, version
    numbers and the current-version pointer are atomic across every process sharing the store.
    Artifacts are named byte blobs per task (router and OOD files of versions). :meth:`tasks`
    lists every task with a trace, a setting or a counter (a task whose every answer was refused
    still shows its counts). Each trace may
    have one stored vector (``put_vectors`` / ``get_vectors``, keyed by ``seq``, bytes made by
    :func:`encode_vectors`; pruning a trace deletes it). Every method raises :class:`StoreError`
    when the backend cannot be reached or written.
    """

    path: Any  #: where the store lives (a directory, or a URL), for messages

    def append(self, task: str, text: str, teacher: str, *, valid: bool = True,
               origin: Origin | str = Origin.LLM, exchangeable: bool = True,
               router_label: str | None = None, meta: Mapping[str, Any] | None = None,
               ts: float | None = None) -> Trace: ...
    def append_many(self, task: str, rows: Sequence[NewTrace]) -> list[Trace]: ...
    def count(self, task: str) -> int: ...
    def iter_traces(self, task: str, *, valid_only: bool = False,
                    start: int = 0) -> Iterator[Trace]: ...
    def traces(self, task: str, *, valid_only: bool = False) -> list[Trace]: ...
    def tasks(self) -> list[str]: ...
    def prune(self, task: str, *, max_traces: int | None = None,
              max_age_seconds: float | None = None,
              keep_after_seq: int | None = None) -> int: ...
    def put_vectors(self, task: str, vectors: Mapping[int, bytes]) -> None: ...
    def get_vectors(self, task: str, seqs: Sequence[int]) -> list[bytes | None]: ...
    def export_jsonl(self, task: str, path: str | os.PathLike[str]) -> int: ...
    def incr(self, task: str, counter: str, delta: int = 1) -> int: ...
    def add_counters(self, task: str, deltas: Mapping[str, int], *,
                     batch: str | None = None) -> None: ...
    def counter(self, task: str, counter: str) -> int: ...
    def counters(self, task: str) -> dict[str, int]: ...
    def get_setting(self, task: str, name: str, default: Any = None) -> Any: ...
    def set_setting(self, task: str, name: str, value: Any) -> None: ...
    def setdefault_setting(self, task: str, name: str, value: Any) -> Any: ...
    def settings(self, task: str) -> dict[str, Any]: ...
    def claim(self, task: str, name: str, *, ttl: float) -> bool: ...
    def release(self, task: str, name: str) -> None: ...
    def write_artifact(self, task: str, name: str, data: bytes) -> None: ...
    def read_artifact(self, task: str, name: str, *,
                      max_bytes: int | None = None) -> bytes: ...
    def delete_artifact(self, task: str, name: str) -> None: ...
    def reserve_version(self, task: str) -> int: ...
    def put_manifest(self, task: str, version: int, manifest: Mapping[str, Any]) -> None: ...
    def manifest(self, task: str, version: int) -> dict[str, Any] | None: ...
    def versions(self, task: str) -> list[dict[str, Any]]: ...
    def set_current(self, task: str, version: int | None) -> None: ...
    def current_version(self, task: str) -> int | None: ...
    def forget_version(self, task: str, version: int) -> None: ...
    def close(self) -> None: ...



#: Bytes of a stored vector before its float16 components: a digest of the embedder's name and
#: the dimension, so a vector is only ever read back into the space it was embedded in.
_VECTOR_TAG_BYTES = 8


def _vector_tag(embedder: str, dim: int) -> bytes:
    return hashlib.blake2b(struct.pack("<I", dim) + embedder.encode("utf-8", "surrogatepass"),
                           digest_size=_VECTOR_TAG_BYTES).digest()


def encode_vectors(embedder: str, vectors: np.ndarray) -> list[bytes]:
    """The stored form of each row of ``vectors`` (embedded by ``embedder``): a tag of the
    embedder's name and the dimension, then the components as little-endian float16 (unit
    vectors lose ~1e-3 of a component, far below what moves a route; half the bytes of
    float32)."""
    matrix = np.asarray(vectors)
    tag = _vector_tag(embedder, matrix.shape[1])
    half = matrix.astype("<f2")
    return [tag + row.tobytes() for row in half]


def decode_vectors(embedder: str, raws: Sequence[bytes | None], dim: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Read stored vectors back: ``(matrix, found)``, ``matrix`` float32 of shape
    ``(len(raws), dim)`` (zero rows where not found) and ``found`` a boolean mask.

    A stored vector counts only when its length matches its dimension and its tag says it was
    embedded by ``embedder`` with ``dim`` components (when ``dim`` is None, the dimension of the
    most stored vectors of ``embedder``): a vector of another embedder, of another dimension,
    truncated or altered is treated as missing, never as data. Plain bytes, never unpickled.
    """
    tags: dict[int, bytes] = {}
    matching: dict[int, int] = {}
    for raw in raws:
        if raw is None or len(raw) <= _VECTOR_TAG_BYTES or (len(raw) - _VECTOR_TAG_BYTES) % 2:
            continue
        size = (len(raw) - _VECTOR_TAG_BYTES) // 2
        if size not in tags:
            tags[size] = _vector_tag(embedder, size)
        if raw[:_VECTOR_TAG_BYTES] == tags[size]:
            matching[size] = matching.get(size, 0) + 1
    if dim is None:
        dim = max(matching, key=matching.__getitem__, default=0)
    tag, length = _vector_tag(embedder, dim), _VECTOR_TAG_BYTES + 2 * dim
    found = np.array([raw is not None and len(raw) == length and raw[:_VECTOR_TAG_BYTES] == tag
                      for raw in raws], dtype=bool)
    matrix = np.zeros((len(raws), dim), dtype=np.float32)
    rows = np.flatnonzero(found)
    if len(rows):
        body = b"".join(raw[_VECTOR_TAG_BYTES:] for raw, ok in zip(raws, found)
                        if ok and raw is not None)
        matrix[rows] = np.frombuffer(body, dtype="<f2").reshape(len(rows), dim)
        finite = np.isfinite(matrix[rows]).all(axis=1)
        found[rows[~finite]] = False
        matrix[rows[~finite]] = 0.0
    return matrix, found


def decode_json(raw: Any, key: str) -> Any:
    """The JSON value of a stored row (a setting); StoreTampered naming ``key`` when the row
    is not JSON text."""
    try:
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StoreTampered(f"stored row {key!r} is not JSON ({exc})") from None


def decode_manifest(raw: Any, key: str, version: int) -> dict[str, Any]:
    """The manifest a stored row holds; StoreTampered naming ``key`` when it is not a JSON
    object recording ``version`` as its number."""
    manifest = decode_json(raw, key)
    if not isinstance(manifest, dict) or manifest.get("version") != version \
            or isinstance(manifest.get("version"), bool):
        raise StoreTampered(f"stored manifest {key!r} is not the manifest of version {version}")
    return manifest


def decode_version(raw: Any, key: str) -> int:
    """A version number stored as an integer (or its digits, as Redis returns it);
    StoreTampered naming ``key`` otherwise."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return raw
    if isinstance(raw, (bytes, str)) and raw.isdigit() and int(raw) >= 1:
        return int(raw)
    raise StoreTampered(f"stored row {key!r} is not a version number")


def skip_unreadable(unreadable: Counter[str], task: str, error: StoreTampered) -> None:
    """Count a stored row of ``task`` that a read skips (``unreadable``, per task) and log it
    (rate-limited, :func:`tracer_wrap._log.fault`; the error names the row's key). One damaged
    row must not stop a status, an export, a refit or a migration of every other trace."""
    unreadable[task] += 1
    fault("reading a stored row", error, task=task, then="the row is skipped and counted")


def well_formed_vector(raw: object) -> bool:
    """Whether ``raw`` has the shape of a stored vector (:func:`encode_vectors`): bytes of a tag
    and float16 components, every one finite, as :func:`decode_vectors` requires. Which
    embedder's tag it bears is checked when it is read."""
    if not isinstance(raw, bytes) or len(raw) <= _VECTOR_TAG_BYTES \
            or (len(raw) - _VECTOR_TAG_BYTES) % 2:
        return False
    return bool(np.isfinite(np.frombuffer(raw, dtype="<f2", offset=_VECTOR_TAG_BYTES)).all())


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """``(input, teacher)`` pairs of a JSONL trace file; ConfigError names a malformed line."""
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, teacher = row["input"], row["teacher"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: not a trace line ({exc})") from exc
            if not isinstance(text, str) or not isinstance(teacher, str):
                raise ConfigError(f"{path}:{number}: input and teacher must be strings")
            rows.append((text, teacher))
    yield from rows


def task_id(task: str) -> str:
    """A file-system-safe, collision-free directory name for ``task``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task)[:40].strip("-.") or "task"
    return f"{slug}-{_digest(task)[:10]}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _check_task(task: object) -> None:
    if not isinstance(task, str) or not task.strip():
        raise ConfigError(f"task must be a non-empty string, got {task!r}")



#: Owner-only modes of everything a store writes to disk: it holds the text of every call.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path`` atomically (a temporary file, then a rename: readers see the old
    content or the new, never half), readable by its owner only; missing folders are created
    owner-only. Raises OSError when the disk refuses (the temporary file is removed)."""
    missing = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    for folder in reversed(missing):  # each missing folder owner-only, not only the last
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    _replace_privately(path, [data])


def _replace_privately(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to an owner-only temporary file beside ``path``, then rename it over
    ``path``; the temporary file is removed when anything fails (Ctrl-C included)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.writelines(chunks)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: Longest artifact read when its manifest records no size (versions published before sizes
#: were recorded): far above any router or OOD file, far below what would exhaust memory.
MAX_ARTIFACT_BYTES = 256 * 2**20


def read_artifact_file(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of the artifact file ``path``, read without blocking and bounded: the file must
    be a regular file reached without following a symbolic link at its last component, and hold
    at most ``max_bytes`` (its recorded size; None: :data:`MAX_ARTIFACT_BYTES`). A FIFO would
    block its reader forever and ``/dev/zero`` never ends: whoever can write the artifacts folder
    alone must not be able to stall or exhaust the process that loads a version. Raises
    FileNotFoundError when there is no such file, StoreTampered when it is not a regular file or
    is larger, OSError when it cannot be read."""
    limit = MAX_ARTIFACT_BYTES if max_bytes is None else max_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreTampered(f"artifact {str(path)!r} is a symbolic link, refusing to read"
                                " it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreTampered(f"artifact {str(path)!r} is not a regular file, refusing to"
                                " read it")
        if info.st_size > limit:
            raise StoreTampered(f"artifact {str(path)!r} holds {info.st_size} bytes, more than"
                                f" the {limit} expected")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 2**20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # grew while read
            raise StoreTampered(f"artifact {str(path)!r} holds more than the {limit} bytes"
                                " expected")
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private_text(path: str | os.PathLike[str], lines: Iterator[str]) -> None:
    """Write ``lines`` as the text file ``path`` atomically (beside it, then a rename), readable
    by its owner only, as everything a store writes: it holds prompts. Raises OSError when the
    disk refuses (the temporary file is removed)."""
    _replace_privately(Path(path), (line.encode("utf-8") for line in lines))


def _check_artifact_name(name: object) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"artifact name must be a plain file name, got {name!r}")


def _prune_victims(traces: Iterator[Trace], max_traces: int | None,
                   max_age_seconds: float | None, keep_after_seq: int | None = None,
                   now: float | None = None) -> list[tuple[int, str]]:
    """``(seq, input)`` of the traces :meth:`Store.prune` deletes, oldest first: beyond the
    newest ``max_traces`` or first seen more than ``max_age_seconds`` ago by the wall clock, but
    never one whose ``seq`` is above ``keep_after_seq``. Retention passes the newest refit's
    last ``seq`` there, so a wall clock that jumps ahead cannot delete what no refit has seen."""
    if max_traces is not None and (not isinstance(max_traces, int) or max_traces < 0):
        raise ConfigError(f"max_traces must be a non-negative integer, got {max_traces!r}")
    if max_age_seconds is not None and not max_age_seconds >= 0:
        raise ConfigError(f"max_age_seconds must be non-negative, got {max_age_seconds!r}")
    rows = sorted((t.seq, t.ts, t.input) for t in traces)
    now = time.time() if now is None else now
    cutoff = None if max_age_seconds is None else now - max_age_seconds
    excess = 0 if max_traces is None else max(0, len(rows) - max_traces)
    return [(seq, text) for i, (seq, ts, text) in enumerate(rows)
            if (i < excess or (cutoff is not None and ts < cutoff))
            and (keep_after_seq is None or seq <= keep_after_seq)]
