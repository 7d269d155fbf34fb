"""A tiny deterministic embedder for tests and quick trials: no model, no download, no GPU.

Word unigrams and bigrams plus character 3-grams are hashed into ``dim`` buckets
(scikit-learn's :class:`~sklearn.feature_extraction.text.HashingVectorizer`), made dense and
L2-normalised. It is far weaker than a sentence embedding model and only meant to make the CLI,
the sidecar and their tests run in milliseconds. Select it with ``TRACER_WRAP_EMBEDDER=hashing``
(the CLI and the sidecar understand that name); a router fitted with it records the embedder
name ``hashing`` and is only ever served with the same embedder.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

from .embedder import Embedder

__all__ = ["HASHING", "hashing_embedder"]

#: The name that selects this embedder (``$TRACER_WRAP_EMBEDDER``, ``--embedder``, manifests).
HASHING = "hashing"


def hashing_embedder(dim: int = 512) -> Embedder:
    """An :class:`Embedder` named ``hashing`` producing unit vectors of ``dim`` floats."""
    words = HashingVectorizer(n_features=dim, ngram_range=(1, 2), alternate_sign=False,
                              norm=None, lowercase=True)
    chars = HashingVectorizer(n_features=dim, analyzer="char_wb", ngram_range=(3, 3),
                              alternate_sign=False, norm=None, lowercase=True)

    def embed(texts: list[str]) -> np.ndarray:
        matrix = sp.hstack([words.transform(texts), 0.5 * chars.transform(texts)]).toarray()
        dense = matrix[:, :dim] + matrix[:, dim:]
        # Inputs with no token at all (e.g. only punctuation) still get a unit vector.
        dense[np.linalg.norm(dense, axis=1) == 0, 0] = 1.0
        vectors: np.ndarray = dense.astype(np.float32)
        return vectors

    return Embedder.from_callable(embed, name=HASHING)
