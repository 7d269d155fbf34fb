"""Copy a whole store into another: ``tracer-wrap migrate --from PATH --to redis://...``."""

from __future__ import annotations

from typing import Any

import typer

from . import VERSION_ARTIFACTS, Store, Trace, open_store

__all__ = ["migrate", "migrate_command"]


def migrate(src: Store | str, dst: Store | str) -> dict[str, dict[str, int]]:
    """Copy every task's traces, counters, settings and versions from ``src`` into ``dst``.

    Traces keep their input, labels tally, count, origin, timestamps and metadata (each is
    replayed as appends, so merging into a store that already holds the input adds to its
    count). Versions keep their numbers, artifacts, manifests and the current pointer; ``dst``'s
    next reserved version comes after the copied ones. Returns per task how many traces, settings
    and versions were copied. Raises StoreError when either store fails.
    """
    src_store, dst_store = open_store(src), open_store(dst)
    summary: dict[str, dict[str, int]] = {}
    for task in src_store.tasks():
        n = 0
        for trace in src_store.iter_traces(task):
            _copy_trace(dst_store, task, trace)
            n += 1
        for name, value in src_store.counters(task).items():
            dst_store.incr(task, name, value)
        settings = src_store.settings(task)
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
        summary[task] = {"traces": n, "settings": len(settings), "versions": len(manifests)}
    return summary


def _copy_trace(dst: Store, task: str, trace: Trace) -> None:
    common: dict[str, Any] = {"origin": trace.origin, "exchangeable": trace.exchangeable,
                              "router_label": trace.router_label, "meta": trace.meta,
                              "ts": trace.ts}
    if not trace.labels:  # never had a valid answer: replay the raw output ``count`` times
        for _ in range(trace.count):
            dst.append(task, trace.input, trace.teacher, valid=False, **common)
        return
    invalid = trace.count - sum(trace.labels.values())
    for label, times in trace.labels.items():
        for _ in range(times):
            dst.append(task, trace.input, label, **common)
    for _ in range(max(0, invalid)):
        dst.append(task, trace.input, trace.teacher, valid=False, **common)


def migrate_command(
    from_: str = typer.Option(..., "--from", help="Source store: a directory or redis:// URL."),
    to: str = typer.Option(..., "--to", help="Destination store: a directory or redis:// URL."),
) -> None:
    """Copy traces, counters, settings and router versions from one store into another."""
    for task, counts in migrate(from_, to).items():
        typer.echo(f"{task}: {counts['traces']} traces, {counts['settings']} settings,"
                   f" {counts['versions']} versions")
