"""Publishing, loading and choosing router versions of a task in a store."""

from __future__ import annotations

from ._log import logger
from .errors import RouterLoadError
from .router import Router
from .store import TraceStore

__all__ = ["load_version", "publish"]


def publish(store: TraceStore, task: str, router: Router) -> int | None:
    """Save ``router`` as a new version of ``task``; serve it if it is at least as good.

    The new version becomes current (every process picks it up on its next call) when it
    certifies at least the coverage of the current version at the served target. Returns the new
    version number if it became current, else None (the files and manifest are kept either way).
    """
    version = store.reserve_version(task)
    manifest = router.save(store.router_dir(task) / f"v{version}.npz")
    store.put_manifest(task, version, manifest)
    current = store.current_version(task)
    new_coverage = router.certificate_for(router.target).coverage
    if current is not None:
        old_coverage = certified_coverage(store.manifest(task, current) or {}, router.target)
        if new_coverage < old_coverage:
            logger.info("tracer_wrap kept version %s of %r: the refit certifies %.3f coverage,"
                        " less than %.3f", current, task, new_coverage, old_coverage)
            return None
    store.set_current(task, version)
    return version


def certified_coverage(manifest: dict, target: float) -> float:
    """Calibration coverage a manifest certifies at ``target`` (0 when it certifies nothing)."""
    return max((c["coverage"] for c in manifest.get("certificates", [])
                if c["target"] >= target and c["threshold"] is not None), default=0.0)


def load_version(store: TraceStore, task: str, version: int) -> Router:
    """Load a published version, checking its file against the hash the store recorded."""
    manifest = store.manifest(task, version)
    if manifest is None:
        raise RouterLoadError(f"version {version} of {task!r} is not in the store")
    return Router.load(store.router_dir(task) / f"v{version}.npz",
                       expected_sha256=manifest.get("sha256"))
