"""N-gram features: deterministic, fitted vocabulary only, saved as plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError
from tracer_wrap.model.features import NgramFeatures

TEXTS = ["my card has not arrived", "where is my card", "card arrived broken",
         "how do I change my pin", "change pin please", "pin is blocked"]


def test_rows_are_unit_length_per_block_and_unseen_ngrams_map_to_nothing():
    features = NgramFeatures.fit(TEXTS)
    matrix = features.transform(TEXTS + ["zzqx"]).toarray()
    n_word = features.word_columns.size
    assert np.allclose(np.linalg.norm(matrix[:-1, :n_word], axis=1), 1.0)
    assert np.allclose(np.linalg.norm(matrix[:-1, n_word:], axis=1), 1.0)
    assert not matrix[-1].any()  # nothing of "zzqx" was seen twice in training


def test_min_df_keeps_only_ngrams_seen_often_enough():
    once = NgramFeatures.fit(TEXTS, min_df=1)
    twice = NgramFeatures.fit(TEXTS, min_df=2)
    assert twice.n_features < once.n_features
    # "card" occurs in three texts: kept at min_df=2, and "card" alone maps to a word column.
    assert features_of(twice, "card")[: twice.word_columns.size].any()


def features_of(features: NgramFeatures, text: str) -> np.ndarray:
    return np.asarray(features.transform([text]).toarray()[0])


def test_same_text_same_vector_across_instances_and_round_trip():
    features = NgramFeatures.fit(TEXTS)
    again = NgramFeatures.from_arrays(features.params(), features.arrays())
    a = features.transform(["where is my new card"]).toarray()
    b = again.transform(["where is my new card"]).toarray()
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


def test_foreign_parameters_or_malformed_arrays_are_refused():
    features = NgramFeatures.fit(TEXTS)
    with pytest.raises(ConfigError, match="unsupported"):
        NgramFeatures.from_arrays(dict(features.params(), n_hashed=2**18), features.arrays())
    arrays = features.arrays()
    arrays["ngram_word_columns"] = arrays["ngram_word_columns"][::-1].copy()
    with pytest.raises(ConfigError, match="malformed"):
        NgramFeatures.from_arrays(features.params(), arrays)
    with pytest.raises(ConfigError):
        NgramFeatures.fit([])


def test_fit_transform_is_fit_then_transform():
    features, matrix = NgramFeatures.fit_transform(TEXTS)
    np.testing.assert_array_equal(matrix.toarray(), features.transform(TEXTS).toarray())


def test_dot_of_one_text_is_the_matrix_product():
    features = NgramFeatures.fit(TEXTS)
    weights = np.random.default_rng(0).normal(size=(features.n_features, 3)).astype(np.float32)
    for text in ["where is my card", "zzqx", "", "pin card pin"]:
        expected = features.transform([text]) @ weights
        np.testing.assert_allclose(features.dot(text, weights), expected[0], rtol=1e-5, atol=1e-6)


def test_batch_counts_equal_scikit_learn_hashing_text_by_text():
    # The batch path hashes each distinct word once (char_wb n-grams never cross a word); it must
    # give exactly the counts of scikit-learn's vectorizers, white space and case included.
    from tracer_wrap.model.features import _counts, _vectorizers

    texts = ["Hello  World\t\tfoo", "   ", "", "İstanbul ÇA straße", "a b c", "x" * 40,
             "don't   stop\n\nme now!!", "ÉCOLE école école", "tab\x1csep",
             "nbsp\u00a0here\u2003em", "where is my card?", "Where is my CARD"]
    vectorizers = _vectorizers((1, 2), (3, 5))
    for ours, vectorizer in zip(_counts(vectorizers, texts), vectorizers):
        theirs = vectorizer.transform(texts).tocsr()
        theirs.sum_duplicates()
        assert ours.shape == theirs.shape
        assert (ours != theirs).nnz == 0
    assert all(block.shape[0] == 0 for block in _counts(vectorizers, []))
