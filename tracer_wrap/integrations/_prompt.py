"""Read an LLM request as a classification: which task it belongs to, and which text it classifies.

SDK-free: works on the plain keyword arguments of ``chat.completions.create`` / ``.parse``,
``responses.create`` and anthropic ``messages.create``, so it imports neither SDK.

The *task key* names the prompt template: a hash of the model, the system prompt, every message but
the classified one, the output format (``response_format`` / ``text.format`` / ``output_config``)
and the forced tool. The *text* is the last user message, or the system prompt when that is where
the template puts it: a :class:`TemplateLearner` sees that once a few calls share every part of
the request but their system prompt. When the template wraps the text in a longer message
(``"Classify this review:\\n{text}\\nAnswer with one word."``) the learner finds the constant prefix
and suffix from a few calls, strips them from the text and puts them into the task key, so the key
does not depend on the text. A view says whether its prompt *recurs* (the learner met it before):
a prompt met once (a chat turn with its own history, a prompt built around a retrieved document)
is no template yet.

The module also decides the *output shape* of a request (plain text, a JSON field, a forced tool's
argument): a call whose answer cannot be one label is not classification-shaped and gets no view;
and it keeps the one list of request options a local answer cannot honour exactly
(:data:`LOCAL_ANSWER_BLOCKERS`): such a call is traced, and always goes to the LLM.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..labels import LABEL_FIELD_NAMES

__all__ = [
    "ANSWER_FIELDS",
    "LOCAL_ANSWER_BLOCKERS",
    "Blocker",
    "OutputShape",
    "PromptView",
    "TemplateLearner",
    "anthropic_messages_view",
    "anthropic_output_shape",
    "label_field_of_schema",
    "local_answer_blocker",
    "openai_chat_output_shape",
    "openai_chat_view",
    "openai_responses_output_shape",
    "openai_responses_view",
    "request_body",
    "usage_of",
]


@dataclass(frozen=True)
class PromptView:
    """A classification call: ``task_key`` names its prompt template, ``text`` is what it
    classifies.

    ``slot`` says where the text was found (``"user"``: the last user message, ``"system"``: the
    system prompt); ``group`` names the rest of the prompt; ``recurring`` is False when the
    learner meets this prompt for the first time (a prompt met once is no template yet).
    """

    task_key: str
    text: str
    slot: Literal["user", "system"] = field(default="user", compare=False)
    group: str = field(default="", compare=False)
    recurring: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class OutputShape:
    """How a request wants its single label delivered.

    ``kind="text"``: the assistant's text is the label. ``kind="json"``: a JSON object whose
    ``field``
    is the label (``response_format`` / structured outputs). ``kind="tool"``: a forced call of tool
    ``tool_name`` whose argument ``field`` is the label. ``others`` names the other properties the
    schema requires (the label is readable, but ``{field: label}`` alone breaks the schema: such
    a call is traced and never answered locally).
    """

    kind: Literal["text", "json", "tool"] = "text"
    field: str | None = None
    tool_name: str | None = None
    others: tuple[str, ...] = ()


# -- label fields of JSON schemas ------------------------------------------------------------


def label_field_of_schema(schema: Any) -> str | None:
    """The property of a JSON schema that holds the label: a label/category/class/intent property,
    else the single string/enum property; None when there is none or several."""
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return None
    defs = schema.get("$defs") or schema.get("definitions") or {}
    stringy = [name for name, prop in properties.items() if _is_string_schema(prop, defs)]
    for name in LABEL_FIELD_NAMES:
        if name in stringy:
            return name
    return stringy[0] if len(stringy) == 1 else None


def _shape_of_schema(kind: Literal["json", "tool"], schema: Any,
                     tool_name: str | None = None) -> OutputShape | None:
    """The shape of an output whose JSON ``schema`` holds the label; None when it holds none."""
    field = label_field_of_schema(schema)
    if field is None:
        return None
    required = schema.get("required")
    others = tuple(str(name) for name in required if name != field) \
        if isinstance(required, list) else ()
    return OutputShape(kind, field, tool_name, others)


def _is_string_schema(prop: Any, defs: Mapping[str, Any]) -> bool:
    if isinstance(prop, Mapping) and isinstance(prop.get("$ref"), str):
        prop = defs.get(prop["$ref"].rsplit("/", 1)[-1])
    if not isinstance(prop, Mapping):
        return False
    if prop.get("type") == "string" or isinstance(prop.get("const"), str):
        return True
    enum = prop.get("enum")
    return isinstance(enum, list) and bool(enum) and all(isinstance(v, str) for v in enum)


@functools.lru_cache(maxsize=256)
def _model_schema(model: type) -> dict[str, Any]:
    # Generating a pydantic schema costs about a millisecond; response formats are a few classes.
    schema: dict[str, Any] = model.model_json_schema()  # type: ignore[attr-defined]
    return schema


def _schema_of(response_format: Any) -> Any:
    """The JSON schema of a pydantic model class or of a ``json_schema`` response format dict."""
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return _model_schema(response_format)
    if isinstance(response_format, Mapping):
        if "json_schema" in response_format:  # chat completions
            return (response_format.get("json_schema") or {}).get("schema")
        return response_format.get("schema")  # responses API and anthropic
    return None


def _format_shape(fmt: Any) -> OutputShape | None:
    """Shape of a response format (dict or pydantic class); None when it cannot hold one label."""
    if fmt is None:
        return OutputShape()
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        if kind in (None, "text"):
            return OutputShape()
        if kind == "json_object":
            return OutputShape("json", LABEL_FIELD_NAMES[0])
        if kind != "json_schema":
            return None
    return _shape_of_schema("json", _schema_of(fmt))


# -- output shapes per API -----------------------------------------------------------------------


def openai_chat_output_shape(kwargs: Mapping[str, Any]) -> OutputShape | None:
    """Output shape of a ``chat.completions.create``/``parse`` request; None if not one label
    (a free ``tool_choice`` with tools, an unknown or multi-field format)."""
    tools = [t for t in kwargs.get("tools") or () if isinstance(t, Mapping)]
    choice = kwargs.get("tool_choice")
    if tools and choice != "none":
        functions = {
            t["function"].get("name"): t["function"]
            for t in tools
            if t.get("type") == "function" and isinstance(t.get("function"), Mapping)
        }
        name: Any = None
        if isinstance(choice, Mapping) and choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
        elif choice == "required" and len(functions) == 1 and len(tools) == 1:
            name = next(iter(functions))
        if name not in functions:
            return None  # the model may or may not call a tool: an agent step, not a classifier
        return _shape_of_schema("tool", _function_parameters(functions[name]), name)
    return _format_shape(kwargs.get("response_format"))


def _function_parameters(function: Any) -> Any:
    # openai.pydantic_function_tool() stores a PydanticFunctionTool, a dict subclass with .model
    model = getattr(function, "model", None)
    if isinstance(model, type) and hasattr(model, "model_json_schema"):
        return _model_schema(model)
    return function.get("parameters")


def openai_responses_output_shape(kwargs: Mapping[str, Any]) -> OutputShape | None:
    """Output shape of a ``responses.create`` request; None if not one label."""
    tools = [t for t in kwargs.get("tools") or () if isinstance(t, Mapping)]
    choice = kwargs.get("tool_choice")
    if tools and choice != "none":
        functions = {t.get("name"): t for t in tools if t.get("type") == "function"}
        name: Any = None
        if isinstance(choice, Mapping) and choice.get("type") == "function":
            name = choice.get("name")
        elif choice == "required" and len(functions) == 1 and len(tools) == 1:
            name = next(iter(functions))
        if name not in functions:
            return None
        return _shape_of_schema("tool", functions[name].get("parameters"), name)
    text = kwargs.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    text_format = kwargs.get("text_format")  # responses.parse / .stream: a type, made a schema
    if fmt is None and isinstance(text_format, type):
        return _format_shape(text_format)
    return _format_shape(fmt)


def anthropic_output_shape(kwargs: Mapping[str, Any]) -> OutputShape | None:
    """Output shape of an anthropic ``messages.create`` request; None if not one label."""
    tools = [t for t in kwargs.get("tools") or () if isinstance(t, Mapping)]
    choice = kwargs.get("tool_choice") or {"type": "auto"}
    if tools and choice.get("type") != "none":
        by_name = {t.get("name"): t for t in tools if "input_schema" in t}
        name: Any = None
        if choice.get("type") == "tool":
            name = choice.get("name")
        elif choice.get("type") == "any" and len(by_name) == 1 and len(tools) == 1:
            name = next(iter(by_name))
        if name not in by_name:
            return None
        return _shape_of_schema("tool", by_name[name].get("input_schema"), name)
    # The SDK's parse / stream turn an ``output_format`` type into ``output_config.format``,
    # replacing any given there.
    output_format = kwargs.get("output_format")
    if isinstance(output_format, type):
        return _format_shape(output_format)
    config = kwargs.get("output_config")
    fmt = config.get("format") if isinstance(config, Mapping) else None
    return _format_shape(fmt if fmt is not None else output_format)


# -- template learning ---------------------------------------------------------------------------

# Characters that may sit right against the classified text inside a template ('"{text}"').
_DELIMITERS = frozenset("\"'`«»“”‘’<>[](){}:|")


_MAX_CUTS = 16  # candidate cuts per side: templates put few delimiters around the text
_SCAN_CHARS = 1024  # how far into a message a template affix may reach


def _is_apostrophe(message: str, i: int) -> bool:
    """Whether the quote at ``i`` sits inside a word ("don't"), where no template cuts."""
    return (message[i] in "'’" and 0 < i < len(message) - 1
            and message[i - 1].isalnum() and message[i + 1].isalnum())


def _affix_candidates(message: str) -> tuple[list[str], list[str]]:
    """Prefixes and suffixes of ``message`` that could be template boilerplate.

    Natural texts often share opening words ("Hi, I would like to ") or a final "." by chance; a
    template affix meets the text at a line break or a delimiter such as ':' or a quote, so only
    cuts right after such a character (plus spaces) start a prefix, and only cuts right before one
    (after spaces) start a suffix. Cuts never fall inside a word, and plain texts without
    delimiters cost no search at all.
    """
    prefixes: list[str] = []
    for i, char in enumerate(message[:_SCAN_CHARS]):
        if (char == "\n" or char in _DELIMITERS) and not _is_apostrophe(message, i):
            cut = i + 1
            while cut < len(message) and message[cut] in " \t":
                cut += 1
            if message[:cut].strip() and (not prefixes or prefixes[-1] != message[:cut]):
                prefixes.append(message[:cut])
            if len(prefixes) >= _MAX_CUTS:
                break
    suffixes: list[str] = []
    start = max(0, len(message) - _SCAN_CHARS)
    for i in range(len(message) - 1, start - 1, -1):
        char = message[i]
        if (char == "\n" or char in _DELIMITERS) and not _is_apostrophe(message, i):
            cut = i
            while cut > 0 and message[cut - 1] in " \t":
                cut -= 1
            if message[cut:].strip() and (not suffixes or suffixes[-1] != message[cut:]):
                suffixes.append(message[cut:])
            if len(suffixes) >= _MAX_CUTS:
                break
    return prefixes, suffixes


@dataclass(frozen=True)
class _Template:
    prefix: str
    suffix: str

    def middle(self, message: str) -> str | None:
        if len(message) <= len(self.prefix) + len(self.suffix):
            return None
        if not (message.startswith(self.prefix) and message.endswith(self.suffix)):
            return None
        text = message[len(self.prefix): len(message) - len(self.suffix)].strip()
        return text or None


class TemplateLearner:
    """Learns the constant prefix/suffix a prompt template puts around the classified text.

    Messages are grouped by a caller-given ``group`` (the rest of the prompt). Within a group, once
    ``min_examples`` messages share a prefix and/or suffix that looks like template boilerplate (it
    meets the text at a line break or a delimiter such as ``:`` or a quote, never inside a word),
    the longest such (prefix, suffix) pair becomes a template; later
    messages that match it are split without search. Until then a message is its own text with an
    empty template, so the first few calls of a wrapped template land under the plain key.

    Where the text sits: :meth:`text_in_system` tells, for a prompt whose every part but the
    system prompt is constant (its ``group``), whether ``min_system_prompts`` calls with distinct
    system prompts were seen, i.e. the template puts the text in the system prompt. Such a
    template is a task once its boilerplate is learned (the text must be set apart by a line
    break or a delimiter, as above).

    Limits: texts that really share an opening line (``"Hi team,\n..."``) in ``min_examples``
    calls are taken for a template, which splits their task in two; raise ``min_examples`` for such
    traffic, or name the task explicitly.

    Thread-safe (one lock); memory is bounded by ``max_groups`` groups of at most ``pool_size``
    recent unmatched messages and ``max_templates`` templates each, and as many groups of system
    prompts (candidates and confirmed ones apart, so traffic of one-off prompts never evicts a
    confirmed one).
    """

    def __init__(self, min_examples: int = 4, pool_size: int = 32,
                 max_templates: int = 8, max_groups: int = 1024,
                 min_system_prompts: int = 3) -> None:
        if min_examples < 2:
            raise ValueError("min_examples must be >= 2: one message has no common prefix")
        if min_system_prompts < 2:
            raise ValueError("min_system_prompts must be >= 2: one prompt shows no variation")
        self.min_examples = min_examples
        self.pool_size = pool_size
        self.max_templates = max_templates
        self.max_groups = max_groups
        self.min_system_prompts = min_system_prompts
        self._lock = threading.Lock()
        self._groups: OrderedDict[str, tuple[list[_Template], deque[str]]] = OrderedDict()
        self._system_candidates: OrderedDict[str, list[str]] = OrderedDict()
        self._system_groups: OrderedDict[str, None] = OrderedDict()

    def known(self, group: str) -> bool:
        """Whether a message of ``group`` was split before (the prompt recurs)."""
        with self._lock:
            return group in self._groups

    def text_in_system(self, group: str, system: str) -> bool:
        """Record that a call of ``group`` had system prompt ``system``; return whether calls of
        ``group`` put their text in the system prompt (``min_system_prompts`` distinct ones seen;
        the earlier ones then become the first examples of the group's template)."""
        with self._lock:
            if group in self._system_groups:
                self._system_groups.move_to_end(group)
                return True
            seen = self._system_candidates.get(group)
            if seen is None:
                seen = self._system_candidates[group] = []
                while len(self._system_candidates) > self.max_groups:
                    self._system_candidates.popitem(last=False)
            if system not in seen:
                seen.append(system)
            if len(seen) < self.min_system_prompts:
                return False
            del self._system_candidates[group]
            self._system_groups[group] = None
            while len(self._system_groups) > self.max_groups:
                self._system_groups.popitem(last=False)
            self._group(group)[1].extend(m for m in seen if m != system)
            return True

    def split(self, group: str, message: str) -> tuple[str, str, str]:
        """Return ``(prefix, text, suffix)`` of ``message``; learns from it if no template matches.

        ``prefix + text + suffix`` equals ``message`` up to whitespace around ``text``.
        """
        with self._lock:
            templates, pool = self._group(group)
            for template in templates:
                text = template.middle(message)
                if text is not None:
                    return template.prefix, text, template.suffix
            learned = self._learn(message, pool)
            if learned is None:
                pool.append(message)
                return "", message, ""
            templates.insert(0, learned)
            del templates[self.max_templates:]
            # The messages it explains are no evidence for another template.
            kept = [m for m in pool if learned.middle(m) is None]
            pool.clear()
            pool.extend(kept)
            text = learned.middle(message)
            return learned.prefix, text if text is not None else message, learned.suffix

    def templates(self, group: str) -> list[tuple[str, str]]:
        """The learned ``(prefix, suffix)`` pairs of ``group``, most recent first."""
        with self._lock:
            entry = self._groups.get(group)
            return [(t.prefix, t.suffix) for t in entry[0]] if entry else []

    def _group(self, group: str) -> tuple[list[_Template], deque[str]]:
        entry = self._groups.get(group)
        if entry is None:
            entry = ([], deque(maxlen=self.pool_size))
            self._groups[group] = entry
            while len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(group)
        return entry

    def _learn(self, message: str, pool: deque[str]) -> _Template | None:
        """The template with the longest boilerplate that ``min_examples`` messages (this one and
        ``min_examples - 1`` pooled ones) share, or None."""
        need = self.min_examples - 1
        if len(pool) < need:
            return None
        prefixes, suffixes = _affix_candidates(message)
        if not prefixes and not suffixes:
            return None  # the common case for untemplated traffic
        supported_prefixes = [""] + [p for p in prefixes
                                     if sum(m.startswith(p) for m in pool) >= need]
        supported_suffixes = [""] + [s for s in suffixes
                                     if sum(m.endswith(s) for m in pool) >= need]
        best: _Template | None = None
        for prefix in supported_prefixes:
            for suffix in supported_suffixes:
                if not prefix and not suffix:
                    continue
                candidate = _Template(prefix, suffix)
                if candidate.middle(message) is None:
                    continue
                if (best is not None
                        and len(prefix) + len(suffix) <= len(best.prefix) + len(best.suffix)):
                    continue
                if sum(candidate.middle(m) is not None for m in pool) >= need:
                    best = candidate
        return best


# -- views ---------------------------------------------------------------------------------------


#: Types :func:`_canonical` keeps as they are; checked by exact type first, since a request's
#: context is hashed on every call and is mostly made of these (the ABC check of ``Mapping`` is
#: the slow one).
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


def _canonical(value: Any) -> Any:
    """A JSON-able, process-independent form of a request value (for hashing)."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if kind is list:
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return {"pydantic": value.__name__, "schema": _model_schema(value)}
    if hasattr(value, "model_dump"):
        return _canonical(value.model_dump(mode="json", exclude_none=True))
    # Anything else (an SDK sentinel, a callable) must not leak its memory address into the key.
    return type(value).__qualname__


# One encoder for every digest (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _digest(parts: Mapping[str, Any]) -> str:
    blob = _ENCODER.encode(_canonical(parts))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=1024)
def _task_key(api: str, group: str, prefix: str, suffix: str) -> str:
    """The task key of a template: its group and the affixes split off its text. Cached: a
    template's calls share all four, and the key would otherwise be a second digest per call."""
    return f"{api}:{_digest({'group': group, 'prefix': prefix, 'suffix': suffix})}"


def _as_dict(message: Any) -> Mapping[str, Any] | None:
    if isinstance(message, Mapping):
        return message
    if hasattr(message, "model_dump"):  # an SDK message object passed back in a conversation
        dumped = message.model_dump(mode="json", exclude_none=True)
        return dumped if isinstance(dumped, Mapping) else None
    return None


def _content_text(content: Any, text_types: frozenset[str]) -> str | None:
    """Text of a content that is a string or a list of text parts; None for any other part."""
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)) or not content:
        return None
    texts: list[str] = []
    for part in content:
        part = _as_dict(part)
        if (part is None or part.get("type") not in text_types
                or not isinstance(part.get("text"), str)):
            return None  # an image, audio or file input is not a text classification
        texts.append(part["text"])
    return "\n".join(texts)


_SYSTEM_ROLES = frozenset({"system", "developer"})


def _view(api: str, context: Mapping[str, Any], user: str | None, system: str | None,
          without_system: Mapping[str, Any] | None,
          learner: TemplateLearner | None) -> PromptView | None:
    """The view of a request whose text is the last user message ``user``, or its plain-text
    system prompt ``system`` when the template puts it there (``context`` is every other part of
    the prompt, ``without_system`` the same without the system prompt)."""
    if system is not None and without_system is not None:
        # The prompt without its system prompt: constant when the text sits in the system prompt.
        group = _digest({"api": api, "slot": "system", **without_system, "user": user})
        if user is None or (learner is not None and learner.text_in_system(group, system)):
            return _split(api, "system", group, system, learner, True)
    if user is None:
        return None
    group = _digest({"api": api, **context})
    return _split(api, "user", group, user, learner, learner is None or learner.known(group))


def _split(api: str, slot: Literal["user", "system"], group: str, message: str,
           learner: TemplateLearner | None, recurring: bool) -> PromptView | None:
    """The view of ``message`` split by the learner's template of ``group``. A system prompt
    recurs once the learner knows its template: the whole prompt is no text to classify."""
    if not message.strip():
        return None
    if learner is None:
        prefix, text, suffix = "", message, ""
    else:
        prefix, text, suffix = learner.split(group, message)
        if slot == "system":
            recurring = bool(prefix or suffix)
    return PromptView(task_key=_task_key(api, group, prefix, suffix), text=text.strip(),
                      slot=slot, group=group, recurring=recurring)


def _system_prompt(message: Mapping[str, Any] | None, text_types: frozenset[str]) -> str | None:
    """The text of ``message`` when it is a plain-text system (or developer) message."""
    if message is None or message.get("role") not in _SYSTEM_ROLES:
        return None
    return _content_text(message.get("content"), text_types)


_CHAT_TEXT = frozenset({"text"})
_RESPONSES_TEXT = frozenset({"input_text"})


def openai_chat_view(kwargs: Mapping[str, Any], learner: TemplateLearner | None = None
                     ) -> PromptView | None:
    """The view of a ``chat.completions.create``/``parse`` call, or None if it is not a
    classification: no final user message (nor a lone system message), a non-text part, tools
    without a forced function, legacy ``functions``, or an output format that cannot hold one
    label. Never raises on odd input."""
    try:
        messages = [_as_dict(m) for m in kwargs.get("messages") or ()]
        if not messages or any(m is None for m in messages):
            return None
        if openai_chat_output_shape(kwargs) is None:
            return None
        if kwargs.get("functions") and kwargs.get("function_call") != "none":
            return None  # legacy function calling: an answer may be a function_call, not a label
        user, earlier = _last_user(messages, _CHAT_TEXT)  # type: ignore[arg-type]
        if user is None and earlier is None:
            return None
        earlier = earlier or []
        context = {
            "model": kwargs.get("model"),
            "messages": earlier,
            "response_format": kwargs.get("response_format"),
            "tools": kwargs.get("tools"),
            "tool_choice": kwargs.get("tool_choice"),
            "functions": kwargs.get("functions"),
        }
        system = _system_prompt(earlier[0], _CHAT_TEXT) if earlier else None
        without_system = {**context, "messages": earlier[1:]} if system is not None else None
        return _view("openai.chat", context, user, system, without_system, learner)
    except (AttributeError, TypeError, ValueError):
        return None


def _last_user(items: Sequence[Mapping[str, Any]], text_types: frozenset[str]
               ) -> tuple[str | None, list[Mapping[str, Any]] | None]:
    """``(text of the last user message, the messages before it)``; ``(None, items)`` for a lone
    system message (the text is in it); ``(None, None)`` when the request classifies no text."""
    last = items[-1]
    if last.get("role") == "user" and last.get("type", "message") == "message":
        user = _content_text(last.get("content"), text_types)
        return (user, list(items[:-1])) if user is not None else (None, None)
    if len(items) == 1 and last.get("role") in _SYSTEM_ROLES:
        return None, list(items)
    return None, None


def openai_responses_view(kwargs: Mapping[str, Any],
                          learner: TemplateLearner | None = None) -> PromptView | None:
    """The view of a ``responses.create`` / ``parse`` / ``stream`` call, or None if it is not a
    classification (also when it depends on server-side state: ``previous_response_id``,
    ``conversation``, a stored ``prompt``, an existing ``response_id``)."""
    try:
        if any(kwargs.get(k) is not None
               for k in ("previous_response_id", "conversation", "prompt", "response_id")):
            return None
        if openai_responses_output_shape(kwargs) is None:
            return None
        raw_input = kwargs.get("input")
        user: str | None
        earlier: list[Mapping[str, Any]] | None
        if isinstance(raw_input, str):
            user, earlier = raw_input, []
        else:
            items = [_as_dict(item) for item in raw_input or ()]
            if not items or any(i is None for i in items):
                return None
            user, earlier = _last_user(items, _RESPONSES_TEXT)  # type: ignore[arg-type]
            if user is None and earlier is None:
                return None
            earlier = earlier or []
        instructions = kwargs.get("instructions")
        context = {
            "model": kwargs.get("model"),
            "instructions": instructions,
            "input": earlier,
            "text": kwargs.get("text"),
            "tools": kwargs.get("tools"),
            "tool_choice": kwargs.get("tool_choice"),
        }
        if kwargs.get("text_format") is not None:
            context["text_format"] = kwargs["text_format"]
        system: str | None = None
        without_system: dict[str, Any] | None = None
        if isinstance(instructions, str):
            system, without_system = instructions, {**context, "instructions": None}
        elif instructions is None and earlier:
            system = _system_prompt(earlier[0], _RESPONSES_TEXT | _CHAT_TEXT)
            without_system = {**context, "input": earlier[1:]} if system is not None else None
        return _view("openai.responses", context, user, system, without_system, learner)
    except (AttributeError, TypeError, ValueError):
        return None


def anthropic_messages_view(kwargs: Mapping[str, Any],
                            learner: TemplateLearner | None = None) -> PromptView | None:
    """The view of an anthropic ``messages.create`` / ``parse`` / ``stream`` call, or None if it
    is not a classification (no final user message, an image/document block, tools without a
    forced tool)."""
    try:
        messages = [_as_dict(m) for m in kwargs.get("messages") or ()]
        if not messages or any(m is None for m in messages):
            return None
        if messages[-1].get("role") != "user":  # type: ignore[union-attr]
            return None
        if anthropic_output_shape(kwargs) is None:
            return None
        message = _content_text(messages[-1].get("content"), _CHAT_TEXT)  # type: ignore[union-attr]
        if message is None:
            return None
        system = kwargs.get("system")
        context = {
            "model": kwargs.get("model"),
            "system": system,
            "messages": messages[:-1],
            "tools": kwargs.get("tools"),
            "tool_choice": kwargs.get("tool_choice"),
            "output_config": kwargs.get("output_config"),
            "output_format": kwargs.get("output_format"),
        }
        system_text = _content_text(system, _CHAT_TEXT) if system is not None else None
        without_system = {**context, "system": None} if system_text is not None else None
        return _view("anthropic.messages", context, message, system_text, without_system,
                     learner)
    except (AttributeError, TypeError, ValueError):
        return None


# -- options a local answer cannot honour --------------------------------------------------------


@dataclass(frozen=True)
class Blocker:
    """A request option a local answer cannot honour exactly; a request that sets it (as
    ``sets(value, texts)`` judges, ``texts()`` giving the texts a local answer could generate)
    is still traced, and always goes to the LLM."""

    option: str
    apis: frozenset[str]
    why: str
    sets: Callable[[Any, Callable[[], Sequence[str]]], bool]


def _truthy(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return bool(value)


def _given(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return value is not None


def _true(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return value is True


def _several(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return value not in (None, 1)


def _cuts(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    stops = [value] if isinstance(value, str) else list(value or ())
    stops = [s for s in stops if isinstance(s, str) and s]
    return bool(stops) and any(stop in text for text in texts() for stop in stops)


def _exceeds(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    # A token is at least one byte of UTF-8: an answer no longer in bytes than the limit fits
    # whatever the tokenizer; a longer one might be cut (finish_reason "length").
    if not isinstance(value, int) or isinstance(value, bool):
        return True  # an odd limit: the LLM honours it, whatever it is
    return any(len(text.encode("utf-8")) > value for text in texts())


def _audio(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return "audio" in (value or ())


def _thinking(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return isinstance(value, Mapping) and value.get("type") not in (None, "disabled")


def _summary(value: Any, texts: Callable[[], Sequence[str]]) -> bool:
    return isinstance(value, Mapping) and bool(value.get("summary") or
                                               value.get("generate_summary"))


_CHAT, _RESPONSES, _MESSAGES = "openai.chat", "openai.responses", "anthropic.messages"

#: Every request option a local answer cannot honour exactly, in one list: a request that sets
#: one is traced but always goes to the LLM (a tool choice that is not one forced classification
#: tool, or an output format without one label field, is no classification at all: untouched).
LOCAL_ANSWER_BLOCKERS: tuple[Blocker, ...] = (
    Blocker("logprobs", frozenset({_CHAT}), "a local answer has no log probabilities", _truthy),
    Blocker("top_logprobs", frozenset({_CHAT, _RESPONSES}),
            "a local answer has no log probabilities", _given),
    Blocker("n", frozenset({_CHAT}), "a local answer is one choice", _several),
    Blocker("stop", frozenset({_CHAT}), "a stop sequence would cut the label", _cuts),
    Blocker("stop_sequences", frozenset({_MESSAGES}), "a stop sequence would cut the label",
            _cuts),
    Blocker("max_tokens", frozenset({_CHAT, _MESSAGES}), "the token limit could cut the label",
            _exceeds),
    Blocker("max_completion_tokens", frozenset({_CHAT}), "the token limit could cut the label",
            _exceeds),
    Blocker("max_output_tokens", frozenset({_RESPONSES}), "the token limit could cut the label",
            _exceeds),
    Blocker("modalities", frozenset({_CHAT}), "a local answer has no audio", _audio),
    Blocker("audio", frozenset({_CHAT}), "a local answer has no audio", _given),
    Blocker("web_search_options", frozenset({_CHAT}), "a local answer searches nothing", _given),
    Blocker("store", frozenset({_CHAT, _RESPONSES}),
            "the provider is asked to keep the answer", _true),
    Blocker("background", frozenset({_RESPONSES}),
            "a background response is polled from the provider", _truthy),
    Blocker("include", frozenset({_RESPONSES}),
            "a local answer has none of the extra output asked for", _truthy),
    Blocker("reasoning", frozenset({_RESPONSES}), "a local answer has no reasoning summary",
            _summary),
    Blocker("thinking", frozenset({_MESSAGES}), "a local answer has no thinking blocks",
            _thinking),
)


_OUTPUT_SHAPES: dict[str, Callable[[Mapping[str, Any]], OutputShape | None]] = {
    _CHAT: openai_chat_output_shape, _RESPONSES: openai_responses_output_shape,
    _MESSAGES: anthropic_output_shape}

#: The request fields a request view or a local answer reads: an ``extra_body`` that sets one
#: changes what the provider answers behind the arguments tracer_wrap read.
ANSWER_FIELDS = frozenset({
    "model", "messages", "input", "instructions", "system", "response_format", "text",
    "text_format", "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
    "output_config", "output_format", "stream", "stream_options", "metadata", "prompt",
    "previous_response_id", "conversation"})


def request_body(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The body the provider receives for the SDK arguments ``kwargs``: the SDK merges
    ``extra_body`` over them (``kwargs`` itself when there is none)."""
    extra = kwargs.get("extra_body")
    if not isinstance(extra, Mapping) or not extra:
        return kwargs
    return {**kwargs, **extra}


def local_answer_blocker(api: str, kwargs: Mapping[str, Any],
                         texts: Callable[[], Sequence[str]]) -> str | None:
    """Why a local answer cannot honour the ``api`` request ``kwargs`` (``"option: why"``), or
    None when it can. ``api`` is ``"openai.chat"``, ``"openai.responses"`` or
    ``"anthropic.messages"``; ``texts()`` gives the texts a local answer could generate (read only
    when a stop sequence or a token limit is set: a limit blocks unless every text fits in it at
    one byte of UTF-8 per token). The options are read in the body the provider receives
    (``extra_body`` merged over ``kwargs``), and an ``extra_body`` that sets a field of
    :data:`ANSWER_FIELDS` (or is no mapping) blocks, as does an output schema (response format or
    forced tool) that requires other fields beside the label. Never raises: a fault blocks the
    local answer."""
    extra = kwargs.get("extra_body")
    if extra is not None:
        if not isinstance(extra, Mapping):
            return "extra_body: an unknown body a local answer cannot read"
        overridden = sorted(k for k in extra if k in ANSWER_FIELDS)
        if overridden:
            return f"extra_body: sets {', '.join(map(str, overridden))}, read by a local answer"
        kwargs = request_body(kwargs)
    shape = _OUTPUT_SHAPES[api](kwargs) if api in _OUTPUT_SHAPES else None
    if shape is not None and shape.others:
        return (f"{shape.kind} schema: requires {', '.join(shape.others)} beside the label,"
                f" which a local answer lacks")
    for blocker in LOCAL_ANSWER_BLOCKERS:
        if api not in blocker.apis or kwargs.get(blocker.option) is None:
            continue
        try:
            if blocker.sets(kwargs[blocker.option], texts):
                return f"{blocker.option}: {blocker.why}"
        except Exception:  # an odd value: the LLM honours it, whatever it is
            return f"{blocker.option}: {blocker.why}"
    return None


# -- usage ---------------------------------------------------------------------------------------


def usage_of(response: Any) -> dict[str, int]:
    """Token counts of a real provider response, for cost accounting.

    Returns ``{"input_tokens", "output_tokens"}`` plus ``"cached_input_tokens"`` when the provider
    reports cache reads. Works on OpenAI ``ChatCompletion`` / usage-bearing ``ChatCompletionChunk``
    (``prompt_tokens`` / ``completion_tokens``), Responses API ``Response`` and anthropic
    ``Message``
    (``input_tokens`` / ``output_tokens``), and anthropic ``message_start`` / ``message_delta``
    stream events. Returns ``{}`` when the object carries no usage (a chunk without it), so
    "unknown" is never mistaken for "free".
    """
    usage = getattr(response, "usage", None)
    if usage is None:
        message = getattr(response, "message", None)  # anthropic message_start event
        usage = getattr(message, "usage", None)
    if usage is None:
        return {}
    if getattr(usage, "prompt_tokens", None) is not None:
        counts = {"input_tokens": int(usage.prompt_tokens),
                  "output_tokens": int(usage.completion_tokens or 0)}
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    else:
        counts = {"input_tokens": int(getattr(usage, "input_tokens", None) or 0),
                  "output_tokens": int(getattr(usage, "output_tokens", None) or 0)}
        cached = getattr(getattr(usage, "input_tokens_details", None), "cached_tokens", None)
        cached = cached if cached is not None else getattr(usage, "cache_read_input_tokens", None)
    if cached:
        counts["cached_input_tokens"] = int(cached)
    return counts
