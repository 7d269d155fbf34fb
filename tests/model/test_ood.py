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


def named_clusters(n: int, seed: int = 0, dim: int = 24):
    """Four labels ``a``-``d`` with traces around their centres, and the *names* of five
    (``e`` has none): each name is its centre plus a direction shared by every name, as a label's
    name embeds near, not on, its intent's queries."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 6)))[0].T
    centres, shared = basis[:5], basis[5]
    which = rng.integers(0, 4, n)
    X = centres[which] + 0.1 * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    names = {k: (centres[i] + shared) / np.sqrt(2) for i, k in enumerate("abcde")}
    return X.astype(np.float32), np.array(list("abcd"))[which], names, centres


def test_the_name_check_defers_inputs_nearer_an_unseen_labels_name_than_the_answers():
    X, y, names, centres = named_clusters(2000)
    ood = fit_ood(X, y, quantile=0.02, names=names)
    check = ood.names
    assert check is not None and check.labels[check.unseen].tolist() == ["e"]
    # Out of fold, each check defers about a hundredth of the training traces.
    assert np.mean(check.margins(X, y.tolist()) > check.cut) < 0.02
    assert ood.cut == fit_ood(X, y, quantile=0.01).cut  # the budget is shared
    # A query of the unseen intent, answered with a neighbour: deferred, and why is said.
    query = (centres[4] + 0.3 * centres[0]) / np.linalg.norm(centres[4] + 0.3 * centres[0])
    reason = ood.vetoes(query[None, :], ["a"])[0]
    assert reason is not None and "never seen in training" in reason
    assert ood.vetoes(centres[:1], ["a"]) == [None]
    # An answer with no name row is not compared.
    assert check.margins(centres[:1], ["zz"])[0] == -np.inf


def test_no_name_check_when_every_declared_label_has_traces_or_a_trace_has_no_name():
    X, y, names, _ = named_clusters(400)
    assert fit_ood(X, y, names={k: names[k] for k in "abcd"}).names is None
    assert fit_ood(X, y, names={k: names[k] for k in "abe"}).names is None
    assert fit_ood(X, y).names is None


def test_the_name_check_survives_bytes_and_a_malformed_one_is_refused():
    X, y, names, centres = named_clusters(400)
    ood = fit_ood(X, y, names=names)
    assert ood.names is not None
    again = OODScorer.from_bytes(ood.to_bytes())
    assert again.names is not None and again.names.cut == ood.names.cut
    assert again.vetoes(centres, list("aaaaa")) == ood.vetoes(centres, list("aaaaa"))
    with pytest.raises(ConfigError):
        OODScorer(ood.prototypes, ood.cut, ood.owners, type(ood.names)(
            ood.names.names, ood.names.labels, np.zeros(5, bool), ood.names.projection, 0.0))
    broken = OODScorer(ood.prototypes, ood.cut, ood.owners, ood.names)
    broken.names.projection = broken.names.projection[:3]  # type: ignore[union-attr]
    with pytest.raises(RouterLoadError, match="name check"):
        OODScorer.from_bytes(broken.to_bytes())
