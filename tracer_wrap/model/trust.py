"""Trust margin: how much nearer an input lies to the training traces of the label answered than
to those of any other label.

The margin of an embedded input answered with label ``k`` is its largest cosine similarity to the
prototypes of ``k`` minus its largest cosine similarity to the prototypes of every other label
(in the spirit of Jiang et al. 2018, "To trust or not to trust a classifier"). The prototypes are
up to ``per_label`` k-means centres of the training traces the teacher labelled with each label
(every trace when a label has fewer), as for the OOD check (:mod:`tracer_wrap.model.ood`).

The acceptor (:mod:`tracer_wrap.model.acceptor`) may take the margin as a second input beside the
surrogate's probability: a confident answer among traces of another label is more often
contradicted by the teacher than one in the middle of its own label's traces. For the gate's
guarantee the margins it learns from must be out-of-fold like the probabilities: the margins of a
fold's held-out traces come from prototypes of the other folds
(:func:`tracer_wrap.model.fit.fit_router`); calibration and served inputs are scored against the
prototypes of the whole training part, which no calibration trace is part of.

Prototypes are plain arrays (unit-length float32 rows sorted by label, the label index of each)
saved in the router's array file; scoring one input is one ``(prototypes x dim)`` matrix-vector
product and a per-label maximum, ~50 microseconds for 77 labels with 8 prototypes each.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .ood import DEFAULT_PER_LABEL, _prototypes

__all__ = ["Prototypes"]
#: Similarity to a label without any prototype (the lowest cosine similarity there is).
_FLOOR = -1.0


class Prototypes:
    """Unit-length prototype rows and the label index owning each, for ``n_labels`` labels.

    The constructor only checks and stores (rows are reordered by label); build them with
    :meth:`fit`. Raises ConfigError when the arrays are malformed.
    """

    def __init__(self, rows: np.ndarray, owners: np.ndarray, n_labels: int) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        owners = np.asarray(owners)
        if (rows.ndim != 2 or not len(rows) or owners.shape != (len(rows),)
                or not np.issubdtype(owners.dtype, np.integer)):
            raise ConfigError("trust prototypes must be a non-empty 2-d array, one label each")
        if owners.min() < 0 or owners.max() >= n_labels:
            raise ConfigError(f"trust prototype labels must be in [0, {n_labels})")
        order = np.argsort(owners, kind="stable")
        self.rows = np.ascontiguousarray(rows[order])
        self.owners = owners[order].astype(np.int64)
        self.n_labels = int(n_labels)
        # Rows sorted by label: one reduceat per batch gives every label's maximum.
        self._starts = np.flatnonzero(np.r_[True, self.owners[1:] != self.owners[:-1]])
        self._present = self.owners[self._starts]

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, n_labels: int, *,
            per_label: int = DEFAULT_PER_LABEL, seed: int = 0) -> Prototypes:
        """Up to ``per_label`` k-means centres of the ``vectors`` of each label index in
        ``labels`` (each in ``[0, n_labels)``). Raises ConfigError on malformed input."""
        vectors = np.asarray(vectors, dtype=np.float32)
        labels = np.asarray(labels)
        if vectors.ndim != 2 or len(vectors) != len(labels) or not len(vectors):
            raise ConfigError("trust prototypes need at least one embedded trace per label given")
        rows, owners = _prototypes(vectors, labels.astype(np.int64), per_label, seed)
        return cls(rows, owners.astype(np.int64), n_labels)

    def margins(self, vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Trust margins (float64) of ``vectors`` (unit length, one row each) answered with the
        label indices ``labels``: nearest prototype of that label minus nearest of any other."""
        vectors = np.asarray(vectors, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if not len(vectors):
            return np.zeros(0)
        nearest = np.full((len(vectors), self.n_labels), _FLOOR, dtype=np.float32)
        nearest[:, self._present] = np.maximum.reduceat(vectors @ self.rows.T, self._starts,
                                                        axis=1)
        rows = np.arange(len(labels))
        own = nearest[rows, labels].copy()
        nearest[rows, labels] = -np.inf
        return np.asarray(own - nearest.max(axis=1), dtype=np.float64)
