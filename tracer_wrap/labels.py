"""Normalising an LLM's output against a task's label set."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping

from .errors import ConfigError

__all__ = ["LABEL_FIELD_NAMES", "LabelSet", "json_label", "label_from_json", "label_from_text",
           "label_key"]

_QUOTES = "\"'`“”‘’«»"
_SPACE = re.compile(r"[\s_\-]+")
#: Fields of a JSON object answer that name the label (``{"label": "refund"}``), in this order.
LABEL_FIELD_NAMES: tuple[str, ...] = ("label", "category", "class", "intent")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
#: JSON answers longer than this are not parsed (an output that long is no label).
_MAX_JSON_CHARS = 10_000


def label_key(text: str) -> str:
    """A comparison key: NFKC, casefolded, quotes and trailing punctuation stripped, one space."""
    text = unicodedata.normalize("NFKC", text).strip().strip(_QUOTES).strip()
    text = text.rstrip(".!;:").strip().strip(_QUOTES)
    return _SPACE.sub(" ", text.casefold()).strip()


def label_from_json(payload: object, *, single_field: bool = True) -> str | None:
    """The label in a decoded JSON object: its label/category/class/intent field (any case) when
    that is a string, else (with ``single_field``: structured outputs, whose schema made the
    object) its single string field; None when there is none or it is ambiguous."""
    if not isinstance(payload, Mapping):
        return None
    fields = {k.casefold(): v for k, v in payload.items() if isinstance(k, str)}
    for name in LABEL_FIELD_NAMES:
        found = fields.get(name)
        if isinstance(found, str):
            return found
    if not single_field:
        return None
    strings = [value for value in payload.values() if isinstance(value, str)]
    return strings[0] if len(strings) == 1 else None


def json_label(text: str, *, single_field: bool = True) -> str | None:
    """The label of an answer that is a JSON object (optionally in a Markdown code fence), else
    None: the text is not such an object, or the object names no label (see
    :func:`label_from_json`)."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    if not (stripped.startswith("{") and stripped.endswith("}")) or len(stripped) > _MAX_JSON_CHARS:
        return None
    try:
        return label_from_json(json.loads(stripped), single_field=single_field)
    except (ValueError, RecursionError):
        return None


def label_from_text(text: str | None) -> str | None:
    """The raw label in an assistant's text: the label of a JSON object answer, else the
    stripped text (None when empty)."""
    if text is None:
        return None
    from_json = json_label(text)
    if from_json is not None:
        return from_json
    return text.strip() or None


class LabelSet:
    """The labels of a task, and how a raw LLM output maps onto one of them.

    Matching ignores case, surrounding whitespace and quotes, a trailing full stop, and the
    difference between spaces, underscores and hyphens (``"Card Arrival."`` matches
    ``card_arrival``). Real LLM output is accepted in two more shapes: a JSON object whose
    ``label``, ``category``, ``class`` or ``intent`` field names a label (``{"label": "refund"}``,
    also in a Markdown code fence), and a label followed by an explanation (``"refund - the
    customer wants their money back"``) when exactly one label starts the text at a word boundary
    (where labels nest, like ``card`` and ``card arrival``, the longest wins). Anything else,
    refusals included, is invalid (``None``).
    Without a fixed label set (``labels=None``) any non-empty output after stripping is accepted
    as is (a JSON object answer gives its label field), so the set grows with what the LLM says,
    except an output that the task's ``redact`` hook changes (or fails on): it quotes what the task
    keeps out of its store (an e-mail address, a card number), so it is invalid, and stored
    redacted as invalid answers are.
    """

    def __init__(self, labels: Iterable[str] | None = None, *,
                 redact: Callable[[str], str] | None = None) -> None:
        self._by_key: dict[str, str] | None = None
        self._redact = redact
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
                raise ConfigError(f"labels must be a collection of strings, got {labels!r}")
            by_key: dict[str, str] = {}
            for label in labels:
                if not isinstance(label, str) or not label.strip():
                    raise ConfigError(f"labels must be non-empty strings, got {label!r}")
                key = label_key(label)
                if not key:
                    raise ConfigError(f"label {label!r} is only quotes or punctuation")
                by_key.setdefault(key, label)
            if not by_key:
                raise ConfigError("labels must not be empty")
            self._by_key = by_key
            # Longest first, so nested labels resolve to the most specific one.
            self._prefixes = sorted(by_key, key=len, reverse=True)

    @property
    def fixed(self) -> bool:
        return self._by_key is not None

    @property
    def labels(self) -> list[str] | None:
        return None if self._by_key is None else list(self._by_key.values())

    def normalise(self, output: object) -> str | None:
        """The label ``output`` names, or ``None`` when it is not a valid label. Never raises."""
        if not isinstance(output, str):
            return None
        # Free text that happens to be JSON names its label in a label field, never in some
        # other lone string ({"reason": "refund"} is no answer).
        from_json = json_label(output, single_field=False) if "{" in output[:16] else None
        if from_json is not None:
            output = from_json
        key = label_key(output)
        if not key:
            return None
        if self._by_key is None:
            label = unicodedata.normalize("NFKC", output).strip().strip(_QUOTES).strip()
            return label if label and self._kept_as_is(label) else None
        exact = self._by_key.get(key)
        if exact is not None or from_json is not None:
            return exact
        return self._leading_label(key)

    def _kept_as_is(self, label: str) -> bool:
        if self._redact is None:
            return True
        try:
            return self._redact(label) == label
        except Exception:  # the hook's failure is the engine's to report, on the input
            return False

    def _leading_label(self, key: str) -> str | None:
        # A label then an explanation: the label must end at a word boundary ("refunds" is not
        # "refund"). Two labels starting the same text are nested ("card", "card arrival"), since
        # both are prefixes of it; the longest (checked first) is the one meant.
        for label_key in self._prefixes:
            if (key.startswith(label_key) and len(key) > len(label_key)
                    and not key[len(label_key)].isalnum()):
                return self._by_key[label_key]  # type: ignore[index]
        return None
