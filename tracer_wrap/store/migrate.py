"""Copy a whole store into another: ``tracer-wrap migrate --from PATH --to redis://...``."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import names
from ..errors import ConfigError, StoreTampered
from . import REDIS_SCHEMES, VERSION_ARTIFACTS, NewTrace, Store, Trace, open_store
from .base import skip_unreadable, well_formed_vector

__all__ = ["migrate", "store_identity"]

#: Setting of the destination task recording what a migration from one source already copied;
#: the rest of the name is the source's :func:`store_identity`.
_MARK = "migrated_from:"


def migrate(src: Store | str | os.PathLike[str],
            dst: Store | str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Copy every task's traces, counters, settings and versions from ``src`` into ``dst``.

    Incremental: the destination records per task, under the source's :func:`store_identity`
    (no secret in it), what it copied, and a run again copies only what is new, never undoing
    what the destination did since:

    * **traces** first seen in the source since the last run (by sequence number), replayed as
      appends (an input the destination already holds adds to its count), with their label
      tally, count, origin, timestamp, metadata and stored vectors;
    * **counters**: their growth since the last run;
    * **settings**: one is written when the destination does not have it, or still holds the
      value the last run wrote (the source's change since is then copied); one the destination
      set itself, or changed since, is kept. A pinned version, and the version of a drift-breaker
      trip, are translated to the destination's number of that version, and the trace number
      after which calibration restarts (a trip's) to the destination's numbering, rounded so
      that no trace logged before the trip may calibrate there;
    * **versions**: each once, known by its identity (a digest of its manifest without its
      number): one the destination already holds, or that a run already copied, is not copied
      again. A version keeps its number when the destination has not used it yet, else takes the
      destination's next number (its ``v<N>.json`` copy is renumbered with it), so no version of
      the destination is ever overwritten and a run again reserves no number;
    * **the current version**: set to the source's (as the destination numbers it) when the
      destination serves none, or still serves the one the last run set; a version the
      destination published, rolled back to or pinned since is kept.

    A row of the source that cannot be read (a damaged trace, manifest or setting, an artifact
    that is not a regular file) is skipped and logged with its key, so one bad row does not
    block the migration of the rest; each task's result counts them (``unreadable``), and so
    does a stored vector of the wrong shape, which is not copied (the destination embeds the
    input again when it needs it).
    A Redis store is known by a random id kept in it (``RedisStore.identity``), so a run again
    after a restart of a persistent server copies only what is new, as with a directory.
    Returns per task how much this run copied. Raises ConfigError when ``src`` is a directory
    that does not exist or when ``src`` and ``dst`` are the same store (under any spelling),
    StoreError when either store fails.
    """
    if isinstance(src, (str, os.PathLike)) and not str(src).startswith(REDIS_SCHEMES) \
            and not Path(src).is_dir():
        raise ConfigError(f"no store at {str(src)!r} to migrate from")
    src_store = open_store(src)
    source = store_identity(src_store)
    if not isinstance(dst, Store) and not str(dst).startswith(REDIS_SCHEMES) \
            and source == _dir_identity(dst):  # refused before open_store creates anything
        raise ConfigError(f"{str(src_store.path)!r} and {str(dst)!r} are the same store:"
                          " nothing to migrate")
    dst_store = open_store(dst)
    if store_identity(dst_store) == source:
        raise ConfigError(f"{str(src_store.path)!r} and {str(dst_store.path)!r} are the same"
                          " store: nothing to migrate")
    return {task: _migrate_task(src_store, dst_store, task, _MARK + source)
            for task in src_store.tasks()}


def store_identity(store: Store) -> str:
    """What a store is, whatever spelling opened it, with no secret in it: a directory's real
    path (symbolic links resolved), for Redis the random id kept in the store
    (``RedisStore.identity``). Raises StoreError when the store cannot be reached."""
    identity = getattr(store, "identity", None)
    if callable(identity):
        return str(identity())
    return _dir_identity(store.path)


def _dir_identity(path: str | os.PathLike[str]) -> str:
    # The same text earlier releases recorded, so marks they wrote keep counting.
    return str(Path(path).resolve())


def _migrate_task(src: Store, dst: Store, task: str, mark_name: str) -> dict[str, int]:
    mark: dict[str, Any] = dst.get_setting(task, mark_name) or {}
    last_seq = copied_before = int(mark.get("seq", 0))
    start = dst.count(task)
    unreadable_before = _unreadable(src, task)
    copied = 0
    seqs: dict[int, int] = {}  # source seq -> destination seq
    for trace in src.iter_traces(task, start=last_seq):
        seqs[trace.seq] = _copy_trace(dst, task, trace)
        last_seq = max(last_seq, trace.seq)
        copied += 1
    malformed = _copy_vectors(src, dst, task, seqs)
    counters = src.counters(task)
    already = mark.get("counters", {})
    growth = {name: value - int(already.get(name, 0)) for name, value in counters.items()}
    growth = {name: delta for name, delta in growth.items() if delta}
    if growth:
        dst.add_counters(task, growth)
    numbers, new_versions = _copy_versions(src, dst, task, mark.get("versions", {}))
    def dst_seq(seq: int) -> int:
        # A source trace number (where calibration restarts after a breaker trip) as the
        # destination's: its copy, or one that is never smaller, so no trace logged before the
        # trip may calibrate there. Copies of earlier runs are not mapped: all count as before.
        if seq <= copied_before:
            return start
        return max((d for s, d in seqs.items() if s <= seq), default=start)

    settings_written, written = _copy_settings(src, dst, task, numbers, dst_seq,
                                               mark.get("settings", {}))
    current = _copy_current(src, dst, task, numbers, mark.get("current"))
    dst.set_setting(task, mark_name, {
        "seq": last_seq, "counters": counters, "settings": written, "current": current,
        "versions": {_version_key(m): numbers[int(m["version"])] for m in src.versions(task)
                     if int(m["version"]) in numbers} | mark.get("versions", {})})
    return {"traces": copied, "counters": len(growth), "settings": settings_written,
            "versions": new_versions,
            "unreadable": _unreadable(src, task) - unreadable_before + malformed}


def _unreadable(store: Store, task: str) -> int:
    """Rows of ``task`` this store object's reads skipped so far (stores count them)."""
    return int(getattr(store, "unreadable", {}).get(task, 0))


def _version_key(manifest: Mapping[str, Any]) -> str:
    """A version's identity: a digest of its manifest without its number (which a copy may
    change). A re-certified incumbent, saved with the same arrays, differs by its certificates
    and its time of saving."""
    body = {k: v for k, v in manifest.items() if k != "version"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _copy_versions(src: Store, dst: Store, task: str, copied_before: Mapping[str, int]
                   ) -> tuple[dict[int, int], int]:
    """Copy the source's versions the destination lacks; return ``{source number: destination
    number}`` for every source version the destination holds or once held, and how many this
    run copied."""
    held = {_version_key(m): int(m["version"]) for m in dst.versions(task)}
    numbers: dict[int, int] = {}
    new = 0
    for manifest in src.versions(task):
        version, key = int(manifest["version"]), _version_key(manifest)
        if key in held or key in copied_before:  # the same version, copied or published there
            numbers[version] = held.get(key, copied_before.get(key, version))
            continue
        number = dst.reserve_version(task)
        while number < version:  # a fresh destination keeps the source's numbers
            number = dst.reserve_version(task)
        for suffix in VERSION_ARTIFACTS:
            try:
                data = src.read_artifact(task, f"v{version}{suffix}")
            except FileNotFoundError:
                continue
            except StoreTampered as exc:  # the destination refuses to load it, as the source
                skip_unreadable(_counter(src), task, exc)
                continue
            if suffix == ".json" and number != version:
                data = _renumbered(data, number)
            dst.write_artifact(task, f"v{number}{suffix}", data)
        dst.put_manifest(task, number, manifest)
        numbers[version] = number
        held[key] = number
        new += 1
    return numbers, new


def _renumbered(data: bytes, number: int) -> bytes:
    """The ``v<N>.json`` copy of a version given number ``number`` (loading checks it against
    the manifest, number included); a copy that is not a JSON object is kept as it is."""
    try:
        copy = json.loads(data)
    except ValueError:
        return data
    if not isinstance(copy, dict):
        return data
    return json.dumps(dict(copy, version=number), indent=1).encode()


def _copy_settings(src: Store, dst: Store, task: str, numbers: Mapping[int, int],
                   dst_seq: Callable[[int], int], written_before: Mapping[str, Any]
                   ) -> tuple[int, dict[str, Any]]:
    """Write the source's settings the destination has not set or changed itself; return how
    many were written and the values the destination now holds from the source."""
    theirs = dst.settings(task)
    written: dict[str, Any] = {}
    count = 0
    for name, value in src.settings(task).items():
        if name.startswith(_MARK):
            continue
        value = _translate(name, value, numbers, dst_seq)
        if name in theirs and (name not in written_before or theirs[name] != written_before[name]):
            continue  # the destination's own value, or one it changed since the last run
        written[name] = value
        if name not in theirs or theirs[name] != value:
            dst.set_setting(task, name, value)
            count += 1
    return count, written


def _translate(name: str, value: Any, numbers: Mapping[int, int],
               dst_seq: Callable[[int], int]) -> Any:
    """A setting naming a version or a trace number, with the destination's number of it."""
    if name == names.SETTING_PINNED and isinstance(value, int):
        return numbers.get(value, value)
    if name == names.SETTING_CALIBRATE_AFTER and isinstance(value, int):
        return dst_seq(value)
    if name == names.SETTING_BREAKER and isinstance(value, dict):
        if isinstance(value.get("version"), int):
            value = dict(value, version=numbers.get(value["version"], value["version"]))
        if isinstance(value.get("seq"), int):
            value = dict(value, seq=dst_seq(value["seq"]))
    return value


def _copy_current(src: Store, dst: Store, task: str, numbers: Mapping[int, int],
                  set_before: int | None) -> int | None:
    """Serve the source's current version in the destination unless the destination chose its
    own since the last run; return the version the destination serves from the source (None:
    its own choice stands)."""
    try:
        current = src.current_version(task)
    except StoreTampered as exc:  # the source serves nothing it can name
        skip_unreadable(_counter(src), task, exc)
        current = None
    if current is None or current not in numbers:
        return set_before
    theirs = dst.current_version(task)
    if theirs is not None and theirs != set_before:
        return set_before
    pinned = dst.get_setting(task, names.SETTING_PINNED)
    if pinned is not None and pinned != numbers[current]:  # a pin of the destination holds
        return set_before
    if theirs != numbers[current]:
        dst.set_current(task, numbers[current])
    return numbers[current]


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


def _copy_vectors(src: Store, dst: Store, task: str, seqs: dict[int, int]) -> int:
    """Copy the stored vectors of the copied traces (as bytes: each carries its embedder's tag),
    only those shaped as a stored vector (:func:`well_formed_vector`); return how many were not."""
    pairs = list(seqs.items())
    malformed = 0
    for i in range(0, len(pairs), 1000):
        page = pairs[i:i + 1000]
        raws = src.get_vectors(task, [s for s, _ in page])
        found = {d: raw for (_, d), raw in zip(page, raws) if raw is not None}
        good = {d: raw for d, raw in found.items() if well_formed_vector(raw)}
        malformed += len(found) - len(good)
        if good:
            dst.put_vectors(task, good)
    return malformed


def _counter(store: Store) -> Counter[str]:
    """The store's count of unreadable rows (a throwaway one for a store that keeps none)."""
    found = getattr(store, "unreadable", None)
    return found if isinstance(found, Counter) else Counter()
