"""The acceptor's per-label logistic regression solves scikit-learn's objective."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tracer_wrap.errors import ConfigError
from tracer_wrap.model.acceptor import Acceptor, _logit, _penalised_logistic


def test_newton_fit_matches_scikit_learn_with_an_absent_label():
    rng = np.random.default_rng(1)
    n, k = 3000, 12
    labels = rng.integers(0, k, n)
    labels[labels == 5] = 6  # label 5 is never answered: its effect must stay 0
    prob = rng.beta(5, 1, n)
    base = rng.uniform(-1, 2, k)
    agree = rng.random(n) < 1 / (1 + np.exp(-(base[labels] + 1.3 * _logit(prob))))
    coef, intercept = _penalised_logistic(_logit(prob), labels, agree, k, 0.3)
    design = np.hstack([_logit(prob)[:, None], np.eye(k)[labels]])
    reference = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(design, agree)
    assert np.abs(coef - reference.coef_[0]).max() < 1e-4
    assert abs(intercept - reference.intercept_[0]) < 1e-4
    assert coef[1 + 5] == 0.0


def test_acceptor_falls_back_to_global_when_nothing_to_fit():
    labels = np.array([0, 1, 0, 1])
    prob = np.array([0.9, 0.8, 0.7, 0.6])
    assert not Acceptor.fit(labels, prob, np.ones(4, dtype=bool), 2).per_label
    # Agreement falling with the probability: no acceptor (slope <= 0).
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 2000)
    agree = rng.random(2000) < 1.5 - p
    assert not Acceptor.fit(rng.integers(0, 3, 2000), p, agree, 3).per_label


def test_trust_fit_matches_scikit_learn_and_scores_need_the_margins():
    rng = np.random.default_rng(2)
    n, k = 4000, 9
    labels = rng.integers(0, k, n)
    prob = rng.beta(5, 1, n)
    trust = rng.normal(0.05, 0.05, n)
    base = rng.uniform(-1, 2, k)
    z = base[labels] + 1.1 * _logit(prob) + 20 * trust
    agree = rng.random(n) < 1 / (1 + np.exp(-z))
    x = np.stack([_logit(prob), trust], axis=1)
    coef, intercept = _penalised_logistic(x, labels, agree, k, 0.3)
    design = np.hstack([x, np.eye(k)[labels]])
    reference = LogisticRegression(C=0.3, tol=1e-10, max_iter=10_000).fit(design, agree)
    assert np.abs(coef - reference.coef_[0]).max() < 1e-4
    assert abs(intercept - reference.intercept_[0]) < 1e-4
    acceptor = Acceptor.fit(labels, prob, agree, k, trust=trust)
    assert acceptor.uses_trust and acceptor.trust_slope == pytest.approx(coef[1])
    expected = 1 / (1 + np.exp(-(acceptor.intercepts[labels] + acceptor.slope * _logit(prob)
                                 + acceptor.trust_slope * trust)))
    assert np.allclose(acceptor.score(labels, prob, trust), expected)
    with pytest.raises(ConfigError):
        acceptor.score(labels, prob)
    # Without margins the same data gives the acceptor of earlier versions.
    assert not Acceptor.fit(labels, prob, agree, k).uses_trust
