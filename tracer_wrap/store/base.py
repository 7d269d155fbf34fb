"""What every store is: the :class:`Store` protocol, the :class:`Trace` record and shared helpers.

:class:`~tracer_wrap.store.disk.TraceStore` (diskcache over SQLite, the embedded default) and
:class:`~tracer_wrap.store.redis_store.RedisStore` (a fleet of hosts) implement the protocol;
:func:`~tracer_wrap.store.open_store` picks one from a path or a ``redis://host:port/db`` URL.
Everything above the store (the engine, refits, the CLI, the sidecar) uses only the protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError

__all__ = ["REDIS_SCHEMES", "VERSION_ARTIFACTS", "NewTrace", "Origin", "Store", "Trace",
           "check_new_traces", "read_jsonl", "task_id"]

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
    while every call went to the LLM, an audit sample, or imported), so it may calibrate the gate.
    ``router_label`` is what the serving router would have answered (audit samples only).
    ``served_version`` is the version that served when the call was routed (None when no router
    served) and ``audit_p`` the chance the call was sent to the LLM as an audit sample although
    that version could answer it (1.0 or None when no router served or it deferred the call).
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
        return json.dumps(vars(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Trace:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class NewTrace:
    """One teacher answer to record, as :meth:`Store.append_many` takes it (the arguments of
    :meth:`Store.append`)."""

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
    Artifacts are named byte blobs per task (router and OOD files of versions). Every method
    raises :class:`StoreError` when the backend cannot be reached or written.
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
              max_age_seconds: float | None = None) -> int: ...
    def export_jsonl(self, task: str, path: str | os.PathLike[str]) -> int: ...
    def import_jsonl(self, path: str | os.PathLike[str], task: str) -> int: ...
    def incr(self, task: str, counter: str, delta: int = 1) -> int: ...
    def add_counters(self, task: str, deltas: Mapping[str, int]) -> None: ...
    def counter(self, task: str, counter: str) -> int: ...
    def counters(self, task: str) -> dict[str, int]: ...
    def get_setting(self, task: str, name: str, default: Any = None) -> Any: ...
    def set_setting(self, task: str, name: str, value: Any) -> None: ...
    def setdefault_setting(self, task: str, name: str, value: Any) -> Any: ...
    def settings(self, task: str) -> dict[str, Any]: ...
    def claim(self, task: str, name: str, *, ttl: float) -> bool: ...
    def release(self, task: str, name: str) -> None: ...
    def write_artifact(self, task: str, name: str, data: bytes) -> None: ...
    def read_artifact(self, task: str, name: str) -> bytes: ...
    def delete_artifact(self, task: str, name: str) -> None: ...
    def reserve_version(self, task: str) -> int: ...
    def put_manifest(self, task: str, version: int, manifest: Mapping[str, Any]) -> None: ...
    def manifest(self, task: str, version: int) -> dict[str, Any] | None: ...
    def versions(self, task: str) -> list[dict[str, Any]]: ...
    def set_current(self, task: str, version: int | None) -> None: ...
    def current_version(self, task: str) -> int | None: ...
    def forget_version(self, task: str, version: int) -> None: ...
    def close(self) -> None: ...



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



def _check_artifact_name(name: object) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"artifact name must be a plain file name, got {name!r}")


def _prune_victims(traces: Iterator[Trace], max_traces: int | None,
                   max_age_seconds: float | None, now: float | None = None
                   ) -> list[tuple[int, str]]:
    """``(seq, input)`` of the traces :meth:`Store.prune` deletes, oldest first."""
    if max_traces is not None and (not isinstance(max_traces, int) or max_traces < 0):
        raise ConfigError(f"max_traces must be a non-negative integer, got {max_traces!r}")
    if max_age_seconds is not None and not max_age_seconds >= 0:
        raise ConfigError(f"max_age_seconds must be non-negative, got {max_age_seconds!r}")
    rows = sorted((t.seq, t.ts, t.input) for t in traces)
    now = time.time() if now is None else now
    cutoff = None if max_age_seconds is None else now - max_age_seconds
    excess = 0 if max_traces is None else max(0, len(rows) - max_traces)
    return [(seq, text) for i, (seq, ts, text) in enumerate(rows)
            if i < excess or (cutoff is not None and ts < cutoff)]
