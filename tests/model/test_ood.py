"""The OOD check: nearest prototypes of the label answered, cut from out-of-fold scores."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError, RouterLoadError
from tracer_wrap.model.ood import OODScorer, fit_ood


def clusters(n: int, seed: int = 0, dim: int = 16):
    """Two labels, each made of two tight clusters; a fifth direction no trace comes near."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, 5)))[0].T  # orthonormal rows
    which = rng.integers(0, 4, n)
    X = centres[which] + 0.1 * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.where(which < 2, "a", "b"), centres


def test_an_input_far_from_the_traces_of_the_label_answered_is_an_outlier():
    X, y, centres = clusters(2000)
    ood = fit_ood(X, y, quantile=0.01, per_label=4)
    assert sorted(set(ood.owners.tolist())) == ["a", "b"] and len(ood.prototypes) == 8
    # Out-of-fold, 1% of training traces fall below the cut.
    assert np.mean(ood.scores(X, y.tolist()) < ood.cut) < 0.02
    near_a = centres[0]
    assert not ood.is_outlier(near_a, "a")
    assert ood.is_outlier(near_a, "b")  # the answer's own traces are far: deferred
    assert ood.is_outlier(centres[4], "a") and ood.is_outlier(centres[4], "b")
    assert ood.scores(near_a[None, :], ["never seen"])[0] == -1.0
    # Without the answer, the nearest prototype of any label counts.
    assert not ood.is_outlier(near_a)


def test_bytes_round_trip_and_files_without_owners_still_load(tmp_path):
    X, y, _ = clusters(400)
    ood = fit_ood(X, y)
    again = OODScorer.from_bytes(ood.to_bytes())
    assert np.array_equal(again.prototypes, ood.prototypes) and again.cut == ood.cut
    assert again.owners is not None and again.owners.tolist() == ood.owners.tolist()
    digest = ood.save(tmp_path / "o.npz")
    assert OODScorer.load(tmp_path / "o.npz", expected_sha256=digest).cut == ood.cut
    with pytest.raises(RouterLoadError, match="mismatch"):
        OODScorer.load(tmp_path / "o.npz", expected_sha256="0" * 64)
    legacy = OODScorer(ood.prototypes, ood.cut)
    assert OODScorer.from_bytes(legacy.to_bytes()).owners is None
    with pytest.raises(RouterLoadError):
        OODScorer.from_bytes(b"not an npz")
    with pytest.raises(ConfigError):
        OODScorer(ood.prototypes, 0.1, ["a"])
