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

Labels declared but never seen (the name check). When the task declares its labels and some of them
have no training trace yet, the labels' *names* are the only thing known about those intents, and
they say a lot: an input is deferred when it lies closer to the name of an unseen label than to the
name of the label the surrogate answers, by more than the out-of-fold ``quantile`` of that margin on
the training traces (their own labels). Inputs are compared with names in a view fitted on the seen
labels: half the input's embedding, half its ridge projection onto the embedding of its label's name
(``x -> name(y)`` fitted on the training traces), which moves inputs towards the names of their
intents and so works for names the projection never saw. The two checks then share the ``quantile``
(half each), so together they still defer at most that share of training traces. On Banking77 with
10 intents held out (3 draws, BENCHMARKS.md) the pair answers 27-56% of their queries locally where
the prototype check alone answered 37-65%, and keeps 0.3-0.4 points more of the other intents'
coverage (the name check alone at the whole quantile: 20-52%, at up to a point of that coverage). It
needs meaningful label names (``"card_arrival"``, not ``"label_7"``) and declared labels; otherwise
it is not fitted and only the prototype check runs. The names are embedded by the task's embedder at
fit time.

Prototypes and name rows are plain arrays (float32 rows of unit length, the label of each, the
cuts, the projection) saved with ``numpy.savez`` (no pickle) next to the router; scoring one input
is a ``(prototypes x dim)`` and a ``(dim x dim)`` matrix-vector product, some tens of
microseconds.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RouterLoadError
from .embedder import unit_rows
from .threads import single_threaded

__all__ = ["DEFAULT_PER_LABEL", "DEFAULT_QUANTILE", "NameCheck", "OODScorer", "fit_ood",
           "name_text"]

#: Share of training traces (out-of-fold) the check defers: on Banking77 the prototype check alone
#: at 0.02 cost 0.5-0.8 points of coverage of the known intents, at 0.05 0.7-1.6.
DEFAULT_QUANTILE = 0.02
#: k-means prototypes per label: 8 score as well as every trace on Banking77, at 1/16 of the size.
DEFAULT_PER_LABEL = 8
#: Ridge penalty of the name check's projection, and the projection's share of the view an input
#: is compared in (the rest is its own embedding). Chosen on Banking77 with held-out intents
#: (penalty 1, 10, 100 and shares 0, 0.5, 1 tried): the projection alone fits the seen names too
#: closely, the raw embedding alone ignores what the traces teach.
NAME_RIDGE = 1.0
NAME_MIX = 0.5


def name_text(label: str) -> str:
    """The text embedded for a label's name: ``"card_arrival"`` reads ``"card arrival"``."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def _halves(n: int, seed: int) -> np.ndarray:
    """A random half of ``n`` rows (True) and the other half: the two folds that out-of-fold cuts
    are computed on."""
    halves: np.ndarray = np.random.default_rng(seed).permutation(n) % 2 == 0
    return halves


class NameCheck:
    """The declared labels' embedded names (unit rows), which of them no training trace carries,
    the projection of inputs towards names, and the cut above which an input's margin towards an
    unseen name defers it (module docstring)."""

    def __init__(self, names: np.ndarray, labels: np.ndarray | Sequence[str], unseen: np.ndarray,
                 projection: np.ndarray, cut: float) -> None:
        self.names = np.ascontiguousarray(names, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=str)
        self.unseen = np.asarray(unseen, dtype=bool)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        self.cut = float(cut)
        n, dim = self.names.shape if self.names.ndim == 2 else (0, 0)
        if not n or self.labels.shape != (n,) or self.unseen.shape != (n,) \
                or self.projection.shape != (dim, dim) or not self.unseen.any() \
                or self.unseen.all():
            raise ConfigError("malformed name check: names, labels, unseen flags and projection"
                              " disagree in shape, or no label (or every label) is unseen")
        self._row = {str(label): i for i, label in enumerate(self.labels)}

    def margins(self, vectors: np.ndarray, answers: Sequence[str | None]) -> np.ndarray:
        """For each input, its similarity to the nearest unseen label's name minus that to the
        answered label's name (``-inf`` when the answer has no name row: nothing to compare)."""
        X = np.asarray(vectors, dtype=np.float32)
        view = unit_rows(NAME_MIX * unit_rows(X @ self.projection) + (1.0 - NAME_MIX) * X)
        similarity = view @ self.names.T
        nearest_unseen = similarity[:, self.unseen].max(axis=1)
        out = np.full(len(X), -np.inf, dtype=np.float32)
        for i, answer in enumerate(answers):
            row = None if answer is None else self._row.get(answer)
            if row is not None:
                out[i] = nearest_unseen[i] - similarity[i, row]
        return out

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, names: Mapping[str, np.ndarray],
            quantile: float, seed: int) -> NameCheck | None:
        """Fit on embedded traces (``labels`` their teacher labels) and the embedded names of the
        declared labels; None when every declared label has traces, none has, or a trace's label
        has no name."""
        order = sorted(names)
        seen = set(labels.tolist())
        unseen = np.array([label not in seen for label in order])
        if not unseen.any() or unseen.all() or not seen <= set(order):
            return None
        rows = unit_rows(np.stack([np.asarray(names[label], dtype=np.float32) for label in order]))
        index = {label: i for i, label in enumerate(order)}
        targets = rows[[index[label] for label in labels.tolist()]]

        def projection(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
            gram = X.T @ X + NAME_RIDGE * np.eye(X.shape[1], dtype=X.dtype)
            return np.asarray(np.linalg.solve(gram, X.T @ Y), dtype=np.float32)

        half = _halves(len(vectors), seed)
        oof = np.empty(len(vectors), dtype=np.float32)
        for fold in (half, ~half):
            part = cls(rows, order, unseen, projection(vectors[~fold], targets[~fold]), 0.0)
            oof[fold] = part.margins(vectors[fold], labels[fold].tolist())
        return cls(rows, order, unseen, projection(vectors, targets),
                   float(np.quantile(oof, 1.0 - quantile)))


class OODScorer:
    """Prototypes (rows of unit length), the label each belongs to, and the cut below which an
    input is out of distribution; and the name check when one was fitted. Without ``owners``
    every prototype counts for every label."""

    def __init__(self, prototypes: np.ndarray, cut: float,
                 owners: np.ndarray | Sequence[str] | None = None,
                 names: NameCheck | None = None) -> None:
        self.names = names
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
        """Whether :meth:`vetoes` defers one input answered ``label``; without a label, whether
        it is below the cut for the nearest prototype of any label."""
        if label is None:
            return self.score(vector) < self.cut
        return self.vetoes(np.asarray(vector)[None, :], [label])[0] is not None

    def vetoes(self, vectors: np.ndarray, answers: Sequence[str | None]) -> list[str | None]:
        """For each input answered ``answers[i]``, why it is out of distribution (None if it is
        not): past the name check's cut (the more specific reason, given first), or below the
        prototype cut."""
        scores = self.scores(vectors, answers)
        margins = self.names.margins(vectors, answers) if self.names is not None else None
        out: list[str | None] = []
        for i, answer in enumerate(answers):
            if margins is not None and self.names is not None and margins[i] > self.names.cut:
                out.append(f"out of distribution: closer to the name of a label never seen in"
                           f" training than to {answer!r} (margin {margins[i]:.3f} above"
                           f" {self.names.cut:.3f})")
            elif scores[i] < self.cut:
                out.append(f"out of distribution: similarity {scores[i]:.3f} to the nearest"
                           f" training prototype of {answer!r} is below {self.cut:.3f}")
            else:
                out.append(None)
        return out

    def to_bytes(self) -> bytes:
        """The ``.npz`` bytes of the prototypes, their labels and the cut (no pickle)."""
        buf = io.BytesIO()
        arrays = {"prototypes": self.prototypes, "cut": np.float64(self.cut)}
        if self.owners is not None:
            arrays["owners"] = self.owners
        if self.names is not None:
            arrays.update(name_rows=self.names.names, name_labels=self.names.labels,
                          name_unseen=self.names.unseen, name_projection=self.names.projection,
                          name_cut=np.float64(self.names.cut))
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "OOD prototypes") -> OODScorer:
        """Read :meth:`to_bytes` output (``allow_pickle=False``); RouterLoadError if malformed."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                owners = arrays["owners"] if "owners" in arrays.files else None
                names = (NameCheck(arrays["name_rows"], arrays["name_labels"],
                                   arrays["name_unseen"], arrays["name_projection"],
                                   float(arrays["name_cut"]))
                         if "name_rows" in arrays.files else None)
                return cls(arrays["prototypes"], float(arrays["cut"]), owners, names)
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
    # Fit time only: serving never needs scikit-learn.
    from sklearn.cluster import KMeans

    rows, owners = [], []
    with single_threaded():
        for label in np.unique(labels):
            mine = vectors[labels == label]
            if len(mine) > per_label:
                mine = KMeans(per_label, n_init=1, max_iter=50, random_state=seed).fit(
                    mine).cluster_centers_
            rows.append(unit_rows(mine))
            owners.extend([str(label)] * len(mine))
    return np.vstack(rows).astype(np.float32), np.array(owners, dtype=str)


def fit_ood(vectors: np.ndarray, labels: Sequence[str], *, quantile: float = DEFAULT_QUANTILE,
            per_label: int = DEFAULT_PER_LABEL, seed: int = 0,
            names: Mapping[str, np.ndarray] | None = None) -> OODScorer:
    """Prototypes of every label from all traces, cut at ``quantile`` of two-fold out-of-fold
    scores. With ``names`` (each declared label's embedded name, see :func:`name_text`), when
    some declared label has no trace, also the name check; the two checks then cut at
    ``quantile / 2`` each. Raises ConfigError on malformed input."""
    X = np.asarray(vectors, dtype=np.float32)
    y = np.asarray([str(label) for label in labels], dtype=str)
    if X.ndim != 2 or len(X) != len(y) or len(X) < 2:
        raise ConfigError("fit_ood needs at least two embedded traces with one label each")
    if not 0.0 <= quantile < 1.0:
        raise ConfigError(f"OOD quantile must be in [0, 1), got {quantile!r}")
    if per_label < 1:
        raise ConfigError(f"per_label must be at least 1, got {per_label!r}")
    # With a name check the two checks share the budget, so together they still defer at most
    # ``quantile`` of the training traces (out of fold).
    name_check = (NameCheck.fit(X, y, names, quantile / 2, seed)
                  if names is not None and quantile > 0 else None)
    if name_check is not None:
        quantile /= 2
    half = _halves(len(X), seed)
    oof = np.empty(len(X), dtype=np.float32)
    for fold in (half, ~half):
        rows, owners = _prototypes(X[~fold], y[~fold], per_label, seed)
        oof[fold] = OODScorer(rows, 0.0, owners).scores(X[fold], y[fold].tolist())
    prototypes, owners = _prototypes(X, y, per_label, seed)
    return OODScorer(prototypes, float(np.quantile(oof, quantile)), owners, name_check)
