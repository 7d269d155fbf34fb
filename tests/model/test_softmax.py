"""The float32 L-BFGS softmax regression solves scikit-learn's objective."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from tracer_wrap.model.softmax import ABSENT_BIAS, fit_softmax, logits


def problem(n: int = 600, d: int = 12, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    X = (centres[y] + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def test_matches_scikit_learn_logistic_regression():
    X, y = problem()
    (W,), b = fit_softmax([X], y, 4, C=10.0, tol=1e-6)
    reference = LogisticRegression(C=10.0, tol=1e-10, max_iter=10_000).fit(X, y)
    assert np.abs(W.T - reference.coef_).max() < 0.01 * np.abs(reference.coef_).max()
    # Softmax logits are defined up to a constant per row: compare centred biases.
    assert np.allclose(b - b.mean(), reference.intercept_ - reference.intercept_.mean(), atol=0.02)


def test_sparse_and_dense_blocks_and_absent_classes():
    X, y = problem()
    S = sp.csr_matrix(X[:, :6])
    (Ws, Wd), b = fit_softmax([S, X[:, 6:]], y, 6, C=10.0, tol=1e-6)
    (W,), _ = fit_softmax([X], y, 6, C=10.0, tol=1e-6)
    # Splitting the features into a sparse and a dense block is the same model.
    assert np.abs(np.vstack([Ws, Wd]) - W).max() < 0.01
    assert np.all(b[4:] == ABSENT_BIAS) and np.all(Ws[:, 4:] == 0)
    assert (logits([S, X[:, 6:]], [Ws, Wd], b).argmax(axis=1) < 4).all()


def test_a_warm_start_reaches_the_same_solution():
    X, y = problem(seed=1)
    cold = fit_softmax([X], y, 4, C=3.0, tol=1e-6)
    warm = fit_softmax([X], y, 4, C=3.0, tol=1e-6, init=fit_softmax([X], y, 4, C=30.0))
    assert np.abs(cold[0][0] - warm[0][0]).max() < 0.01
