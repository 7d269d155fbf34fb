"""Word and character n-gram features of a text, for the fused surrogate (n-grams plus embedding).

Each text becomes two TF-IDF blocks, word (1-2)-grams and character (3-5)-grams within word
boundaries (``char_wb``), each hashed by scikit-learn's
:class:`~sklearn.feature_extraction.text.HashingVectorizer` into ``2**20`` columns, with sublinear
term frequency, an inverse document frequency learnt from the training texts, and unit L2 norm per
block. Only the hashed columns that occur in at least ``min_df`` training texts are kept, so the
fitted state is two sorted column lists and two IDF vectors: plain arrays, no vocabulary object and
no pickle. The hashing parameters are fixed (recorded in :meth:`NgramFeatures.params` and checked
on load), and scikit-learn's MurmurHash3 does not change between its versions, so a router saved
by one process vectorises a text the same way in another.

Vectorising one text costs ~0.15 ms (two hashing passes), measured on the project's machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import HashingVectorizer

__all__ = ["NgramFeatures"]

#: Hashed feature space of each block; collisions among the few tens of thousands of n-grams of a
#: task history are rare at this size.
N_HASHED = 2**20
#: Kept fixed (and checked when a router is loaded) so that hashing is reproducible.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 5)


@lru_cache(maxsize=8)
def _vectorizers(word: tuple[int, int], char: tuple[int, int]) -> tuple[HashingVectorizer, ...]:
    """The two hashing vectorizers (stateless, so shared by every router and thread).

    scikit-learn takes seconds to import: only a process that fits or serves a fused router
    pays for it, when the features are built (off the request path), not ``import tracer_wrap``.
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    common: dict[str, Any] = {"n_features": N_HASHED, "alternate_sign": False, "norm": None,
                              "lowercase": True, "dtype": np.float32}
    return (HashingVectorizer(analyzer="word", ngram_range=word, token_pattern=TOKEN_PATTERN,
                              **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=char, **common))


@dataclass(frozen=True)
class NgramFeatures:
    """Fitted n-gram TF-IDF features: per block, the kept hashed columns and their IDF weights.

    Build with :meth:`fit`; :meth:`transform` maps texts to a CSR matrix of ``n_features`` float32
    columns (word block first, then character block). N-grams never seen in training map to
    nothing, as in any fitted vocabulary.
    """

    word_columns: np.ndarray
    word_idf: np.ndarray
    char_columns: np.ndarray
    char_idf: np.ndarray
    word_ngrams: tuple[int, int] = WORD_NGRAMS
    char_ngrams: tuple[int, int] = CHAR_NGRAMS

    def __post_init__(self) -> None:
        # Build (and import) the vectorizers now, where the features are fitted or loaded in the
        # background, so the first routed call does not pay for importing scikit-learn.
        _vectorizers(self.word_ngrams, self.char_ngrams)

    @classmethod
    def fit(cls, texts: Sequence[str], *, min_df: int = 2,
            word_ngrams: tuple[int, int] = WORD_NGRAMS,
            char_ngrams: tuple[int, int] = CHAR_NGRAMS) -> NgramFeatures:
        """Learn the kept columns (document frequency >= ``min_df``) and their IDF from ``texts``.

        IDF is scikit-learn's smoothed ``ln((1 + n) / (1 + df)) + 1``. Raises ConfigError when
        ``texts`` is empty.
        """
        return cls.fit_transform(texts, min_df=min_df, word_ngrams=word_ngrams,
                                 char_ngrams=char_ngrams)[0]

    @classmethod
    def fit_transform(cls, texts: Sequence[str], *, min_df: int = 2,
                      word_ngrams: tuple[int, int] = WORD_NGRAMS,
                      char_ngrams: tuple[int, int] = CHAR_NGRAMS
                      ) -> tuple[NgramFeatures, sp.csr_matrix]:
        """:meth:`fit` and the matrix of the same ``texts``, hashing them only once."""
        if len(texts) == 0:
            raise ConfigError("cannot fit n-gram features on no texts")
        blocks, parts = [], []
        for counts in _counts(_vectorizers(word_ngrams, char_ngrams), texts):
            df = np.bincount(counts.indices, minlength=N_HASHED)
            columns = np.flatnonzero(df >= min_df).astype(np.int32)
            idf = (np.log((1.0 + len(texts)) / (1.0 + df[columns])) + 1.0).astype(np.float32)
            blocks.append((columns, idf))
            parts.append(_tfidf(counts, columns, idf))
        (wc, wi), (cc, ci) = blocks
        features = cls(wc, wi, cc, ci, _pair(word_ngrams), _pair(char_ngrams))
        import scipy.sparse as sp

        return features, sp.hstack(parts, format="csr", dtype=np.float32)

    @property
    def n_features(self) -> int:
        return int(self.word_columns.size + self.char_columns.size)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The ``(len(texts), n_features)`` float32 CSR matrix of ``texts``."""
        import scipy.sparse as sp

        parts = []
        counts = _counts(_vectorizers(self.word_ngrams, self.char_ngrams), texts)
        for block, (_, columns, idf) in zip(counts, self._blocks()):
            parts.append(_tfidf(block, columns, idf))
        return sp.hstack(parts, format="csr", dtype=np.float32)

    def dot(self, text: str, weights: np.ndarray) -> np.ndarray:
        """``transform([text]) @ weights`` for one text, without building sparse matrices.

        Routing one text is what every call does; scipy's matrix construction alone cost more
        than the arithmetic (~0.4 ms of ~0.7, measured here).
        """
        out = np.zeros(weights.shape[1], dtype=np.float32)
        offset = 0
        for vectorizer, columns, idf in self._blocks():
            counts = vectorizer.transform([text])
            counts.sum_duplicates()
            if columns.size and counts.nnz:
                position = np.minimum(np.searchsorted(columns, counts.indices), columns.size - 1)
                kept = columns[position] == counts.indices
                value = np.log1p(counts.data[kept]) * idf[position[kept]]
                norm = float(np.sqrt(np.dot(value, value)))
                if norm > 0:
                    out += (value / norm) @ weights[offset + position[kept]]
            offset += columns.size
        return out

    def _blocks(self) -> list[tuple[HashingVectorizer, np.ndarray, np.ndarray]]:
        return list(zip(_vectorizers(self.word_ngrams, self.char_ngrams),
                        (self.word_columns, self.char_columns), (self.word_idf, self.char_idf)))

    # -- persistence (arrays in the router's .npz, parameters in its JSON manifest) ---------------

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters; with :meth:`arrays` they rebuild the same features."""
        return {"kind": "hashed-tfidf", "n_hashed": N_HASHED, "token_pattern": TOKEN_PATTERN,
                "word_ngrams": list(self.word_ngrams), "char_ngrams": list(self.char_ngrams),
                "char_analyzer": "char_wb", "lowercase": True, "sublinear_tf": True,
                "norm": "l2 per block"}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ngram_word_columns": self.word_columns, "ngram_word_idf": self.word_idf,
                "ngram_char_columns": self.char_columns, "ngram_char_idf": self.char_idf}

    @classmethod
    def from_arrays(cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                    ) -> NgramFeatures:
        """Rebuild from :meth:`params` and :meth:`arrays`; ConfigError when they do not fit."""
        expected = {"kind": "hashed-tfidf", "n_hashed": N_HASHED, "token_pattern": TOKEN_PATTERN,
                    "char_analyzer": "char_wb"}
        for key, value in expected.items():
            if params.get(key) != value:
                raise ConfigError(f"n-gram features: unsupported {key}={params.get(key)!r}")
        features = cls(np.asarray(arrays["ngram_word_columns"]),
                       np.asarray(arrays["ngram_word_idf"], dtype=np.float32),
                       np.asarray(arrays["ngram_char_columns"]),
                       np.asarray(arrays["ngram_char_idf"], dtype=np.float32),
                       word_ngrams=_pair(params["word_ngrams"]),
                       char_ngrams=_pair(params["char_ngrams"]))
        for columns, idf in ((features.word_columns, features.word_idf),
                             (features.char_columns, features.char_idf)):
            if (columns.ndim != 1 or idf.shape != columns.shape
                    or (columns.size and (columns.min() < 0 or columns.max() >= N_HASHED))
                    or np.any(np.diff(columns) <= 0)):
                raise ConfigError("n-gram features: malformed column or IDF arrays")
        return features


#: scikit-learn's whitespace normalisation before ``char_wb`` n-grams (``_VectorizerMixin``).
_WHITE_SPACES = re.compile(r"\s\s+")


def _counts(vectorizers: Sequence[HashingVectorizer], texts: Sequence[str]
            ) -> list[sp.csr_matrix]:
    """Hashed n-gram counts of ``texts``, one CSR matrix per vectorizer (word, then ``char_wb``),
    equal to ``vectorizer.transform(texts)`` with duplicates summed.

    ``char_wb`` n-grams never cross a word, so a text's character counts are the sum of its
    words' counts: each distinct word is hashed once and the texts' rows are a sparse product
    of word counts and word rows. On 10k Banking77 texts (~5k distinct words) this hashes ~20x
    fewer n-grams than one pass per text, which cost ~3 s of pure Python (measured here), the
    largest serial part of a fit. An empty batch gives matrices of no rows.
    """
    import scipy.sparse as sp

    out = []
    for vectorizer in vectorizers:
        if not len(texts):  # scikit-learn refuses an empty batch
            counts = sp.csr_matrix((0, vectorizer.n_features), dtype=np.float32)
        elif vectorizer.analyzer != "char_wb":
            counts = vectorizer.transform(texts).tocsr()
        else:
            preprocess = vectorizer.build_preprocessor()
            index: dict[str, int] = {}
            columns: list[int] = []
            indptr = [0]
            for text in texts:
                # The same steps as scikit-learn's char_wb analyzer: preprocess (lowercase),
                # normalise white space, split into words.
                for word in _WHITE_SPACES.sub(" ", preprocess(text)).split():
                    columns.append(index.setdefault(word, len(index)))
                indptr.append(len(columns))
            words = sp.csr_matrix((np.ones(len(columns), dtype=np.float32), columns, indptr),
                                  shape=(len(texts), len(index)))
            words.sum_duplicates()
            if index:
                counts = (words @ vectorizer.transform(list(index)).tocsr()).tocsr()
            else:
                counts = sp.csr_matrix((len(texts), vectorizer.n_features), dtype=np.float32)
        counts.sum_duplicates()
        out.append(counts)
    return out


def _pair(value: Any) -> tuple[int, int]:
    low, high = (int(v) for v in value)
    return low, high


def _tfidf(counts: sp.csr_matrix, columns: np.ndarray, idf: np.ndarray) -> sp.csr_matrix:
    """Keep ``columns`` of hashed ``counts`` (renumbered 0..len-1), weight, L2-normalise rows."""
    import scipy.sparse as sp

    counts.sum_duplicates()
    if columns.size == 0:
        return sp.csr_matrix((counts.shape[0], 0), dtype=np.float32)
    position = np.minimum(np.searchsorted(columns, counts.indices), columns.size - 1)
    kept = columns[position] == counts.indices
    row = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[kept]
    col = position[kept]
    value = (np.log1p(counts.data[kept]) * idf[col]).astype(np.float32)
    norms = np.sqrt(np.bincount(row, weights=value.astype(np.float64) ** 2,
                                minlength=counts.shape[0]))
    value /= np.where(norms > 0, norms, 1.0)[row].astype(np.float32)
    return sp.csr_matrix((value, (row, col)), shape=(counts.shape[0], columns.size),
                         dtype=np.float32)
