"""Out-of-distribution score: how close an input is to anything the router was trained on.

The score of an embedded input is its largest cosine similarity to a set of prototypes of the
training traces (the normalised centroid of each label). An input whose score is below ``cut`` is
far from every trace seen and is deferred to the LLM whatever the surrogate's confidence: a linear
model is often confident far from its data. The cut is the ``quantile`` of *out-of-fold* scores
(prototypes from one half of the traces scoring the other half), so it is chosen from training
data and is not flattered by scoring points against their own centroids.

Prototypes are a plain float32 array saved with ``numpy.savez`` (no pickle) next to the router;
scoring one input is one ``(labels x dim)`` matrix-vector product, a few microseconds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RouterLoadError

__all__ = ["OODScorer", "fit_ood"]

DEFAULT_QUANTILE = 0.01


class OODScorer:
    """Prototypes (rows of unit length) and the cut below which an input is out of distribution."""

    def __init__(self, prototypes: np.ndarray, cut: float) -> None:
        self.prototypes = np.ascontiguousarray(prototypes, dtype=np.float32)
        if self.prototypes.ndim != 2 or not len(self.prototypes):
            raise ConfigError("OOD prototypes must be a non-empty 2-d array")
        self.cut = float(cut)

    def score(self, vector: np.ndarray) -> float:
        """Largest cosine similarity of one unit-length vector to the prototypes."""
        return float((self.prototypes @ np.asarray(vector, dtype=np.float32)).max())

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        similarity = np.asarray(vectors, dtype=np.float32) @ self.prototypes.T
        nearest: np.ndarray = similarity.max(axis=1)
        return nearest

    def is_outlier(self, vector: np.ndarray) -> bool:
        return self.score(vector) < self.cut

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the prototypes and cut to ``path`` (temp file + rename); return its SHA-256."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, prototypes=self.prototypes, cut=np.float64(self.cut))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, path)
        return digest

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expected_sha256: str | None) -> OODScorer:
        """Load a file written by :meth:`save`; RouterLoadError if missing, altered or malformed."""
        try:
            raw = Path(path).read_bytes()
            if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
                raise RouterLoadError(f"{path}: content hash mismatch, refusing to load")
            with np.load(path, allow_pickle=False) as arrays:
                return cls(arrays["prototypes"], float(arrays["cut"]))
        except RouterLoadError:
            raise
        except Exception as exc:
            raise RouterLoadError(f"cannot load OOD prototypes {str(path)!r}: {exc}") from exc


def _centroids(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    classes, index = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, index, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def fit_ood(vectors: np.ndarray, labels: Sequence[str], *, quantile: float = DEFAULT_QUANTILE,
            seed: int = 0) -> OODScorer:
    """Prototypes from all traces, cut at ``quantile`` of two-fold out-of-fold scores."""
    X = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels, dtype=object)
    if X.ndim != 2 or len(X) != len(y) or len(X) < 2:
        raise ConfigError("fit_ood needs at least two embedded traces with one label each")
    if not 0.0 <= quantile < 1.0:
        raise ConfigError(f"OOD quantile must be in [0, 1), got {quantile!r}")
    half = np.random.default_rng(seed).permutation(len(X)) % 2 == 0
    oof = np.empty(len(X), dtype=np.float32)
    for fold in (half, ~half):
        other = OODScorer(_centroids(X[~fold], y[~fold]), 0.0)
        oof[fold] = other.scores(X[fold])
    return OODScorer(_centroids(X, y), float(np.quantile(oof, quantile)))
