"""Normalising an LLM's output against a task's label set."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["LabelSet"]

_QUOTES = "\"'`“”‘’«»"
_SPACE = re.compile(r"[\s_\-]+")


def _key(text: str) -> str:
    """A comparison key: NFKC, casefolded, quotes and trailing punctuation stripped, one space."""
    text = unicodedata.normalize("NFKC", text).strip().strip(_QUOTES).strip()
    text = text.rstrip(".!;:").strip().strip(_QUOTES)
    return _SPACE.sub(" ", text.casefold()).strip()


class LabelSet:
    """The labels of a task, and how a raw LLM output maps onto one of them.

    Matching ignores case, surrounding whitespace and quotes, a trailing full stop, and the
    difference between spaces, underscores and hyphens (``"Card Arrival."`` matches
    ``card_arrival``). An output that matches no label, or two, is invalid (``None``).
    Without a fixed label set (``labels=None``) any non-empty output after stripping is accepted
    as is, so the set grows with what the LLM says.
    """

    def __init__(self, labels: Iterable[str] | None = None) -> None:
        self._by_key: dict[str, str] | None = None
        if labels is not None:
            by_key: dict[str, str] = {}
            for label in labels:
                if not isinstance(label, str) or not label.strip():
                    raise ConfigError(f"labels must be non-empty strings, got {label!r}")
                by_key.setdefault(_key(label), label)
            if not by_key:
                raise ConfigError("labels must not be empty")
            self._by_key = by_key

    @property
    def fixed(self) -> bool:
        return self._by_key is not None

    @property
    def labels(self) -> list[str] | None:
        return None if self._by_key is None else list(self._by_key.values())

    def normalise(self, output: object) -> str | None:
        """The label ``output`` names, or ``None`` when it is not a valid label."""
        if not isinstance(output, str):
            return None
        key = _key(output)
        if not key:
            return None
        if self._by_key is None:
            return unicodedata.normalize("NFKC", output).strip().strip(_QUOTES).strip() or None
        return self._by_key.get(key)
