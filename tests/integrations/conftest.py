"""Fixtures of the wrapper tests (their helpers are in _support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _support import LLMServer, serve_llm, teacher


@pytest.fixture
def server() -> Iterator[LLMServer]:
    """The fake OpenAI and Anthropic server, answering with the synthetic task's labels."""
    with serve_llm(teacher) as running:
        yield running
