"""Routers: persisted without pickle, hash-checked, refused when corrupted."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError, RouterLoadError
from tracer_wrap.model.gate import Certificate
from tracer_wrap.model.router import Router


def make_router() -> Router:
    weights = np.eye(3, 4, dtype=np.float32) * 8
    certs = {0.9: Certificate(0.9, 0.6, 0.8, 0.93, 400, 0.01),
             0.99: Certificate(0.99, None, 0.0, None, 0, None, "too few")}
    return Router(weights, np.zeros(3), ["a", "b", "c"], certs, target=0.9)


def test_routes_single_and_batch_identically():
    router = make_router()
    x = np.array([[1, 0, 0, 0], [0.2, 0.25, 0.2, 0.1]], dtype=np.float32)
    single = [router.route(None, v) for v in x]
    batch = router.route_many(None, x)
    assert [d.label for d in single] == [d.label for d in batch] == ["a", "b"]
    assert [d.local for d in single] == [d.local for d in batch] == [True, False]
    assert single[0].score == pytest.approx(batch[0].score)


def test_an_uncertified_target_defers_everything_and_says_why():
    router = make_router()
    router.target = 0.99
    decision = router.route(None, np.array([1, 0, 0, 0], dtype=np.float32))
    assert not decision.local and decision.reason == "too few"
    with pytest.raises(ConfigError):
        router.target = 1.5


def test_save_and_load_round_trip(tmp_path):
    router = make_router()
    manifest = router.save(tmp_path / "v1.npz")
    loaded = Router.load(tmp_path / "v1.npz", expected_sha256=manifest["sha256"])
    assert loaded.labels == router.labels and loaded.threshold == 0.6
    np.testing.assert_array_equal(loaded.weights, router.weights)
    assert loaded.frontier() == router.frontier()


@pytest.mark.parametrize("damage", ["truncate", "edit", "manifest", "missing"])
def test_damaged_files_are_refused(tmp_path, damage):
    path = tmp_path / "v1.npz"
    manifest = make_router().save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "edit":
        path.write_bytes(data[:-10] + bytes(10))
    elif damage == "manifest":
        path.with_suffix(".json").write_text("{not json")
    else:
        path.unlink()
    with pytest.raises(RouterLoadError):
        Router.load(path, expected_sha256=manifest["sha256"])


def test_a_file_swapped_with_its_manifest_is_refused_by_the_store_hash(tmp_path):
    # An attacker who rewrites both the arrays and the manifest file still fails the hash the
    # store recorded when the version was published.
    make_router().save(tmp_path / "v1.npz")
    other = make_router()
    other.weights[:] = 0
    other.save(tmp_path / "v2.npz")
    recorded = Router.load(tmp_path / "v1.npz").info["sha256"]
    with pytest.raises(RouterLoadError, match="hash"):
        Router.load(tmp_path / "v2.npz", expected_sha256=recorded)


def test_pickled_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "v1.npz"
    make_router().save(path)
    np.savez(path, weights=np.array([object()], dtype=object), bias=np.zeros(3))
    with pytest.raises(RouterLoadError):
        Router.load(path)  # no expected hash given: the manifest hash and allow_pickle=False hold
