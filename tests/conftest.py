"""Shared fixtures: a store in a temporary directory and the tiny hashing embedder (no model)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis_server import REDIS_SERVER, RedisServer

from tracer_wrap.model.embedder import Embedder
from tracer_wrap.model.hashing import hashing_embedder
from tracer_wrap.names import option_env_var
from tracer_wrap.store import TraceStore

# Tests answer with LLM stubs that take microseconds, so by default a call would wait only
# EmbedWait.FLOOR (50 ms) for its embedding, and on a loaded machine whether a call is answered
# locally would depend on thread scheduling. Every test (and the processes it starts) waits up to
# embed_timeout instead; the tests of the wait itself set embed_budget explicitly.
os.environ[option_env_var("embed_budget")] = "none"


@pytest.fixture
def store(tmp_path) -> TraceStore:
    return TraceStore(tmp_path / "store")


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return hashing_embedder()


@pytest.fixture(autouse=True)
def _fresh_fault_log():
    """Each test sees its first fault logged (the once-a-minute limit is process-wide)."""
    from tracer_wrap import _log

    _log._last.clear()
    logging.getLogger("tracer_wrap").setLevel(logging.INFO)
    yield


@pytest.fixture(autouse=True)
def _forget_tasks():
    """The tasks a test made must not keep working from the background worker into the next test
    (a task whose Redis server was stopped would log its faults there): write what can be
    written, then forget them. Tasks of module fixtures, made before, are kept."""
    from tracer_wrap import background

    before = set(background._jobs)
    yield
    for job in set(background._jobs) - before:
        try:
            job.drain(0.2)
        except Exception:
            pass
        background.unregister(job)


@pytest.fixture(scope="session")
def banking77_train(request):
    """The packaged Banking77 train split embedded with the real MiniLM (bundled weights).

    Embedded once per machine (~30 s on 2 cores) and kept in pytest's cache directory. The test
    workers of ``pytest -n`` share that directory: the first to need the vectors embeds them
    under a file lock while the others wait, and the file appears whole (written aside, then
    renamed).
    """
    import fcntl

    import numpy as np

    from tracer_wrap.lab.datasets import load_banking77

    rows = load_banking77("train")
    texts = np.array([t for t, _ in rows])
    labels = np.array([y for _, y in rows])
    cache = getattr(request.config, "cache", None)
    if cache is None:  # pytest -p no:cacheprovider
        return {"X": Embedder.default(threads=None).embed(texts.tolist()), "y": labels,
                "texts": texts}
    folder = cache.mkdir("banking77")
    path = folder / "train-minilm.npy"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            aside = folder / f"train-minilm.{os.getpid()}.npy"
            np.save(aside, Embedder.default(threads=None).embed(texts.tolist()))
            os.replace(aside, path)
    vectors = np.load(path, allow_pickle=False)
    return {"X": vectors, "y": labels, "texts": texts}


@pytest.fixture(params=["diskcache", "redis"])
def store_spec(request, tmp_path: Path) -> Iterator[str]:
    """A store every process of a test can open: a directory, or a real Redis server on
    loopback (many hosts)."""
    if request.param == "diskcache":
        yield str(tmp_path / "store")
        return
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
