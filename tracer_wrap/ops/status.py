"""What the operator sees of a task: one function every view reads (CLI, report, sidecar).

:func:`task_status` gathers a task's traces, served version, certificate, breaker, live agreement
and accounting (:func:`tracer_wrap.accounting.read_summary`: calls, local answers, LLM calls
avoided, money saved) into one JSON-serialisable dict; ``tracer-wrap status --json``, the HTML
report's cards and the sidecar's ``/v1/tasks/{task}/status`` all show this dict, so they agree.
"""

from __future__ import annotations

import os
from typing import Any

from .. import names
from ..accounting import Price, read_summary, summary
from ..errors import RouterLoadError, StoreTampered
from ..store import Origin, Store, open_store
from ..versions import certified_coverage, load_ood, load_version, pinned_version

__all__ = ["frontier_rows", "refusal", "savings", "task_status"]


def savings(store: Store | str | os.PathLike[str] | None, task: str) -> dict[str, Any]:
    """Calls, local answers, LLM calls avoided, tokens, cost and money saved of ``task``, summed
    over every process and path (see :mod:`tracer_wrap.accounting`). The money fields are None
    until the task has a price. Raises StoreError when the store cannot be opened."""
    return read_summary(open_store(store), task)


def refusal(store: Store, task: str, version: int | None) -> str | None:
    """Why ``version`` of ``task`` cannot be served (one line), or None when it loads: the
    engine's own checks (:func:`~tracer_wrap.versions.load_version`, hashes and the manifest
    copy, and :func:`~tracer_wrap.versions.load_ood`), so a version the engine refuses, and
    answers nothing with, is never shown as serving. Raises StoreError when the store cannot be
    read."""
    if version is None:
        return None
    try:
        router = load_version(store, task, version)
        load_ood(store, task, version, dim=router.dim)
    except RouterLoadError as exc:
        return " ".join(str(exc).split())
    return None


def task_status(store: Store, task: str) -> dict[str, Any]:
    """Everything ``status`` shows about one task, as a JSON-serialisable dict.

    Live agreement is the share of audit samples (traces of origin ``audit`` whose router label
    was recorded) where the router's label equals the LLM's. ``usage`` is the accounting summary;
    ``frontier`` gives, for each certified target of the served version, its coverage and the
    money it would save at the task's price. ``refused`` says why the current version cannot be
    served (:func:`refusal`; every call then goes to the LLM), None when it loads. A damaged
    store row does not stop it: ``unreadable`` counts the rows skipped while reading (each is
    logged with its key), and a current-version pointer or manifest that cannot be read shows
    as ``refused``. Raises StoreError when the store cannot be read.
    """
    skipped_before = _unreadable(store, task)
    traces = store.traces(task)
    valid = sum(t.valid for t in traces)
    audits = [t for t in traces if t.origin == Origin.AUDIT.value and t.valid
              and t.router_label is not None]
    agree = sum(t.router_label == t.teacher for t in audits)
    refused: str | None = None
    manifest = None
    try:
        version = store.current_version(task)
    except StoreTampered as exc:
        version, refused = None, f"the current version cannot be read: {exc}"
    if version is not None:
        refused = refusal(store, task, version)
        try:
            manifest = store.manifest(task, version)
        except StoreTampered:
            manifest = None  # refusal() says why
    target = coverage = None
    if manifest is not None:
        target = float(manifest.get("target", 0.95))
        coverage = certified_coverage(manifest, target)
    usage = read_summary(store, task)
    settings = store.settings(task)
    return {
        "task": task,
        "traces": len(traces),
        "calls_logged": sum(t.count for t in traces),
        "valid": valid,
        "invalid": len(traces) - valid,
        "current_version": version,
        "pinned_version": _pinned(store, task),
        "versions": len(store.versions(task)),
        "embedder": manifest.get("embedder") if manifest else None,
        "target": target,
        "refused": " ".join(refused.split()) if refused else None,
        "certified": bool(coverage),
        "certified_coverage": coverage,
        "routing": settings.get(names.SETTING_ROUTING),
        "audit_samples": len(audits),
        "live_agreement": agree / len(audits) if audits else None,
        "breaker": settings.get(names.SETTING_BREAKER),
        "usage": usage,
        "frontier": frontier_rows(manifest, usage) if manifest else [],
        "unreadable": _unreadable(store, task) - skipped_before,
    }


def _unreadable(store: Store, task: str) -> int:
    """Rows of ``task`` this store object's reads skipped so far (stores count them)."""
    return int(getattr(store, "unreadable", {}).get(task, 0))


def _pinned(store: Store, task: str) -> int | None:
    try:
        return pinned_version(store, task)
    except (StoreTampered, ValueError, TypeError):  # a damaged pin: shown as none
        return None


def frontier_rows(manifest: dict[str, Any], usage: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per fitted target of a version: certified threshold, coverage, agreement, and the
    money saved per 1,000 calls at that coverage (None without a price)."""
    per_call = usage.get("cost_per_llm_call")
    if per_call is None and usage.get("price") is not None:
        per_call = summary({}, Price(**usage["price"]))["cost_per_llm_call"]
    rows = []
    for cert in sorted(manifest.get("certificates", []), key=lambda c: c["target"]):
        certified = cert["threshold"] is not None
        rows.append({
            "target": cert["target"], "certified": certified, "threshold": cert["threshold"],
            "coverage": cert["coverage"] if certified else 0.0, "agreement": cert["agreement"],
            "saved_per_1000_calls": (None if per_call is None
                                     else 1000 * per_call * (cert["coverage"] if certified else 0)),
            "reason": cert.get("reason", ""),
        })
    return rows
