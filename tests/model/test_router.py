"""Routers: persisted without pickle, hash-checked, refused when corrupted."""

from __future__ import annotations

import hashlib
import io
import json

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


def test_per_label_thresholds_decide_label_by_label():
    cert = Certificate(0.9, 0.6, 0.5, 0.95, 200, 0.01, guarantee="per_label",
                       label_thresholds=(0.6, None, 0.6))
    router = Router(np.eye(3, 4, dtype=np.float32) * 8, np.zeros(3), ["a", "b", "c"],
                    {0.9: cert}, target=0.9)
    a, b = router.route_many(None, np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    assert a.local and a.threshold == 0.6
    assert not b.local and b.threshold is None and "'b' is not certified" in b.reason
    assert router.threshold == 0.6
    np.testing.assert_array_equal(router.label_thresholds(), [0.6, np.inf, 0.6])


def fused_router() -> tuple[Router, list[str], np.ndarray]:
    from test_fit import keyword_task

    from tracer_wrap.model.fit import fit_router

    texts, X, y = keyword_task(600)
    return fit_router(X, y, texts=texts, targets=(0.8, 0.9)), texts, X


def test_a_fused_router_round_trips_with_both_surrogates(tmp_path):
    router, texts, X = fused_router()
    manifest = router.save(tmp_path / "v2.npz")
    loaded = Router.load(tmp_path / "v2.npz", expected_sha256=manifest["sha256"])
    assert loaded.has_text_model and manifest["surrogate"] == "fused"
    assert loaded.frontier() == router.frontier()
    assert loaded.frontier(text=False) == router.frontier(text=False)
    for batch in (texts[:50], None):
        assert loaded.route_many(batch, X[:50]) == router.route_many(batch, X[:50])
    with np.load(tmp_path / "v2.npz", allow_pickle=False) as arrays:
        assert arrays["text_ngram_weights"].dtype == np.float16
    assert json.loads((tmp_path / "v2.json").read_text())["features"]["kind"] == "hashed-tfidf"


def test_a_router_of_the_earlier_format_still_loads(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, weights=np.eye(3, 4, dtype=np.float32) * 8, bias=np.zeros(3, np.float32))
    data = buf.getvalue()
    manifest = {"format": "tracer_wrap.linear-softmax.v1", "labels": ["a", "b", "c"],
                "target": 0.9, "sha256": hashlib.sha256(data).hexdigest(), "delta": 0.05,
                "certificates": [{"target": 0.9, "threshold": 0.6, "coverage": 0.8,
                                  "agreement": 0.93, "n_accepted": 400, "p_value": 0.01,
                                  "reason": ""}]}
    router = Router.from_bytes(data, manifest)
    assert not router.has_text_model and router.threshold == 0.6
    assert router.route("any text", np.array([1, 0, 0, 0], dtype=np.float32)).local
    assert router.info["delta"] == 0.05


def test_fused_arrays_with_pickles_are_refused(tmp_path):
    router, _, _ = fused_router()
    path = tmp_path / "v2.npz"
    router.save(path)
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["text_bias"] = np.array([object()], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(RouterLoadError):
        Router.load(path)


def trust_router() -> tuple[Router, np.ndarray]:
    from tracer_wrap.model.acceptor import Acceptor
    from tracer_wrap.model.trust import Prototypes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    certs = {0.9: Certificate(0.9, 0.5, 0.8, 0.93, 400, 0.01)}
    acceptor = Acceptor(np.array([0.2, -0.1, 0.0]), 1.0, 8.0)
    prototypes = Prototypes(np.eye(3, 4, dtype=np.float32), np.array([2, 0, 1]), 3)
    return Router(np.eye(3, 4, dtype=np.float32) * 8, np.zeros(3), ["a", "b", "c"], certs,
                  target=0.9, acceptor=acceptor, prototypes=prototypes), x


def test_a_trust_router_scores_margins_and_round_trips_in_the_newer_format():
    router, x = trust_router()
    top, scores = router.scores(x)
    assert router.prototypes is not None
    margins = router.prototypes.margins(x, top)
    shifted = router.logits(None, x) - router.logits(None, x).max(axis=1, keepdims=True)
    prob = 1 / np.exp(shifted).sum(axis=1)
    assert np.allclose(scores, router._embedding.acceptor.score(top, prob, margins))
    assert not np.allclose(scores, router._embedding.acceptor.score(top, prob, 0 * margins))
    data, manifest = router.to_bytes()
    assert manifest["format"] == "tracer_wrap.fused-softmax.v3"
    assert manifest["acceptor"]["trust_slope"] == 8.0
    again = Router.from_bytes(data, manifest)
    assert [d.local for d in again.route_many(None, x)] == [d.local for d in
                                                           router.route_many(None, x)]
    assert np.allclose(again.scores(x)[1], scores)
    # A version that knows only the v2 format must refuse it rather than score without margins.
    assert make_router().manifest()["format"] == "tracer_wrap.fused-softmax.v2"


def test_a_trust_acceptor_without_prototypes_is_refused():
    router, _ = trust_router()
    data, manifest = router.to_bytes()
    arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
    del arrays["trust_prototypes"], arrays["trust_owners"]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    stripped = buf.getvalue()
    with pytest.raises(RouterLoadError):
        Router.from_bytes(stripped, dict(manifest, sha256=hashlib.sha256(stripped).hexdigest()))
    with pytest.raises(ConfigError):
        Router(router.weights, router.bias, router.labels, router.certificates, target=0.9,
               acceptor=router._embedding.acceptor)
