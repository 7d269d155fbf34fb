"""The acceptor score: how likely the teacher is to agree with the surrogate's answer.

The score of an input is ``sigmoid(intercept[label] + slope * logit(p))``, where ``label`` is the
surrogate's answer and ``p`` its probability. With no intercepts it is ``p`` itself (the global
acceptor, as in earlier versions). The per-label intercepts are a logistic regression of
"the teacher agreed" on ``logit(p)`` and the answered label, fitted on *out-of-fold* predictions of
the training part, with an L2 penalty that shrinks every label towards the common fit. One global
threshold on this score is one threshold per label on ``p``: labels the teacher is reliable on (or
the surrogate is underconfident on) get a more lenient one, labels the teacher often contradicts
a stricter one. Because the whole rule comes from training data, the gate tests it on calibration
data like any other threshold (see :mod:`tracer_wrap.model.gate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Acceptor"]

_CLIP = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1.0 - _CLIP)
    return np.asarray(np.log(p) - np.log1p(-p), dtype=np.float64)


@dataclass(frozen=True)
class Acceptor:
    """Maps (answered label, its probability) to the acceptor score; see the module docstring.

    ``intercepts`` is ``None`` for the global acceptor (score = probability).
    """

    intercepts: np.ndarray | None = None
    slope: float = 1.0

    @property
    def per_label(self) -> bool:
        return self.intercepts is not None

    def score(self, labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """Acceptor scores (float64) for label indices ``labels`` and their probabilities."""
        prob = np.asarray(prob, dtype=np.float64)
        if self.intercepts is None:
            return prob
        z = self.intercepts[np.asarray(labels)] + self.slope * _logit(prob)
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    @classmethod
    def fit(cls, labels: np.ndarray, prob: np.ndarray, agree: np.ndarray, n_labels: int, *,
            C: float = 0.3) -> Acceptor:
        """Per-label intercepts and a common slope from out-of-fold predictions.

        ``C`` is the inverse L2 penalty on the label intercepts (smaller shrinks them more towards
        the common intercept). Falls back to the global acceptor when the agreement flags are all
        equal (nothing to fit).
        """
        agree = np.asarray(agree, dtype=bool)
        if agree.all() or not agree.any():
            return cls()
        labels = np.asarray(labels)
        coef, intercept = _penalised_logistic(_logit(prob), labels, agree, n_labels, C)
        slope = float(coef[0])
        if slope <= 0:  # a score that falls as the probability rises would be no acceptor
            return cls()
        return cls((intercept + coef[1:]).astype(np.float64), slope)


def _penalised_logistic(x: np.ndarray, labels: np.ndarray, agree: np.ndarray, n_labels: int,
                        C: float) -> tuple[np.ndarray, float]:
    """Coefficients ``[slope, label effects...]`` and intercept of the logistic regression of
    ``agree`` on ``x`` and the one-hot label: mean log-loss plus ``||coef||^2 / (2 C n)``,
    intercept not penalised (scikit-learn's ``LogisticRegression(C=C)`` divided by ``C n``).

    Newton's method on the ``n_labels + 2`` parameters, whose Hessian is an arrow (the label
    block is diagonal) and is accumulated with ``bincount``: a few milliseconds where a
    quasi-Newton solver on the sparse design took ~100 ms (six of these run per fit).
    """
    n = len(x)
    t = agree.astype(np.float64)
    labels = np.asarray(labels, dtype=np.intp)
    # Parameters: slope, the label effects, then the intercept (not penalised).
    reg = np.full(n_labels + 2, 1.0 / (C * n))
    reg[-1] = 0.0
    block = np.arange(1, n_labels + 1)

    def margin(theta: np.ndarray) -> np.ndarray:
        return np.asarray(theta[0] * x + theta[1 + labels] + theta[-1], dtype=np.float64)

    def loss(z: np.ndarray, theta: np.ndarray) -> float:
        return (float(np.mean(np.logaddexp(0.0, z) - t * z))
                + 0.5 * float(np.dot(reg * theta, theta)))

    theta = np.zeros(n_labels + 2)
    z = margin(theta)
    f = loss(z, theta)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-z))
        r, h = (p - t) / n, p * (1.0 - p) / n
        grad = reg * theta
        grad[0] += float(np.dot(r, x))
        grad[-1] += float(r.sum())
        grad[1:-1] += np.bincount(labels, weights=r, minlength=n_labels)
        if float(np.abs(grad).max()) < 1e-10:
            break
        hess = np.diag(reg)
        hess[0, 0] += float(np.dot(h, x * x))
        hess[-1, -1] += float(h.sum())
        hess[0, -1] = hess[-1, 0] = float(np.dot(h, x))
        hess[block, block] += np.bincount(labels, weights=h, minlength=n_labels)
        hess[0, block] = hess[block, 0] = np.bincount(labels, weights=h * x, minlength=n_labels)
        hess[-1, block] = hess[block, -1] = np.bincount(labels, weights=h, minlength=n_labels)
        # The tiny ridge keeps degenerate data (e.g. one label only) solvable.
        step = np.linalg.solve(hess + 1e-12 * np.eye(len(theta)), grad)
        size = 1.0
        for _ in range(30):  # backtracking: Newton steps can overshoot far from the optimum
            candidate = theta - size * step
            z_new = margin(candidate)
            f_new = loss(z_new, candidate)
            if f_new <= f:
                break
            size *= 0.5
        else:
            break
        decrease = f - f_new
        theta, z, f = candidate, z_new, f_new
        if decrease < 1e-15:
            break
    return theta[:-1], float(theta[-1])
