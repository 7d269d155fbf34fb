"""Copy a whole store into another: ``tracer-wrap migrate --from PATH --to redis://...``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import REDIS_SCHEMES, VERSION_ARTIFACTS, NewTrace, Store, Trace, open_store

__all__ = ["migrate"]

#: Setting of the destination task recording what a migration from one source already copied.
_MARK = "migrated_from:"


def migrate(src: Store | str | os.PathLike[str],
            dst: Store | str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Copy every task's traces, counters, settings and versions from ``src`` into ``dst``.

    Idempotent and incremental: the destination records, per source, the last trace sequence
    number and the counter values it copied, so running it again copies only traces first seen
    since and the counters' growth (an input already copied that repeats later in the source is
    not copied again). Traces keep their input, label tally, count, origin, timestamp and
    metadata (replayed as appends, so an input the destination already holds adds to its count),
    and their stored vectors.
    Versions keep their numbers, artifacts, manifests and the current pointer; the destination's
    next version number comes after the copied ones. Returns per task how much was copied.
    Raises ConfigError when ``src`` is a directory that does not exist, StoreError when either
    store fails.
    """
    if isinstance(src, (str, os.PathLike)) and not str(src).startswith(REDIS_SCHEMES) \
            and not Path(src).is_dir():
        raise ConfigError(f"no store at {str(src)!r} to migrate from")
    src_store, dst_store = open_store(src), open_store(dst)
    source = _identity(src_store)
    summary: dict[str, dict[str, int]] = {}
    for task in src_store.tasks():
        mark: dict[str, Any] = dst_store.get_setting(task, _MARK + source) or {}
        last_seq = int(mark.get("seq", 0))
        copied = 0
        seqs: dict[int, int] = {}  # source seq -> destination seq
        for trace in src_store.iter_traces(task, start=last_seq):
            seqs[trace.seq] = _copy_trace(dst_store, task, trace)
            last_seq = max(last_seq, trace.seq)
            copied += 1
        _copy_vectors(src_store, dst_store, task, seqs)
        counters = src_store.counters(task)
        already = mark.get("counters", {})
        growth = {name: value - int(already.get(name, 0)) for name, value in counters.items()}
        growth = {name: delta for name, delta in growth.items() if delta}
        if growth:
            dst_store.add_counters(task, growth)
        settings = {k: v for k, v in src_store.settings(task).items()
                    if not k.startswith(_MARK)}
        for name, value in settings.items():
            dst_store.set_setting(task, name, value)
        manifests = src_store.versions(task)
        for manifest in manifests:
            version = int(manifest["version"])
            for suffix in VERSION_ARTIFACTS:
                try:
                    data = src_store.read_artifact(task, f"v{version}{suffix}")
                except FileNotFoundError:
                    continue
                dst_store.write_artifact(task, f"v{version}{suffix}", data)
            dst_store.put_manifest(task, version, manifest)
        last = max((int(m["version"]) for m in manifests), default=0)
        while dst_store.reserve_version(task) < last:  # numbers stay unique after the copy
            pass
        current = src_store.current_version(task)
        if current is not None:
            dst_store.set_current(task, current)
        dst_store.set_setting(task, _MARK + source, {"seq": last_seq, "counters": counters})
        summary[task] = {"traces": copied, "counters": len(growth), "settings": len(settings),
                         "versions": len(manifests)}
    return summary


def _identity(store: Store) -> str:
    path = store.path
    if isinstance(path, (str, os.PathLike)) and not str(path).startswith(REDIS_SCHEMES):
        return str(Path(path).resolve())
    return str(path)


def _copy_trace(dst: Store, task: str, trace: Trace) -> int:
    """Replay ``trace`` into ``dst``; return its ``seq`` there."""
    def row(label: str, valid: bool = True) -> NewTrace:
        return NewTrace(trace.input, label, valid, trace.origin, trace.exchangeable,
                        trace.router_label, trace.meta, trace.ts, trace.served_version,
                        trace.audit_p)

    if not trace.labels:  # never had a valid answer: replay the raw output ``count`` times
        rows = [row(trace.teacher, valid=False)] * trace.count
    else:
        invalid = trace.count - sum(trace.labels.values())
        rows = [row(label) for label, times in trace.labels.items() for _ in range(times)]
        rows += [row(trace.teacher, valid=False)] * max(0, invalid)
    return dst.append_many(task, rows)[0].seq


def _copy_vectors(src: Store, dst: Store, task: str, seqs: dict[int, int]) -> None:
    """Copy the stored vectors of the copied traces (as bytes: each carries its embedder's tag)."""
    pairs = list(seqs.items())
    for i in range(0, len(pairs), 1000):
        page = pairs[i:i + 1000]
        raws = src.get_vectors(task, [s for s, _ in page])
        found = {d: raw for (_, d), raw in zip(page, raws) if raw is not None}
        if found:
            dst.put_vectors(task, found)
