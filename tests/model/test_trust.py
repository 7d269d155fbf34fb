"""Trust margins: nearest prototype of the answered label minus nearest of any other."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError
from tracer_wrap.model.trust import Prototypes


def test_margins_match_a_brute_force_over_every_prototype():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(23, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    owners = rng.integers(0, 5, 23)
    owners[owners == 3] = 4  # label 3 has no prototype: it is never near
    prototypes = Prototypes(rows, owners, 5)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    similarity = x @ rows.T
    expected = []
    for s, k in zip(similarity, labels):
        own = s[owners == k].max() if (owners == k).any() else -1.0
        expected.append(own - s[owners != k].max())
    assert np.allclose(prototypes.margins(x, labels), expected, atol=1e-6)
    assert prototypes.margins(x[:0], labels[:0]).shape == (0,)


def test_fit_keeps_per_label_prototypes_and_places_inputs_with_their_label():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16))
    y = rng.integers(0, 3, 600)
    X = centres[y] + 0.3 * rng.normal(size=(600, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    prototypes = Prototypes.fit(X, y, 4, per_label=5)
    assert np.bincount(prototypes.owners, minlength=4).tolist() == [5, 5, 5, 0]
    assert np.allclose(np.linalg.norm(prototypes.rows, axis=1), 1.0, atol=1e-5)
    right, wrong = prototypes.margins(X, y), prototypes.margins(X, (y + 1) % 3)
    assert (right > 0).mean() > 0.95 and (wrong < 0).mean() > 0.95


def test_malformed_prototypes_are_clear_errors():
    rows = np.eye(3, 4, dtype=np.float32)
    with pytest.raises(ConfigError):
        Prototypes(rows, np.array([0, 1]), 2)
    with pytest.raises(ConfigError):
        Prototypes(rows, np.array([0, 1, 2]), 2)
    with pytest.raises(ConfigError):
        Prototypes(rows, np.array([0.0, 1.0, 1.0]), 2)
    with pytest.raises(ConfigError):
        Prototypes.fit(rows, np.array([0, 1]), 2)
