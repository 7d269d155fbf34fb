"""Publishing, loading and choosing router versions of a task in a store.

Every refit is saved as a numbered version (router ``.npz`` + ``.json`` manifest, and the OOD
prototypes ``.ood.npz`` when fitted) with its manifest in the store. The store's *current* version
is what every process serves. **The publish rule**: a refit is a contest between the version
served now (the incumbent) and the new fit (the candidate), decided by
:func:`~tracer_wrap.model.fit.fit_router` before :func:`publish` runs: both are certified on the
same calibration traces, fresh to both (the incumbent never saw them), each at ``delta / 2``, and
the one that certifies more coverage at the served target is published, the incumbent with its
new certificates (the candidate on a tie). By the union bound both certificates hold together with
probability at least ``1 - delta``, so the version served keeps its claim at ``delta`` although it
was chosen by what it certified; keeping whichever version certified the most on *different*
draws would instead keep the luckiest draw, and always replacing would publish regressions. With
no incumbent (none served, it tripped the drift breaker, it was fitted with another embedder or
before versions recorded their traces), or when fewer than half of the calibration traces are
fresh to the incumbent, or too few for the gate to test it at ``delta / 2`` at all (both known
before any label is read), the candidate is certified at ``delta`` and published when it
certifies the served target.
:func:`publish` then makes the version current unless it certifies nothing while the current
one certifies the served target, unless the current one tripped the drift breaker (it is known to
be wrong on live traffic) or the caller forces it. A *pinned* version stays current whatever is
published until :func:`unpin`. Only the newest ``keep`` versions are kept, plus the current and
the pinned one.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from . import names
from ._log import logger
from .errors import ConfigError, RouterLoadError, StoreTampered
from .model.ood import OODScorer
from .model.router import Router

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "DEFAULT_KEEP",
    "certified_coverage",
    "load_ood",
    "load_version",
    "pin",
    "pinned_version",
    "publish",
    "rollback",
    "unpin",
]

#: Versions kept per task by default (besides the current and the pinned one).
DEFAULT_KEEP = 10


def publish(store: Store, task: str, router: Router, *, ood: OODScorer | None = None,
            force: bool = False, keep: int = DEFAULT_KEEP,
            extra: dict[str, Any] | None = None) -> int | None:
    """Save ``router`` (and ``ood``) as a new version of ``task``; make it current by the
    publish rule (module docstring): when it certifies its target, when the current version
    certifies nothing at the target it serves (or there is none), or when ``force`` (the caller
    passes it after a drift-breaker trip); never while another version is pinned.

    Returns the new version number if it became current, else None (its files and manifest are
    kept either way, up to ``keep`` versions). ``extra`` is merged into the manifest. Making a
    version current is one atomic store write; every process picks it up within its
    ``refresh_seconds``. Raises StoreError when the store refuses.
    """
    version = store.reserve_version(task)
    data, manifest = router.to_bytes()
    store.write_artifact(task, f"v{version}.npz", data)
    # Its size bounds what loading it reads (a file replaced by a device never ends).
    manifest["bytes"] = len(data)
    manifest.pop("ood", None)  # only this publication's OOD file may be named
    if ood is not None:
        ood_data = ood.to_bytes()
        store.write_artifact(task, f"v{version}.ood.npz", ood_data)
        manifest["ood"] = {"sha256": hashlib.sha256(ood_data).hexdigest(),
                           "bytes": len(ood_data), "cut": ood.cut,
                           "prototypes": len(ood.prototypes),
                           "unseen_labels": [] if ood.names is None else
                           ood.names.labels[ood.names.unseen].tolist()}
    manifest.update(extra or {}, version=version)
    # The copy beside the arrays is the manifest exactly as recorded: a router loaded from the
    # store (a re-certified incumbent that won the publish contest) carries the record of its
    # own publication in its info, which this one's replaces in both.
    store.write_artifact(task, f"v{version}.json", json.dumps(manifest, indent=1).encode())
    store.put_manifest(task, version, manifest)
    pinned = pinned_version(store, task)
    became_current: int | None = version
    if pinned is not None:
        logger.info("tracer_wrap kept pinned version %s of %r; version %s is saved", pinned, task,
                    version)
        became_current = None
    elif router.threshold is None and not force and _serving_certified(store, task):
        logger.info("tracer_wrap kept the current version of %r: version %s certifies nothing at"
                    " target %g", task, version, router.target)
        became_current = None
    if became_current is not None:
        store.set_current(task, version)
    _prune(store, task, keep)
    return became_current


def _serving_certified(store: Store, task: str) -> bool:
    """Whether the current version of ``task`` certifies the target it serves (not when its
    pointer or manifest cannot be read: a new version then replaces it)."""
    try:
        current = store.current_version(task)
        manifest = store.manifest(task, current) if current is not None else None
    except StoreTampered as exc:
        logger.warning("tracer_wrap: the current version of %r cannot be read (%s); the new"
                       " version replaces it", task, exc)
        return False
    return manifest is not None and certified_coverage(
        manifest, float(manifest.get("target", 1.0))) > 0


def certified_coverage(manifest: dict[str, Any], target: float) -> float:
    """Calibration coverage a manifest certifies at ``target`` (0 when it certifies nothing)."""
    return max((c["coverage"] for c in manifest.get("certificates", [])
                if c["target"] >= target and c["threshold"] is not None), default=0.0)


def load_version(store: Store, task: str, version: int) -> Router:
    """Load a published version: its labels, thresholds and embedder from the manifest the store
    recorded at publish time, its arrays from the artifact file, whose SHA-256 must match that
    manifest. Whoever can write the artifact files alone (a shared directory) cannot change an
    answer: the ``v<N>.json`` copy beside the arrays (for people and for copies of the files)
    decides nothing, and one that says otherwise than the store's manifest (edited labels,
    thresholds, embedder) is refused as tampering. A manifest that records no embedder is
    refused too (any embedder of the same dimension would pass for it). The artifact is read
    bounded by the size the manifest records (versions published before sizes were recorded:
    by :data:`~tracer_wrap.store.base.MAX_ARTIFACT_BYTES`), never blocking. Raises
    RouterLoadError when anything is missing, unreadable or does not match."""
    manifest = _manifest(store, task, version)
    source = f"{task}/v{version}.npz"
    if not manifest.get("sha256"):
        raise RouterLoadError(f"{source}: the store recorded no hash for it, refusing to load")
    if not isinstance(manifest.get("embedder"), str) or not manifest["embedder"]:
        raise RouterLoadError(f"{source}: the store recorded no embedder for it, refusing to"
                              " load")
    try:
        data = store.read_artifact(task, f"v{version}.npz", max_bytes=_size(manifest))
    except Exception as exc:  # missing artifact, unreadable store, not a regular file
        raise RouterLoadError(f"cannot load router {source!r}: {exc}") from exc
    _check_manifest_copy(store, task, version, manifest)
    return Router.from_bytes(data, manifest, expected_sha256=manifest["sha256"], source=source)


def _check_manifest_copy(store: Store, task: str, version: int, manifest: dict[str, Any]
                         ) -> None:
    """RouterLoadError when the ``v<N>.json`` beside the arrays differs from the manifest the
    store recorded (it holds a subset of its keys, written at publish time); a missing copy is
    fine."""
    source = f"{task}/v{version}.json"
    try:
        raw = store.read_artifact(task, f"v{version}.json")
    except FileNotFoundError:
        return
    except Exception as exc:
        raise RouterLoadError(f"cannot read {source!r}: {exc}") from exc
    try:
        copy = json.loads(raw)
    except ValueError:
        copy = None
    if not isinstance(copy, dict) or any(manifest.get(k, _MISSING) != v for k, v in copy.items()):
        changed = sorted(k for k, v in copy.items() if manifest.get(k, _MISSING) != v) \
            if isinstance(copy, dict) else ["(not a JSON object)"]
        raise RouterLoadError(f"{source} differs from the manifest the store recorded"
                              f" ({', '.join(changed)}): edited after publishing, refusing to"
                              " load")


_MISSING = object()


def _manifest(store: Store, task: str, version: int) -> dict[str, Any]:
    """The store's manifest of ``version``; RouterLoadError when there is none or it cannot be
    read."""
    try:
        manifest = store.manifest(task, version)
    except StoreTampered as exc:
        raise RouterLoadError(f"version {version} of {task!r} cannot be read: {exc}") from None
    if manifest is None:
        raise RouterLoadError(f"version {version} of {task!r} is not in the store")
    return manifest


def _size(record: dict[str, Any]) -> int | None:
    """The size in bytes a manifest records for its file (None: it records none)."""
    size = record.get("bytes")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def load_ood(store: Store, task: str, version: int, *, dim: int | None = None
             ) -> OODScorer | None:
    """The OOD prototypes of a version (None if it has none), hash-checked like the router: a
    manifest that names OOD prototypes without their hash is refused. The prototypes must be
    finite, and of ``dim`` components when given (the router's). Raises RouterLoadError
    otherwise."""
    manifest = _manifest(store, task, version)
    info = manifest.get("ood")
    if not info:
        return None
    source = f"{task}/v{version}.ood.npz"
    expected = info.get("sha256") if isinstance(info, dict) else None
    if not isinstance(expected, str) or not expected:
        raise RouterLoadError(f"{source}: the store recorded no hash for it, refusing to load")
    try:
        data = store.read_artifact(task, f"v{version}.ood.npz", max_bytes=_size(info))
    except Exception as exc:
        raise RouterLoadError(f"cannot load OOD prototypes {source!r}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise RouterLoadError(f"{source}: content hash mismatch, refusing to load")
    ood = OODScorer.from_bytes(data, source=source)
    prototypes = np.asarray(ood.prototypes)
    if prototypes.ndim != 2 or not len(prototypes) or not np.isfinite(prototypes).all() \
            or not math.isfinite(ood.cut) or (dim is not None and prototypes.shape[1] != dim):
        raise RouterLoadError(f"{source}: prototypes of shape {prototypes.shape} (finite:"
                              f" {bool(np.isfinite(prototypes).all())}) do not fit a router of"
                              f" {dim} dimensions, refusing to load")
    return ood


def rollback(store: Store, task: str, version: int) -> None:
    """Serve ``version`` again (every process picks it up within its ``refresh_seconds``).

    The version must still be kept and must load (hash-checked). A later refit that wins the
    publish rule's contest replaces it; :func:`pin` it to stop that. Raises
    ConfigError for an unknown version, RouterLoadError for one that no longer loads.
    """
    if store.manifest(task, version) is None:
        raise ConfigError(f"version {version} of {task!r} is not kept; kept:"
                          f" {[m['version'] for m in store.versions(task)]}")
    router = load_version(store, task, version)
    load_ood(store, task, version, dim=router.dim)
    pinned = pinned_version(store, task)
    if pinned is not None and pinned != version:
        raise ConfigError(f"version {pinned} of {task!r} is pinned; unpin it first")
    store.set_current(task, version)
    logger.info("tracer_wrap rolled %r back to version %s", task, version)


def pin(store: Store, task: str, version: int) -> None:
    """Serve ``version`` and keep serving it whatever refits publish, until :func:`unpin`."""
    store.set_setting(task, names.SETTING_PINNED, None)
    rollback(store, task, version)
    store.set_setting(task, names.SETTING_PINNED, int(version))


def unpin(store: Store, task: str) -> None:
    """Let refits replace the current version again."""
    store.set_setting(task, names.SETTING_PINNED, None)


def pinned_version(store: Store, task: str) -> int | None:
    value = store.get_setting(task, names.SETTING_PINNED)
    return None if value is None else int(value)


def _prune(store: Store, task: str, keep: int) -> None:
    """Forget versions beyond the newest ``keep``, never the current or the pinned one."""
    if keep < 1:
        raise ConfigError(f"keep must be at least 1, got {keep!r}")
    protected = {store.current_version(task), pinned_version(store, task)}
    kept = [m["version"] for m in store.versions(task)]
    for version in kept[:-keep]:
        if version not in protected:
            try:
                store.forget_version(task, version)
            except ConfigError:  # became current in another process meanwhile
                continue

