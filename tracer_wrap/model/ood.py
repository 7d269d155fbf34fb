"""Out-of-distribution score: how close an input is to the training traces of the label answered.

The score of an embedded input answered with label ``k`` is its largest cosine similarity to the
prototypes of ``k``: up to ``per_label`` k-means centres of the training traces the teacher
labelled ``k`` (every trace when a label has fewer). An input whose score is below ``cut`` lies
far from every trace of the label the surrogate would answer and is deferred to the LLM whatever
the surrogate's confidence: a linear model is often confident far from its data, and a query of
an intent the router never saw is answered with a neighbouring label. The cut is the ``quantile``
of *out-of-fold* scores (prototypes from one half of the traces scoring the other half with its
own label), so it is chosen from training data and is not flattered by scoring points against
their own prototypes.

Why nearest prototypes of the answered label, not the nearest label centroid (the earlier score):
measured on Banking77 with 10 intents held out from training (3 draws, BENCHMARKS.md), at the same
loss of coverage on the other intents it defers 2-5 points more of the held-out intents' queries
(all traces as prototypes do no better than 8 per label). No similarity score gets near deferring
them all: those intents are worded like their neighbours (an in-sample combination of the
similarity scores still answers 31-36% of them locally at a 1-point loss), which is why an LLM
label never seen in training schedules a refit at once (:mod:`tracer_wrap.engine`).

Prototypes are plain arrays (float32 rows of unit length, the label of each, the cut) saved with
``numpy.savez`` (no pickle) next to the router; scoring one input is one ``(prototypes x dim)``
matrix-vector product, some microseconds.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RouterLoadError

__all__ = ["DEFAULT_PER_LABEL", "DEFAULT_QUANTILE", "OODScorer", "fit_ood"]

#: Share of training traces (out-of-fold) the cut defers: on Banking77 0.02 cost 0.5-0.8 points of
#: coverage of the known intents, 0.05 cost 0.7-1.6.
DEFAULT_QUANTILE = 0.02
#: k-means prototypes per label: 8 score as well as every trace on Banking77, at 1/16 of the size.
DEFAULT_PER_LABEL = 8


class OODScorer:
    """Prototypes (rows of unit length), the label each belongs to, and the cut below which an
    input is out of distribution. Without ``owners`` every prototype counts for every label."""

    def __init__(self, prototypes: np.ndarray, cut: float,
                 owners: np.ndarray | Sequence[str] | None = None) -> None:
        self.prototypes = np.ascontiguousarray(prototypes, dtype=np.float32)
        if self.prototypes.ndim != 2 or not len(self.prototypes):
            raise ConfigError("OOD prototypes must be a non-empty 2-d array")
        self.cut = float(cut)
        self.owners = None if owners is None else np.asarray(owners, dtype=str)
        if self.owners is not None and self.owners.shape != (len(self.prototypes),):
            raise ConfigError("OOD prototypes and their labels disagree in size")
        self._columns: dict[str, np.ndarray] = {}
        if self.owners is not None:
            for label in np.unique(self.owners):
                self._columns[str(label)] = np.flatnonzero(self.owners == label)

    def score(self, vector: np.ndarray, label: str | None = None) -> float:
        """Largest cosine similarity of one unit-length vector to the prototypes (of ``label``)."""
        return float(self.scores(np.asarray(vector)[None, :],
                                 None if label is None else [label])[0])

    def scores(self, vectors: np.ndarray, labels: Sequence[str | None] | None = None
               ) -> np.ndarray:
        """:meth:`score` for a batch; ``labels`` (the answers) are needed when prototypes have
        owners. A label with no prototype scores -1 (out of distribution)."""
        similarity = np.asarray(vectors, dtype=np.float32) @ self.prototypes.T
        if self.owners is None or labels is None:
            nearest: np.ndarray = similarity.max(axis=1)
            return nearest
        out = np.full(len(similarity), -1.0, dtype=np.float32)
        for i, label in enumerate(labels):
            columns = None if label is None else self._columns.get(label)
            if columns is not None:
                out[i] = similarity[i, columns].max()
        return out

    def is_outlier(self, vector: np.ndarray, label: str | None = None) -> bool:
        return self.score(vector, label) < self.cut

    def to_bytes(self) -> bytes:
        """The ``.npz`` bytes of the prototypes, their labels and the cut (no pickle)."""
        buf = io.BytesIO()
        arrays = {"prototypes": self.prototypes, "cut": np.float64(self.cut)}
        if self.owners is not None:
            arrays["owners"] = self.owners
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "OOD prototypes") -> OODScorer:
        """Read :meth:`to_bytes` output (``allow_pickle=False``); RouterLoadError if malformed."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                owners = arrays["owners"] if "owners" in arrays.files else None
                return cls(arrays["prototypes"], float(arrays["cut"]), owners)
        except Exception as exc:
            raise RouterLoadError(f"cannot load OOD prototypes {source!r}: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the scorer to ``path`` (temp file + rename); return its SHA-256."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = self.to_bytes()
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, expected_sha256: str | None) -> OODScorer:
        """Load a file written by :meth:`save`; RouterLoadError if missing, altered or malformed."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise RouterLoadError(f"cannot load OOD prototypes {str(path)!r}: {exc}") from exc
        if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
            raise RouterLoadError(f"{path}: content hash mismatch, refusing to load")
        return cls.from_bytes(raw, source=str(path))


def _prototypes(vectors: np.ndarray, labels: np.ndarray, per_label: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_label`` unit-length k-means centres per label, and the label of each.

    Runs with one OpenMP / BLAS thread (restored after): each label's set is small, and
    scikit-learn's threads made Banking77's 77 labels 2-7x slower for the same centres (0.36 s
    against 0.74-2.75 s on a quiet 2-core machine, 0.72 s against 1.6-5.0 s beside two busy
    processes).
    """
    # Fit time only: serving never needs scikit-learn (threadpoolctl comes with it).
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    rows, owners = [], []
    with threadpool_limits(1):
        for label in np.unique(labels):
            mine = vectors[labels == label]
            if len(mine) > per_label:
                mine = KMeans(per_label, n_init=1, max_iter=50, random_state=seed).fit(
                    mine).cluster_centers_
            norms = np.linalg.norm(mine, axis=1, keepdims=True)
            rows.append(mine / np.where(norms > 0, norms, 1.0))
            owners.extend([str(label)] * len(mine))
    return np.vstack(rows).astype(np.float32), np.array(owners, dtype=str)


def fit_ood(vectors: np.ndarray, labels: Sequence[str], *, quantile: float = DEFAULT_QUANTILE,
            per_label: int = DEFAULT_PER_LABEL, seed: int = 0) -> OODScorer:
    """Prototypes of every label from all traces, cut at ``quantile`` of two-fold out-of-fold
    scores. Raises ConfigError on malformed input."""
    X = np.asarray(vectors, dtype=np.float32)
    y = np.asarray([str(label) for label in labels], dtype=str)
    if X.ndim != 2 or len(X) != len(y) or len(X) < 2:
        raise ConfigError("fit_ood needs at least two embedded traces with one label each")
    if not 0.0 <= quantile < 1.0:
        raise ConfigError(f"OOD quantile must be in [0, 1), got {quantile!r}")
    if per_label < 1:
        raise ConfigError(f"per_label must be at least 1, got {per_label!r}")
    half = np.random.default_rng(seed).permutation(len(X)) % 2 == 0
    oof = np.empty(len(X), dtype=np.float32)
    for fold in (half, ~half):
        rows, owners = _prototypes(X[~fold], y[~fold], per_label, seed)
        oof[fold] = OODScorer(rows, 0.0, owners).scores(X[fold], y[fold].tolist())
    prototypes, owners = _prototypes(X, y, per_label, seed)
    return OODScorer(prototypes, float(np.quantile(oof, quantile)), owners)
