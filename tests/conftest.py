"""Shared fixtures: a store in a temporary directory and the tiny hashing embedder (no model)."""

from __future__ import annotations

import logging

import pytest

from tracer_wrap._hashing_embedder import hashing_embedder
from tracer_wrap.embedder import Embedder
from tracer_wrap.store import TraceStore


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
