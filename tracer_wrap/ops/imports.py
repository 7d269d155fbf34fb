"""Start warm: read the LLM calls teams already logged, find the classification tasks in them, and
import the ones asked for (``tracer-wrap import``).

Formats (``--format``, else detected from the file; a sample of each is in ``examples/imports/``):

``tracer``     JSONL lines ``{"input", "teacher"}`` (``tracer-wrap export``, tracer-llm)
``csv``        CSV with a header row: an ``input`` (or ``text``) and a ``label`` (or ``teacher``,
               ``category``, ``output``) column
``openai``     OpenAI chat JSONL: fine-tuning lines ``{"messages": [..., assistant answer]}``, or
               request/answer pairs ``{"request" | "body": request, "response": answer |
               {"status_code", "body": answer}}`` (a batch input line joined with its output)
``langfuse``   Langfuse observations (a UI export, ``GET /api/public/observations``, or traces with
               their ``observations``): GENERATION observations, their input messages and output
``langsmith``  LangSmith runs: ``run_type`` "llm", ``inputs.messages`` (OpenAI dicts or LangChain
               messages) and ``outputs`` (a completion, or LangChain generations)
``otlp``       OpenTelemetry OTLP JSON (``resourceSpans`` / ``scopeSpans`` / ``spans``; one
               document, or one per line as the collector's file exporter writes them): GenAI
               spans with ``gen_ai.input.messages`` / ``gen_ai.output.messages``, indexed
               ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*`` attributes, or message events
``helicone``   Helicone's request export: ``request_body`` and ``response_body`` of each request

Discovery works as zero-code mode does: every record is rebuilt as the request it was and read by
the same request views (:mod:`tracer_wrap.integrations._prompt`). A request that is not
classification-shaped (a free tool choice, several answers, an image, no final user message) or
has no answer is skipped with its reason; the others are grouped into tasks by prompt template
(the :class:`~tracer_wrap.integrations.TemplateLearner` sees every record first, so a template's
first records join it too) under the task key live traffic of that template gets, so imported
traces and the gateway's or autolog's share a task. A task looks like classification when it has
few distinct answers over many records (the rule of ``tracer-wrap tasks``). The flat formats
(``tracer``, ``csv``) hold one task, named on import.

A file is read whole before anything is imported: a malformed one raises ConfigError naming the
line or record, and nothing is imported.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import _untraceable
from ..errors import ConfigError
from ..integrations import (
    PromptView,
    TemplateLearner,
    anthropic_messages_view,
    openai_chat_view,
    openai_responses_view,
)
from ..integrations.zero_code import MAX_CLASSES, MAX_DISTINCT_SHARE, MIN_CALLS
from ..labels import LabelSet
from ..options import TaskOptions
from ..privacy import hash_input, hash_key
from ..store import Origin, Store
from ..store.base import NewTrace, check_new_traces
from ._answers import chat_answer, message_answer, messages_answer, responses_answer
from ._http import MAX_DEPTH, check_json_value

__all__ = ["FORMATS", "Discovery", "Found", "Record", "discover", "import_task", "import_tasks",
           "read_records"]

FORMATS = ("tracer", "csv", "openai", "langfuse", "langsmith", "otlp", "helicone")

CHAT = "openai.chat"
RESPONSES = "openai.responses"
MESSAGES = "anthropic.messages"
_VIEWS: dict[str, Callable[[Mapping[str, Any], TemplateLearner], PromptView | None]] = {
    CHAT: openai_chat_view, RESPONSES: openai_responses_view, MESSAGES: anthropic_messages_view}
# The request keys that shape a chat call's task (besides its messages), as the views read them.
_CHAT_KEYS = ("model", "response_format", "tools", "tool_choice", "functions", "function_call",
              "n", "parallel_tool_calls")
_INPUT_COLUMNS = ("input", "text", "prompt", "query", "question")
_LABEL_COLUMNS = ("label", "teacher", "category", "output", "answer", "intent", "class")


@dataclass(frozen=True)
class Record:
    """One logged call: ``where`` it is in the file; ``request``, the call rebuilt as the
    keyword arguments of ``api`` (``openai.chat``, ``openai.responses``,
    ``anthropic.messages``; ``""`` with ``text`` for the flat formats); ``answer``, its raw label
    (None: the answer holds none); ``skip``, why the record cannot be imported."""

    where: str
    api: str = ""
    request: Mapping[str, Any] | None = None
    answer: object = None
    text: str | None = None
    skip: str | None = None


@dataclass
class Found:
    """One task found in a file: its ``key`` (the task name live traffic of its template gets;
    ``""`` for the flat formats), ``api``, ``model``, a readable ``template`` and its
    ``(input, raw answer)`` rows."""

    key: str
    api: str
    model: str | None
    template: str
    rows: list[tuple[str, object]] = field(default_factory=list)
    #: Where each row is in the file (``path:line`` or ``path, record N``), for errors.
    wheres: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Records, distinct inputs and answers, and whether it looks like classification."""
        labels: Counter[str] = Counter()
        unlabelled = 0
        plain = LabelSet()
        for _, raw in self.rows:
            label = plain.normalise(raw)
            if label is None:
                unlabelled += 1
            else:
                labels[label] += 1
        records = len(self.rows)
        return {
            "task_key": self.key, "api": self.api, "model": self.model,
            "template": self.template, "records": records,
            "inputs": len({text for text, _ in self.rows}), "labels": len(labels),
            "no_label": unlabelled,
            "classification": (records >= MIN_CALLS and 0 < len(labels) <= MAX_CLASSES
                               and len(labels) <= MAX_DISTINCT_SHARE * records),
            "top_labels": [label for label, _ in labels.most_common(3)],
        }


@dataclass
class Discovery:
    """What a file holds: its ``format``, the number of ``records``, the ``tasks`` found (most
    records first) and the records ``skipped``, counted by reason."""

    path: str
    format: str
    records: int
    tasks: list[Found]
    skipped: Counter[str]

    def select(self, key: str) -> Found:
        """The task whose key is ``key`` or starts with it; ConfigError when none or several
        do."""
        exact = [t for t in self.tasks if t.key == key]
        matches = exact or [t for t in self.tasks if key and t.key.startswith(key)]
        if len(matches) != 1:
            known = ", ".join(t.key for t in self.tasks) or "none"
            how = "matches no task" if not matches else "matches several tasks"
            raise ConfigError(f"--task-key {key!r} {how} found in {self.path} (tasks: {known})")
        return matches[0]

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "format": self.format, "records": self.records,
                "skipped": dict(self.skipped), "tasks": [t.summary() for t in self.tasks]}


class _Bad(Exception):
    """A malformed record: becomes a ConfigError naming where it is."""


# -- reading files --------------------------------------------------------------------------------


def read_records(path: str | Path, fmt: str = "auto") -> tuple[str, list[Record]]:
    """``(format, records)`` of the file at ``path``; ``fmt`` ``"auto"`` detects the format.

    Raises ConfigError for a missing or unreadable file, an unknown or undetectable format, and
    a malformed record (naming its line, or its record number in a JSON document).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {str(path)!r}")
    if fmt not in ("auto", *FORMATS):
        raise ConfigError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "csv" or (fmt == "auto" and path.suffix.lower() in (".csv", ".tsv")):
        return "csv", _read_csv(path)
    documents = _json_documents(path)
    if fmt == "auto":
        fmt = _detect(path, documents)
    if fmt == "csv":
        return "csv", _read_csv(path)
    reader = _READERS[fmt]
    records: list[Record] = []
    for where, document in documents:
        try:
            records.extend(reader(where, document))
        except _Bad as exc:
            raise ConfigError(f"{exc}") from None
    return fmt, records


def _text_of(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                          ) from None


def _json_documents(path: Path) -> list[tuple[str, Any]]:
    """The file's JSON values and where each is: the whole file when it is one JSON document
    (``path``), else one per non-empty line (``path:N``)."""
    text = _text_of(path)
    try:
        return [(str(path), _loads(text))]
    except ValueError as whole:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not lines:
            raise ConfigError(f"{path}: empty file") from None
        try:
            _loads(lines[0][1])
        except ValueError:  # not JSON lines either: report the document's error
            at = f"{path}:{whole.lineno}" if hasattr(whole, "lineno") else str(path)
            raise ConfigError(f"{at}: not valid JSON ({getattr(whole, 'msg', whole)})"
                              ) from None
    documents = []
    for n, line in lines:
        try:
            documents.append((f"{path}:{n}", _loads(line)))
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: not valid JSON ({getattr(exc, 'msg', exc)})"
                              ) from None
    return documents


def _loads(text: str) -> Any:
    """``json.loads``, raising only ValueError: also for nesting too deep, integers too long to
    convert and lone surrogates (:func:`~tracer_wrap.ops._http.check_json_value`)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_json_value(data)
    return data


def _detect(path: Path, documents: list[tuple[str, Any]]) -> str:
    first = documents[0][1]
    if isinstance(first, Mapping) and "resourceSpans" in first:
        return "otlp"
    for key in ("data", "runs", "observations", "requests"):
        if isinstance(first, Mapping) and isinstance(first.get(key), list) and first[key]:
            first = first[key][0]
            break
    if isinstance(first, list) and first:
        first = first[0]
    if isinstance(first, Mapping):
        keys = set(first)
        if {"input", "teacher"} <= keys:
            return "tracer"
        if "run_type" in keys:
            return "langsmith"
        if "request_body" in keys or "response_body" in keys:
            return "helicone"
        if "messages" in keys or ({"request", "response"} <= keys) or ({"body", "response"}
                                                                       <= keys):
            return "openai"
        if "observations" in keys or ("traceId" in keys and "input" in keys) \
                or first.get("type") == "GENERATION":
            return "langfuse"
    raise ConfigError(f"{path}: cannot tell the format; name it with --format"
                      f" ({', '.join(FORMATS)})")


def _items(where: str, document: Any, *keys: str) -> Iterator[tuple[str, Any]]:
    """The records of one document: a JSON line is one record; a JSON array, or a list under one
    of ``keys``, holds several (numbered from 1)."""
    found = document
    if isinstance(document, Mapping):
        found = next((document[k] for k in keys if isinstance(document.get(k), list)), None)
        if found is None:
            yield where, document
            return
    if not isinstance(found, list):
        raise _Bad(f"{where}: expected a JSON object or array")
    for i, item in enumerate(found, 1):
        yield _within(where, f"record {i}"), item


def _within(where: str, part: str) -> str:
    """``path: record 3`` in a JSON document, ``path:7, record 3`` on a JSON line."""
    return f"{where}, {part}" if re.search(r"(:| )\d+$", where) else f"{where}: {part}"


def _read_csv(path: Path) -> list[Record]:
    with io.StringIO(_text_of(path), newline="") as f:
        try:
            dialect: Any = csv.Sniffer().sniff(f.read(4096), delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        f.seek(0)
        reader = csv.DictReader(f, dialect=dialect)
        columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
        text_col = next((columns[c] for c in _INPUT_COLUMNS if c in columns), None)
        label_col = next((columns[c] for c in _LABEL_COLUMNS if c in columns), None)
        if text_col is None or label_col is None:
            raise ConfigError(f"{path}:1: the header needs an input column"
                              f" ({', '.join(_INPUT_COLUMNS)}) and a label column"
                              f" ({', '.join(_LABEL_COLUMNS)})")
        records = []
        try:
            for row in reader:
                text, label = row.get(text_col), row.get(label_col)
                if not text or not label or not text.strip() or not label.strip():
                    raise ConfigError(f"{path}:{reader.line_num}: empty {text_col!r} or"
                                      f" {label_col!r}")
                records.append(Record(f"{path}:{reader.line_num}", text=text, answer=label))
        except csv.Error as exc:
            raise ConfigError(f"{path}:{reader.line_num}: {exc}") from None
    return records


# -- the formats ------------------------------------------------------------------------------


def _tracer(where: str, document: Any) -> Iterator[Record]:
    if not isinstance(document, Mapping) or not isinstance(document.get("input"), str) \
            or not isinstance(document.get("teacher"), str):
        raise _Bad(f"{where}: not a trace line (expected string 'input' and 'teacher')")
    yield Record(where, text=document["input"], answer=document["teacher"])


def _openai(where: str, document: Any) -> Iterator[Record]:
    for at, item in _items(where, document, "data"):
        yield _openai_item(at, item)


def _openai_item(where: str, item: Any) -> Record:
    if not isinstance(item, Mapping):
        raise _Bad(f"{where}: expected a JSON object")
    if "messages" in item:  # the fine-tuning format: the last message is the answer
        messages = _message_list(where, item["messages"])
        if not messages:
            raise _Bad(f"{where}: 'messages' is empty")
        if messages[-1].get("role") != "assistant":
            return Record(where, skip="no assistant answer at the end")
        request = {k: item[k] for k in _CHAT_KEYS if k in item}
        return Record(where, CHAT, {**request, "messages": messages[:-1]},
                      _answer(where, lambda: message_answer(messages[-1])))
    request = item.get("request", item.get("body"))
    response = item.get("response")
    if not isinstance(request, Mapping) or response is None:
        hint = (" (a batch output line: join it with its input line by custom_id into"
                " {\"request\", \"response\"})" if "custom_id" in item else "")
        raise _Bad(f"{where}: expected {{\"messages\": [...]}} or {{\"request\", \"response\"}}"
                   f"{hint}")
    if isinstance(response, Mapping) and "body" in response:  # a batch output line's response
        if response.get("status_code", 200) != 200:
            return Record(where, skip="the call failed")
        response = response["body"]
    if not isinstance(response, Mapping):
        raise _Bad(f"{where}: 'response' must be a JSON object")
    return _pair(where, request, response, str(item.get("url") or ""))


def _pair(where: str, request: Mapping[str, Any], response: Mapping[str, Any], path: str = "",
          provider: str = "") -> Record:
    """A logged request and its decoded answer, of whichever API they belong to."""
    if "error" in response and not any(k in response for k in ("choices", "output", "content")):
        return Record(where, skip="the call failed")
    if path.rstrip("/").endswith("/responses") or response.get("object") == "response" \
            or ("input" in request and "messages" not in request):
        return Record(where, RESPONSES, request, _answer(where, lambda: responses_answer(response)))
    if (provider.lower() == "anthropic" or path.rstrip("/").endswith("/messages")
            or response.get("type") == "message"):
        return Record(where, MESSAGES, request, _answer(where, lambda: messages_answer(response)))
    return Record(where, CHAT, request, _answer(where, lambda: chat_answer(response)))


def _answer(where: str, read: Callable[[], tuple[object, Any]]) -> object:
    try:
        return read()[0]
    except ImportError as exc:
        raise _Bad(f"{where}: {exc}") from None
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise _Bad(f"{where}: not an answer this API gives ({type(exc).__name__}: {exc})"
                   ) from None


def _message_list(where: str, messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise _Bad(f"{where}: 'messages' must be a list of objects")
    return [_chat_message(where, m) for m in messages]


_LC_ROLES = {"SystemMessage": "system", "HumanMessage": "user", "AIMessage": "assistant",
             "ToolMessage": "tool", "FunctionMessage": "function", "system": "system",
             "human": "user", "ai": "assistant", "tool": "tool", "function": "function",
             "user": "user", "assistant": "assistant", "developer": "developer"}


def _chat_message(where: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-style ``{"role", "content"}`` message from an OpenAI dict or a serialised
    LangChain message (``{"lc": 1, "id": [..., "HumanMessage"], "kwargs": {...}}``, or
    ``{"type": "human", "content" | "data": ...}``)."""
    if "role" in message:
        return dict(message)
    if message.get("lc") == 1 and isinstance(message.get("id"), list):
        kind, body = message["id"][-1], message.get("kwargs") or {}
    elif isinstance(message.get("type"), str):
        kind, body = message["type"], message.get("data") or message
    else:
        raise _Bad(f"{where}: a message without a role")
    role = body.get("role") if kind in ("ChatMessage", "chat") else _LC_ROLES.get(kind)
    if not isinstance(role, str) or not isinstance(body, Mapping):
        raise _Bad(f"{where}: a message of unknown type {kind!r}")
    found: dict[str, Any] = {"role": role, "content": body.get("content")}
    calls = body.get("tool_calls") or (body.get("additional_kwargs") or {}).get("tool_calls")
    if calls:
        found["tool_calls"] = [
            call if "function" in call else
            {"id": call.get("id"), "type": "function", "function": {
                "name": call.get("name"), "arguments": json.dumps(call.get("args") or {})}}
            for call in calls if isinstance(call, Mapping)]
    return found


def _parse_if_json(value: Any) -> Any:
    """Tools that log JSON as a string (Langfuse, Helicone exports): the decoded value."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _langfuse(where: str, document: Any) -> Iterator[Record]:
    for at, item in _items(where, document, "data", "observations"):
        if isinstance(item, Mapping) and isinstance(item.get("observations"), list) \
                and "type" not in item:  # a trace with its observations
            for i, observation in enumerate(item["observations"], 1):
                yield _langfuse_observation(_within(at, f"observation {i}"), observation)
        else:
            yield _langfuse_observation(at, item)


def _langfuse_observation(where: str, item: Any) -> Record:
    if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
        raise _Bad(f"{where}: expected an observation with a 'type'")
    if item["type"] != "GENERATION":
        return Record(where, skip=f"a {item['type']} observation, not a GENERATION")
    if item.get("level") == "ERROR":
        return Record(where, skip="the call failed")
    given, output = _parse_if_json(item.get("input")), _parse_if_json(item.get("output"))
    if isinstance(given, str):
        request: dict[str, Any] = {"messages": [{"role": "user", "content": given}]}
    elif isinstance(given, list):
        request = {"messages": given}
    elif isinstance(given, Mapping) and "messages" in given:
        request = dict(given)
    else:
        return Record(where, skip="no input messages")
    request["messages"] = _message_list(where, request["messages"])
    parameters = item.get("modelParameters")
    if isinstance(parameters, Mapping):
        request.update({k: _parse_if_json(v) for k, v in parameters.items()
                        if k in _CHAT_KEYS and k not in request})
    if item.get("model") is not None:
        request.setdefault("model", item["model"])
    if output is None:
        return Record(where, skip="no output")
    api = MESSAGES if "system" in request else CHAT
    return Record(where, api, request, _answer(where, lambda: _output_answer(output, api)))


def _output_answer(output: Any, api: str) -> tuple[object, Any]:
    """The answer of a logged output: a text, an assistant message, a completion or message."""
    if isinstance(output, str):
        return message_answer({"role": "assistant", "content": output})
    if not isinstance(output, Mapping):
        raise ValueError(f"an output of type {type(output).__name__}")
    if "choices" in output:
        return chat_answer(output)
    if output.get("tool_calls"):  # an OpenAI-style message, whoever answered it
        return message_answer({"role": "assistant", **output})
    if api == MESSAGES or output.get("type") == "message":
        blocks = output.get("content")
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}]
        return messages_answer({"role": "assistant", "content": blocks or []})
    return message_answer({"role": "assistant", **output})


def _langsmith(where: str, document: Any) -> Iterator[Record]:
    for at, item in _items(where, document, "runs", "data"):
        yield _langsmith_run(at, item)


def _langsmith_run(where: str, run: Any) -> Record:
    if not isinstance(run, Mapping) or "run_type" not in run:
        raise _Bad(f"{where}: expected a run with a 'run_type'")
    if run["run_type"] != "llm":
        return Record(where, skip=f"a {run['run_type']} run, not an llm run")
    if run.get("error"):
        return Record(where, skip="the call failed")
    inputs, outputs = run.get("inputs") or {}, run.get("outputs")
    if not isinstance(inputs, Mapping):
        raise _Bad(f"{where}: 'inputs' must be an object")
    messages = inputs.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], list):
        messages = messages[0]  # LangChain logs a batch of one conversation
    if messages is None and isinstance(inputs.get("prompts"), list) and inputs["prompts"]:
        messages = [{"role": "user", "content": inputs["prompts"][0]}]
    if messages is None:
        return Record(where, skip="no input messages")
    extra = run.get("extra") if isinstance(run.get("extra"), Mapping) else {}
    invocation = extra.get("invocation_params") if isinstance(extra, Mapping) else None
    metadata = extra.get("metadata") if isinstance(extra, Mapping) else None
    request: dict[str, Any] = {"messages": _message_list(where, messages)}
    for source in (inputs, invocation if isinstance(invocation, Mapping) else {}):
        request.update({k: source[k] for k in _CHAT_KEYS if k in source and k not in request})
    if isinstance(metadata, Mapping):
        request.setdefault("model", metadata.get("ls_model_name"))
        if metadata.get("ls_provider") == "anthropic":
            request = _as_anthropic(request)
    if not isinstance(outputs, Mapping):
        return Record(where, skip="no output")
    api = MESSAGES if "system" in request else CHAT
    return Record(where, api, request, _answer(where, lambda: _langsmith_answer(where, outputs,
                                                                               api)))


def _langsmith_answer(where: str, outputs: Mapping[str, Any], api: str) -> tuple[object, Any]:
    if "choices" in outputs:
        return chat_answer(outputs)
    generations = outputs.get("generations")
    if isinstance(generations, list) and generations:
        first = generations[0][0] if isinstance(generations[0], list) else generations[0]
        message = first.get("message") if isinstance(first, Mapping) else None
        if isinstance(message, Mapping):
            return message_answer(_chat_message(where, message))
        return message_answer({"role": "assistant", "content": first.get("text")})
    output = outputs.get("output", outputs.get("content", outputs))
    if isinstance(output, Mapping) and ("lc" in output or "type" in output) \
            and "role" not in output:
        return message_answer(_chat_message(where, output))
    return _output_answer(output, api)


def _as_anthropic(request: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-style chat request as the Anthropic request it was (system prompt apart)."""
    messages = list(request.get("messages") or ())
    system = [m.get("content") for m in messages if m.get("role") == "system"]
    found = {k: v for k, v in request.items() if k != "messages"}
    found["messages"] = [m for m in messages if m.get("role") != "system"]
    if system:
        found["system"] = "\n".join(str(s) for s in system)
    return found


# -- OpenTelemetry GenAI spans ----------------------------------------------------------------


def _any_value(value: Any) -> Any:
    """A decoded OTLP ``AnyValue``."""
    if not isinstance(value, Mapping):
        raise ValueError("an attribute value must be an object")
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _attributes(pairs: Any) -> dict[str, Any]:
    if not isinstance(pairs, list):
        raise ValueError("attributes must be a list")
    return {pair["key"]: _any_value(pair.get("value", {})) for pair in pairs}


def _otlp(where: str, document: Any) -> Iterator[Record]:
    if not isinstance(document, Mapping) or not isinstance(document.get("resourceSpans"), list):
        raise _Bad(f"{where}: expected an OTLP JSON document with 'resourceSpans'")
    n = 0
    for resource in document["resourceSpans"]:
        scopes = resource.get("scopeSpans", resource.get("instrumentationLibrarySpans", []))
        for scope in scopes or ():
            for span in scope.get("spans", []) or ():
                n += 1
                at = _within(where, f"span {n}")
                try:
                    yield _otlp_span(at, span)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise _Bad(f"{at}: malformed span ({type(exc).__name__}: {exc})") from None


def _otlp_span(where: str, span: Mapping[str, Any]) -> Record:
    attrs = _attributes(span.get("attributes", []))
    if not any(key.startswith("gen_ai.") for key in attrs):
        return Record(where, skip="not a GenAI span")
    operation = attrs.get("gen_ai.operation.name")
    if operation not in (None, "chat", "text_completion", "generate_content"):
        return Record(where, skip=f"a {operation} span, not a chat")
    if (span.get("status") or {}).get("code") in (2, "STATUS_CODE_ERROR"):
        return Record(where, skip="the call failed")
    events = [(e.get("name", ""), _attributes(e.get("attributes", [])))
              for e in span.get("events", []) or ()]
    messages, answer = _otlp_conversation(attrs, events)
    if not messages:
        return Record(where, skip="no prompt content recorded (content capture off?)")
    if answer is None:
        return Record(where, skip="no output")
    request: dict[str, Any] = {"messages": messages}
    if attrs.get("gen_ai.request.model") is not None:
        request["model"] = attrs["gen_ai.request.model"]
    provider = str(attrs.get("gen_ai.provider.name", attrs.get("gen_ai.system", "")))
    if provider == "anthropic":
        return Record(where, MESSAGES, _as_anthropic(request),
                      _answer(where, lambda: _output_answer(answer, MESSAGES)))
    return Record(where, CHAT, request, _answer(where, lambda: message_answer(answer)))


def _parts_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A GenAI-conventions message (``{"role", "parts": [...]}``) as an OpenAI-style one; a part
    that is not text (an image, a file) stays a non-text part, so the view skips the call."""
    parts = message.get("parts")
    if not isinstance(parts, list):
        return {"role": message.get("role"), "content": message.get("content")}
    content: list[dict[str, Any]] = []
    calls = []
    for part in parts:
        kind = part.get("type")
        if kind == "text":
            content.append({"type": "text", "text": part.get("content", "")})
        elif kind == "tool_call":
            arguments = part.get("arguments")
            calls.append({"id": part.get("id"), "type": "function", "function": {
                "name": part.get("name"),
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
        else:
            content.append({"type": str(kind)})
    found: dict[str, Any] = {"role": message.get("role"), "content": content or None}
    if calls:
        found["tool_calls"] = calls
    return found


def _otlp_conversation(attrs: Mapping[str, Any], events: Sequence[tuple[str, Mapping[str, Any]]]
                       ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The messages of a GenAI span and its answer, from whichever conventions it follows."""
    messages: list[dict[str, Any]] = []
    answer: dict[str, Any] | None = None
    if "gen_ai.input.messages" in attrs:  # semantic conventions 1.37+
        system = _parse_if_json(attrs.get("gen_ai.system_instructions"))
        if isinstance(system, list):
            messages.append({"role": "system", "content": "".join(
                p.get("content", "") for p in system if p.get("type") == "text")})
        messages += [_parts_message(m) for m in _parse_if_json(attrs["gen_ai.input.messages"])]
        outputs = _parse_if_json(attrs.get("gen_ai.output.messages"))
        if isinstance(outputs, list) and outputs:
            answer = _parts_message(outputs[0])
        return messages, answer
    indexed = sorted({int(k.split(".")[2]) for k in attrs
                      if k.startswith("gen_ai.prompt.") and k.split(".")[2].isdigit()})
    if indexed:  # OpenLLMetry: gen_ai.prompt.N.role / .content, gen_ai.completion.0.*
        messages = [{"role": attrs.get(f"gen_ai.prompt.{i}.role", "user"),
                     "content": attrs.get(f"gen_ai.prompt.{i}.content")} for i in indexed]
        if "gen_ai.completion.0.tool_calls.0.arguments" in attrs:
            answer = {"role": "assistant", "content": None, "tool_calls": [{
                "type": "function", "function": {
                    "name": attrs.get("gen_ai.completion.0.tool_calls.0.name"),
                    "arguments": attrs["gen_ai.completion.0.tool_calls.0.arguments"]}}]}
        elif "gen_ai.completion.0.content" in attrs:
            answer = {"role": "assistant", "content": attrs["gen_ai.completion.0.content"]}
        return messages, answer
    for name, event in events:  # events: 1.28-1.36 message events, or the older prompt events
        body = _parse_if_json(event.get("gen_ai.event.content"))
        body = body if isinstance(body, Mapping) else {}
        if name.startswith("gen_ai.") and name.endswith(".message"):
            role = name[len("gen_ai."):-len(".message")]
            messages.append({"role": event.get("role", role),
                             "content": event.get("content", body.get("content"))})
        elif name == "gen_ai.choice" and answer is None:
            message = _parse_if_json(event.get("message", body.get("message")))
            if isinstance(message, Mapping):
                answer = {"role": "assistant", **message}
            elif "content" in event:
                answer = {"role": "assistant", "content": event["content"]}
        elif name == "gen_ai.content.prompt":
            prompt = _parse_if_json(event.get("gen_ai.prompt"))
            messages += prompt if isinstance(prompt, list) else [{"role": "user",
                                                                  "content": prompt}]
        elif name == "gen_ai.content.completion" and answer is None:
            completion = _parse_if_json(event.get("gen_ai.completion"))
            if isinstance(completion, list) and completion:
                answer = {"role": "assistant", **completion[0]}
            elif isinstance(completion, str):
                answer = {"role": "assistant", "content": completion}
    return messages, answer


def _helicone(where: str, document: Any) -> Iterator[Record]:
    for at, item in _items(where, document, "data", "requests"):
        yield _helicone_request(at, item)


def _helicone_request(where: str, item: Any) -> Record:
    if not isinstance(item, Mapping) or "request_body" not in item:
        raise _Bad(f"{where}: expected a request with 'request_body' and 'response_body'")
    status = item.get("response_status")
    if status not in (None, 200, "200"):
        return Record(where, skip="the call failed")
    request = _parse_if_json(item.get("request_body"))
    response = _parse_if_json(item.get("response_body"))
    if not isinstance(request, Mapping):
        raise _Bad(f"{where}: 'request_body' must be a JSON object")
    if not isinstance(response, Mapping):
        return Record(where, skip="no response body")
    path = str(item.get("request_path") or item.get("target_url") or "")
    return _pair(where, request, response, path, str(item.get("provider") or ""))


_READERS: dict[str, Callable[[str, Any], Iterator[Record]]] = {
    "tracer": _tracer, "openai": _openai, "langfuse": _langfuse, "langsmith": _langsmith,
    "otlp": _otlp, "helicone": _helicone}


# -- discovery and import -----------------------------------------------------------------------


def discover(path: str | Path, fmt: str = "auto", *, model: str | None = None) -> Discovery:
    """Read the file at ``path`` and group its records into tasks (see the module docstring).

    ``model`` replaces the model of every request: the model is part of a task key, so give the
    one your application asks for and imported traces join its live task. Raises ConfigError
    like :func:`read_records`.
    """
    fmt, records = read_records(path, fmt)
    skipped: Counter[str] = Counter(r.skip for r in records if r.skip is not None)
    usable = [r for r in records if r.skip is None]
    if fmt in ("tracer", "csv"):
        flat = Found("", "", None, "(no prompt template in this format)",
                     [(str(r.text), r.answer) for r in usable], [r.where for r in usable])
        return Discovery(str(path), fmt, len(records), [flat] if usable else [], skipped)
    requests = [dict(r.request or {}, **({"model": model} if model else {})) for r in usable]
    learner = TemplateLearner()
    for record, request in zip(usable, requests):  # learn every template before keying any
        _VIEWS[record.api](request, learner)
    tasks: dict[str, Found] = {}
    for record, request in zip(usable, requests):
        view = _VIEWS[record.api](request, learner)
        if view is None:
            skipped["not classification-shaped (free tools, several answers, not text, ...)"] += 1
            continue
        found = tasks.get(view.task_key)
        if found is None:
            found = tasks[view.task_key] = Found(
                view.task_key, record.api, _model_of(request), _template(request, view.text))
        found.rows.append((view.text, record.answer))
        found.wheres.append(record.where)
    ordered = sorted(tasks.values(), key=lambda t: -len(t.rows))
    return Discovery(str(path), fmt, len(records), ordered, skipped)


def _model_of(request: Mapping[str, Any]) -> str | None:
    model = request.get("model")
    return model if isinstance(model, str) else None


def _template(request: Mapping[str, Any], text: str, width: int = 60) -> str:
    """A one-line picture of a prompt template: its instructions and the classified text's place
    in the last user message (``{text}``)."""
    def short(value: Any) -> str:
        flat = " ".join(str(value).split())
        return flat if len(flat) <= width else flat[:width - 1] + "…"

    system = request.get("system") or request.get("instructions")
    messages = request.get("messages") or []
    if system is None:
        system = next((m.get("content") for m in messages if m.get("role") in
                       ("system", "developer")), None)
    last = messages[-1].get("content") if messages else request.get("input")
    if isinstance(last, list):
        last = "\n".join(p.get("text", "") for p in last if isinstance(p, Mapping))
    last = last if isinstance(last, str) else text
    at = last.find(text)
    shape = (f"{last[:at]}{{text}}{last[at + len(text):]}" if at >= 0 else "{text}")
    return f"{short(system)} | {short(shape)}" if system else short(shape)


def import_task(store: Store, found: Found, task: str) -> dict[str, Any]:
    """Import the rows of ``found`` into ``task``; see :func:`import_tasks`."""
    return import_tasks(store, [(found, task)])[0]


def import_tasks(store: Store, chosen: Sequence[tuple[Found, str]]) -> list[dict[str, Any]]:
    """Append the rows of each ``(found, task)`` to ``task`` as imported traces; return one
    ``{"task", "lines", "new_traces", "not_a_label", "not_a_label_top"}`` per task (records
    imported, new distinct inputs, records left out because their answer names none of the
    task's labels, and the most frequent of those answers with their counts, at most three).

    Answers are normalised against the task's labels and inputs stored as the task's options say
    (``redact``, ``store_inputs``: the same rule as live calls); an answer that names no label is
    not imported, only counted. All or nothing: every row of every task is checked first, and a
    row that could not be traced (empty or too long an input, text no store can encode, a failing
    redact hook) raises ConfigError naming its place in the file before anything is written; each
    task's rows are then written in one store transaction. Raises ConfigError on a bad option,
    StoreError when the store refuses.
    """
    prepared = [(task, *_rows_to_import(store, found, task)) for found, task in chosen]
    results = []
    for task, rows, unlabelled in prepared:
        before = store.count(task)
        store.append_many(task, rows)
        results.append({"task": task, "lines": len(rows),
                        "new_traces": store.count(task) - before,
                        "not_a_label": sum(unlabelled.values()),
                        "not_a_label_top": [[answer, n] for answer, n
                                            in unlabelled.most_common(3)]})
    return results


def _rows_to_import(store: Store, found: Found, task: str
                    ) -> tuple[list[NewTrace], Counter[str]]:
    """The traces to write for ``found`` in ``task``, and the answers that name no label of
    the task, counted (they are not imported)."""
    options = TaskOptions.resolve(task, {"store": store})
    labels = LabelSet(options.labels, redact=options.redact)
    key = hash_key(store, task) if options.store_inputs == "hash" else None
    wheres = found.wheres or [f"record {i + 1}" for i in range(len(found.rows))]
    rows: list[NewTrace] = []
    unlabelled: Counter[str] = Counter()
    for (text, raw), where in zip(found.rows, wheres):
        label = labels.normalise(raw)
        if label is None:
            unlabelled[" ".join(str(raw).split())[:80]] += 1
            continue
        why = _untraceable(text)
        if not why:
            try:
                if options.redact is not None:
                    text = options.redact(text)
                    if not isinstance(text, str):
                        raise TypeError("redact returned no string")
            except Exception as exc:
                why = f"the redact hook failed ({type(exc).__name__}: {exc})"
        row = NewTrace(text if key is None else hash_input(text, key), label,
                       origin=Origin.IMPORT.value)
        if not why and check_new_traces([row]) is not None:
            why = "text that cannot be stored (a lone surrogate?)"
        if why:
            raise ConfigError(f"{where}: {why}; nothing was imported")
        rows.append(row)
    return rows, unlabelled
