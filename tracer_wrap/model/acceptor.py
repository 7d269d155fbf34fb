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

from .softmax import fit_softmax

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
        import scipy.sparse as sp  # only fitting needs it; serving imports this module

        labels = np.asarray(labels)
        n = len(labels)
        design = sp.hstack([sp.csr_matrix(_logit(prob).astype(np.float32)[:, None]),
                            sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), labels)),
                                          shape=(n, n_labels))], format="csr")
        # A two-class softmax with both rows penalised is the logistic regression with half the
        # penalty; this solver takes ~40 ms here where scikit-learn's lbfgs took ~0.5 s.
        (w,), b = fit_softmax([design], agree.astype(int), 2, C=C / 2, tol=1e-6)
        coef, intercept = w[:, 1] - w[:, 0], float(b[1] - b[0])
        slope = float(coef[0])
        if slope <= 0:  # a score that falls as the probability rises would be no acceptor
            return cls()
        return cls((intercept + coef[1:]).astype(np.float64), slope)
