"""Fitting a router from traces: cross-fitted linear surrogate, then the gate on held-out traces.

1. The traces are split at random into a training part and a calibration part. Only traces that
   are exchangeable with live traffic may calibrate; all the others train.
2. The training part is cut into ``folds``; one logistic regression per fold is fitted on the
   other folds. Their out-of-fold scores say where to put the threshold grid and where to start
   it; the served surrogate averages their logits (still one linear model, so serving is as cheap
   as a single fit).
3. On the calibration part, which no model saw, the gate (:mod:`tracer_wrap.model.gate`) certifies a
   threshold for every target of the frontier at once; no refit per target.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from . import gate
from ..errors import ConfigError, GateRefused
from .router import Router

__all__ = ["DEFAULT_TARGETS", "fit_router"]

DEFAULT_TARGETS: tuple[float, ...] = (0.85, 0.90, 0.95, 0.97, 0.98, 0.99)


def fit_router(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    targets: Sequence[float] = DEFAULT_TARGETS,
    serve_target: float = 0.95,
    delta: float = 0.05,
    calibration_fraction: float | None = None,
    calibration_eligible: np.ndarray | None = None,
    folds: int = 3,
    C: float = 100.0,
    max_train: int | None = 50_000,
    seed: int = 0,
    n_jobs: int = 2,
    info: dict | None = None,
) -> Router:
    """Fit a router on embedded traces and certify a threshold for each target.

    ``vectors`` are L2-normalised embeddings, ``labels`` the teacher's labels. ``calibration_eligible``
    marks the traces that may calibrate (default: all). ``calibration_fraction`` defaults to
    ``1200 / n`` clipped to [0.3, 0.4]: small task histories need a larger share for the test
    to have power (measured on Banking77: at 2k traces, 0.4 certifies 72% coverage at 0.95
    where 0.3 certifies 64%). At most ``max_train`` traces, drawn at
    random, train the surrogate (fit time grows with them, coverage hardly after ~50k); the
    calibration part is not capped, since scoring it is cheap and more of it tightens the gate. Raises ConfigError on malformed input and
    GateRefused when there is too little data to fit at all; a fit that certifies no target
    returns a router whose certificates say why (it defers every input).
    """
    started = time.perf_counter()
    X = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels, dtype=object)
    if calibration_fraction is None:
        calibration_fraction = float(np.clip(1200 / max(len(y), 1), 0.3, 0.4))
    _check(X, y, targets, serve_target, delta, calibration_fraction)
    eligible = (np.ones(len(y), dtype=bool) if calibration_eligible is None
                else np.asarray(calibration_eligible, dtype=bool))
    rng = np.random.default_rng(seed)
    eligible_idx = np.flatnonzero(eligible)
    n_cal = int(round(calibration_fraction * len(y)))
    n_cal = min(n_cal, len(eligible_idx))
    cal_idx = np.sort(rng.choice(eligible_idx, size=n_cal, replace=False))
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[cal_idx] = False
    if max_train is not None and train_mask.sum() > max_train:
        dropped = rng.choice(np.flatnonzero(train_mask), size=int(train_mask.sum()) - max_train,
                             replace=False)
        train_mask[dropped] = False
    X_train, y_train = X[train_mask], y[train_mask]
    classes = np.array(sorted(set(y_train)), dtype=object)
    if len(classes) < 2:
        raise GateRefused(f"need at least two labels among training traces, got {len(classes)}")
    y_index = np.searchsorted(classes, y_train)

    # Imported here: scikit-learn takes seconds to import and serving a router never needs it.
    from joblib import Parallel, delayed
    from threadpoolctl import threadpool_limits

    splits = _folds(y_index, folds, seed)
    # Folds run in parallel threads, each with single-threaded BLAS: multi-threaded BLAS on these
    # small matrices is up to 30x slower when another process holds a core (measured here).
    with threadpool_limits(1):
        fitted = Parallel(n_jobs=min(n_jobs, len(splits)), prefer="threads")(
            delayed(_fit_fold)(X_train[tr], y_index[tr], len(classes), C) for tr, _ in splits
        )
    oof_scores = np.empty(len(y_train))
    oof_agree = np.empty(len(y_train), dtype=bool)
    for (weights, bias), (_, held) in zip(fitted, splits):
        logits = X_train[held] @ weights.T + bias
        oof_scores[held] = _max_prob(logits)
        oof_agree[held] = logits.argmax(axis=1) == y_index[held]
    weights = np.mean([w for w, _ in fitted], axis=0)
    bias = np.mean([b for _, b in fitted], axis=0)

    # The gate: calibration traces only, scored by the averaged model that never saw them.
    X_cal, y_cal = X[cal_idx], y[cal_idx]
    cal_logits = X_cal @ weights.T + bias
    cal_pred = classes[cal_logits.argmax(axis=1)] if len(cal_idx) else np.array([], dtype=object)
    cal_scores = _max_prob(cal_logits) if len(cal_idx) else np.zeros(0)
    cal_agree = cal_pred == y_cal
    grid = gate.threshold_grid(oof_scores)
    certificates = {
        float(t): gate.certify(cal_scores, cal_agree, grid=grid, reference_scores=oof_scores,
                               reference_agree=oof_agree, target=float(t), delta=delta)
        for t in targets
    }
    fit_info = {
        "delta": delta,
        "n_traces": int(len(y)),
        "n_train": int(train_mask.sum()),
        "n_calibration": int(len(cal_idx)),
        "calibration_fraction": calibration_fraction,
        "folds": len(splits),
        "C": C,
        "max_train": max_train,
        "seed": seed,
        "guarantee": "P(agreement on accepted inputs >= target) >= 1 - delta over the calibration"
                     " draw, per target, assuming calibration traces are exchangeable with traffic",
        "fit_seconds": time.perf_counter() - started,
        **(info or {}),
    }
    return Router(weights, bias, [str(c) for c in classes], certificates, target=serve_target,
                  info=fit_info)


def _fit_fold(X: np.ndarray, y: np.ndarray, n_classes: int, C: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """One logistic regression; rows for classes absent from this fold get -inf-like bias."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=1000, tol=1e-5)
    model.fit(X, y)
    weights = np.zeros((n_classes, X.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)
    if len(model.classes_) == 2:  # sklearn stores one row for two classes
        coef = np.vstack([-model.coef_[0] / 2, model.coef_[0] / 2])
        intercept = np.array([-model.intercept_[0] / 2, model.intercept_[0] / 2])
    else:
        coef, intercept = model.coef_, model.intercept_
    weights[model.classes_] = coef
    bias[model.classes_] = intercept
    return weights, bias


def _folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    folds = max(2, min(folds, len(y)))
    return list(KFold(folds, shuffle=True, random_state=seed).split(y))


def _max_prob(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=1)


def _check(X: np.ndarray, y: np.ndarray, targets: Sequence[float], serve_target: float,
           delta: float, calibration_fraction: float) -> None:
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ConfigError(f"vectors of shape {X.shape} do not match {y.shape[0]} labels")
    if not np.all(np.isfinite(X)):
        raise ConfigError("vectors contain NaN or infinite values")
    for t in (*targets, serve_target):
        if not 0.0 < t <= 1.0:
            raise ConfigError(f"targets must be in (0, 1], got {t!r}")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    if not 0.0 < calibration_fraction < 1.0:
        raise ConfigError(f"calibration_fraction must be in (0, 1), got {calibration_fraction!r}")
    if len(y) < 10:
        raise GateRefused(f"{len(y)} traces are too few to fit a router")
