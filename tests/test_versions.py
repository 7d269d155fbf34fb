"""Versions: keep N with manifests, rollback, pin, OOD prototypes saved and hash-checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracer_wrap import ConfigError, RouterLoadError, TraceStore
from tracer_wrap.model.fit import fit_router
from tracer_wrap.model.ood import OODScorer, fit_ood
from tracer_wrap.versions import (
    load_ood,
    load_version,
    pin,
    pinned_version,
    publish,
    rollback,
    unpin,
)

RNG = np.random.default_rng(1)
CENTERS = RNG.standard_normal((3, 8))


def data(n: int, noise: float = 0.2) -> tuple[np.ndarray, list[str]]:
    k = np.arange(n) % 3
    X = CENTERS[k] + noise * RNG.standard_normal((n, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, [f"l{i}" for i in k]


def router(n: int = 400, noise: float = 0.2):  # type: ignore[no-untyped-def]
    X, y = data(n, noise)
    fitted = fit_router(X, y, targets=(0.9,), serve_target=0.9)
    fitted.info["embedder"] = "test"  # as a refit records it: a version without one never loads
    return fitted, fit_ood(X, y)


def test_publish_keeps_last_n_and_current(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    for _ in range(5):
        publish(store, "t", router()[0], force=True, keep=3)
    assert [m["version"] for m in store.versions("t")] == [3, 4, 5]
    assert store.current_version("t") == 5
    assert not (store.router_dir("t") / "v1.npz").exists()


def test_worse_refit_is_kept_but_not_served_unless_forced(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    assert publish(store, "t", router()[0]) == 1
    weak, _ = router(60)  # too few calibration traces: certifies nothing
    assert publish(store, "t", weak) is None and store.current_version("t") == 1
    assert publish(store, "t", weak, force=True) == 3 and store.current_version("t") == 3


def test_a_loaded_version_published_again_loads(tmp_path: Path) -> None:
    # The publish contest's incumbent wins: the router loaded from the store, whose info holds
    # the record of its own publication, becomes a new version (its copy must match the store).
    store = TraceStore(tmp_path)
    fitted, ood = router()
    assert publish(store, "t", fitted, ood=ood, extra={"refit_pid": 1}) == 1
    incumbent = load_version(store, "t", 1)
    assert incumbent.info["version"] == 1 and incumbent.info["refit_pid"] == 1
    assert publish(store, "t", incumbent, force=True, extra={"refit_pid": 2}) == 2
    again = load_version(store, "t", 2)
    assert again.info["version"] == 2 and again.info["refit_pid"] == 2
    assert "ood" not in store.manifest("t", 2) and load_ood(store, "t", 2) is None


def test_rollback_and_pin(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    for _ in range(3):
        publish(store, "t", router()[0], force=True)
    rollback(store, "t", 1)
    assert store.current_version("t") == 1
    pin(store, "t", 2)
    assert pinned_version(store, "t") == 2 and store.current_version("t") == 2
    assert publish(store, "t", router()[0], force=True) is None  # pinned wins
    with pytest.raises(ConfigError, match="pinned"):
        rollback(store, "t", 1)
    unpin(store, "t")
    rollback(store, "t", 4)
    assert store.current_version("t") == 4
    with pytest.raises(ConfigError, match="not kept"):
        rollback(store, "t", 99)


def test_ood_saved_with_version_and_hash_checked(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    r, ood = router()
    version = publish(store, "t", r, ood=ood)
    assert version == 1
    loaded = load_ood(store, "t", 1)
    assert loaded is not None and np.allclose(loaded.prototypes, ood.prototypes)
    assert store.manifest("t", 1)["ood"]["cut"] == pytest.approx(ood.cut)
    path = store.router_dir("t") / "v1.ood.npz"
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")
    with pytest.raises(RouterLoadError):
        load_ood(store, "t", 1)
    with pytest.raises(RouterLoadError):
        rollback(store, "t", 1)
    assert load_version(store, "t", 1).labels == ["l0", "l1", "l2"]


def test_ood_cut_defers_far_inputs_only() -> None:
    X, y = data(600)
    ood = fit_ood(X, y, quantile=0.01)
    assert (ood.scores(X) < ood.cut).mean() < 0.03
    far = RNG.standard_normal((200, 8))
    far -= far @ CENTERS.T @ np.linalg.pinv(CENTERS.T)  # orthogonal to every class centre
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    assert (ood.scores(far) < ood.cut).all()
    with pytest.raises(ConfigError):
        OODScorer(np.zeros((0, 8)), 0.5)
