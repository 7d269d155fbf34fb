"""Fitting: a certified router on separable data, honest refusals, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError, GateRefused
from tracer_wrap.model.fit import fit_router


def blobs(n: int, k: int = 5, dim: int = 16, noise: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    y = rng.integers(0, k, n)
    X = centres[y] + noise * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.array([f"label{i}" for i in y])


def test_certifies_every_target_of_the_frontier_in_one_fit():
    X, y = blobs(3000)
    router = fit_router(X, y, targets=(0.9, 0.95, 0.99))
    assert [c["target"] for c in router.frontier()] == [0.9, 0.95, 0.99]
    assert all(c["threshold"] is not None for c in router.frontier())
    coverages = [router.certificate_for(t).coverage for t in (0.9, 0.95, 0.99)]
    assert coverages == sorted(coverages, reverse=True)
    assert router.info["n_calibration"] == 1200  # the automatic share: 1200 / 3000 = 0.4


def test_held_out_agreement_meets_the_target():
    X, y = blobs(6000, dim=8, noise=1.0, seed=1)
    router = fit_router(X[:4000], y[:4000], serve_target=0.95)
    decisions = router.route_many(None, X[4000:])
    handled = np.array([d.local for d in decisions])
    agree = np.array([d.label for d in decisions]) == y[4000:]
    assert 0.3 < handled.mean() < 1.0
    assert agree[handled].mean() >= 0.95


def test_labels_unseen_in_training_count_as_disagreement():
    X, y = blobs(2000, k=4)
    y = y.copy()
    y[np.random.default_rng(0).random(len(y)) < 0.2] = "brand_new_intent"
    # Put every new-intent trace in the calibration-eligible set only, so training never sees it.
    eligible = y == "brand_new_intent"
    eligible[: len(y) // 3] = True
    router = fit_router(X, y, calibration_eligible=eligible, calibration_fraction=0.35)
    assert "brand_new_intent" not in router.labels
    cert = router.certificate_for(0.95)
    assert not cert.certified or cert.coverage < 0.85


def test_calibration_only_uses_eligible_traces():
    X, y = blobs(1000)
    eligible = np.zeros(1000, dtype=bool)
    eligible[:100] = True
    router = fit_router(X, y, calibration_eligible=eligible)
    assert router.info["n_calibration"] == 100


def test_too_little_data_refuses():
    X, y = blobs(5)
    with pytest.raises(GateRefused):
        fit_router(X, y)
    X, y = blobs(100, k=1)
    with pytest.raises(GateRefused, match="two labels"):
        fit_router(X, y)


def test_small_data_fits_but_certifies_nothing_strict():
    X, y = blobs(60)
    router = fit_router(X, y, targets=(0.99,), serve_target=0.99)
    assert router.threshold is None
    assert "calibration traces" in router.certificate_for(0.99).reason


@pytest.mark.parametrize("kwargs", [{"serve_target": 0.0}, {"serve_target": 1.2},
                                    {"delta": 0.0}, {"calibration_fraction": 1.0},
                                    {"targets": (0.9, -1.0)}])
def test_bad_settings_are_clear_errors(kwargs):
    X, y = blobs(200)
    with pytest.raises(ConfigError):
        fit_router(X, y, **kwargs)


def test_bad_vectors_are_clear_errors():
    X, y = blobs(200)
    with pytest.raises(ConfigError, match="do not match"):
        fit_router(X[:100], y)
    X[3, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        fit_router(X, y)
