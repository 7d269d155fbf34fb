"""A local HTTP server that speaks the OpenAI and Anthropic wire protocols and plays the LLM
teacher.

Tests point the real ``openai`` / ``anthropic`` SDKs at it, so wire compatibility is proven over
real HTTP instead of assumed. The server labels the classified text (the text of the last user
message) with ``teacher(text)``, shapes the answer the way the request asked for (plain text, JSON
for ``response_format`` / ``text.format`` / ``output_config.format``, a tool call when a tool is
forced), and counts every call per endpoint so a test can prove a call never reached it.

Endpoints: ``POST /v1/chat/completions`` (JSON and SSE streaming), ``POST /v1/responses`` (JSON
and SSE streaming) and ``POST /v1/messages`` (JSON and SSE streaming).

Every request's JSON body is recorded (``server.requests``), so a test can prove the provider
received exactly what a caller passed (the same call through a plain client gives the same body).
``server.classify = "system"`` makes the teacher read the system prompt (chat: the first system
message, responses: ``instructions``, anthropic: ``system``) instead of the last user message,
for templates that put the text there.

Faults: ``server.fail("429" | "500" | "garbage" | "timeout", times=N)`` makes the next ``N`` calls
(or every call while ``times=None``) fail; ``server.clear_faults()`` removes them. A faulted call is
still counted: it reached the server.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["ENDPOINTS", "FaultKind", "LLMServer", "serve_llm"]

FaultKind = Literal["429", "500", "garbage", "timeout"]

ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": "chat.completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}

JSONDict = dict[str, Any]


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int | None  # None: until cleared
    delay: float


def _tokens(text: str) -> int:
    """A rough token count (about four characters a token), at least 1."""
    return max(1, (len(text) + 3) // 4)


def _part_text(content: Any) -> str:
    """Text of a message content that is a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return ""


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return _part_text(message.get("content"))
    return ""


def _all_text(body: JSONDict) -> str:
    """All prompt text of a request, to size ``usage.input_tokens`` realistically."""
    pieces: list[str] = []
    for key in ("system", "instructions"):
        pieces.append(_part_text(body.get(key)))
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, str):
        pieces.append(messages)
    else:
        pieces.extend(_part_text(m.get("content")) for m in messages or [] if isinstance(m, dict))
    for key in ("tools", "response_format", "text", "output_config"):
        if key in body:
            pieces.append(json.dumps(body[key]))
    return "\n".join(pieces)


def _string_field(schema: Any) -> str:
    """The property a single-label JSON answer goes into: the single string/enum field, else
    'label'."""
    if not isinstance(schema, dict):
        return "label"
    properties = schema.get("properties") or {}
    defs = schema.get("$defs") or schema.get("definitions") or {}

    def is_stringy(prop: Any) -> bool:
        if isinstance(prop, dict) and "$ref" in prop:
            prop = defs.get(str(prop["$ref"]).rsplit("/", 1)[-1], {})
        return isinstance(prop, dict) and (prop.get("type") == "string" or "enum" in prop)

    stringy = [name for name, prop in properties.items() if is_stringy(prop)]
    for preferred in ("label", "category", "class", "intent"):
        if preferred in stringy:
            return preferred
    return stringy[0] if stringy else "label"


class _Listener(ThreadingHTTPServer):
    # socketserver's default backlog of 5 reset connections when 32 client threads connected at
    # once while the GIL was busy: failures of the test server, not of the code under test.
    request_queue_size = 128


class LLMServer:
    """The fake LLM; see the module docstring. Start it with :func:`serve_llm`."""

    def __init__(self, teacher: Callable[[str], str], model_latency: float = 0.0) -> None:
        self.teacher = teacher
        self.classify: Literal["user", "system"] = "user"
        self.model_latency = model_latency
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._requests: list[tuple[str, JSONDict]] = []
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LLMServer:
        """Bind to 127.0.0.1 on a free port and serve in a daemon thread."""
        server = self

        class Handler(_Handler):
            llm = server

        self._httpd = _Listener(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.02},
                                        name="llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; a call sleeping in a ``timeout`` fault is woken up."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url_openai(self) -> str:
        """Pass as ``OpenAI(base_url=...)``."""
        return f"{self.base_url}/v1"

    @property
    def base_url_anthropic(self) -> str:
        """Pass as ``Anthropic(base_url=...)`` (the SDK appends ``/v1/messages``)."""
        return self.base_url

    # -- observation -----------------------------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """A snapshot of the calls received per endpoint (``chat.completions``, ``responses``,
        ``messages``); missing endpoints read as 0."""
        with self._lock:
            return Counter(self._calls)

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    @property
    def requests(self) -> list[tuple[str, JSONDict]]:
        """Every request body received, in order, as ``(endpoint, body)``."""
        with self._lock:
            return list(self._requests)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._requests.clear()

    # -- faults ----------------------------------------------------------------------------------

    def fail(self, kind: FaultKind, times: int | None = 1, delay: float = 2.0) -> None:
        """Make the next ``times`` calls (all calls while ``times`` is None) fail with ``kind``.

        ``429`` and ``500`` answer with the provider's error body; ``garbage`` answers 200 with a
        body that is not JSON; ``timeout`` sleeps ``delay`` seconds before answering, so a client
        with a shorter timeout gives up. Faults queue up in the order they were added.
        """
        if kind not in ("429", "500", "garbage", "timeout"):
            raise ValueError(f"unknown fault {kind!r}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._faults.append(_Fault(kind, times, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, endpoint: str, body: JSONDict) -> _Fault | None:
        """Count the call and pop the fault it must suffer, atomically."""
        with self._lock:
            self._calls[endpoint] += 1
            self._requests.append((endpoint, body))
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.pop(0)
            return fault

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # -- answers ---------------------------------------------------------------------------------

    def _text(self, body: JSONDict, key: str) -> str:
        """The text the teacher labels: the last user message's, or the system prompt's."""
        if self.classify == "user":
            return _last_user_text(body.get(key))
        for name in ("system", "instructions"):
            if body.get(name):
                return _part_text(body[name])
        messages = body.get(key)
        first = messages[0] if isinstance(messages, list) and messages else {}
        return _part_text(first.get("content")) if first.get("role") in ("system",
                                                                          "developer") else ""

    def chat_completion(self, body: JSONDict) -> tuple[JSONDict, list[JSONDict] | None]:
        """The ChatCompletion for ``body`` and, if ``stream``, its chunks."""
        label = self.teacher(self._text(body, "messages"))
        model = body.get("model", "gpt-test")
        created = int(time.time())
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        tool = _forced_openai_tool(body)
        message: JSONDict = {"role": "assistant", "content": None, "refusal": None}
        if tool is not None:
            name, parameters = tool
            arguments = json.dumps({_string_field(parameters): label})
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": name, "arguments": arguments}}
            message["tool_calls"] = [call]
            finish = "tool_calls"
            output = arguments
        else:
            message["content"] = output = _shaped_text(label, body.get("response_format"))
            finish = "stop"
        prompt_tokens = _tokens(_all_text(body)) + 7
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(output),
                 "total_tokens": prompt_tokens + _tokens(output)}
        completion = {"id": completion_id, "object": "chat.completion", "created": created,
                      "model": model, "system_fingerprint": "fp_llm_server",
                      "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                   "logprobs": None}],
                      "usage": usage}
        if not body.get("stream"):
            return completion, None

        def chunk(delta: JSONDict, finish_reason: str | None = None) -> JSONDict:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": "fp_llm_server",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                 "logprobs": None}]}

        chunks = [chunk({"role": "assistant", "content": "" if tool is None else None})]
        if tool is not None:
            call = message["tool_calls"][0]
            chunks.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"],
                                                              "arguments": ""}}]}))
            for piece in _halves(output):
                chunks.append(chunk({"tool_calls": [{"index": 0,
                                                     "function": {"arguments": piece}}]}))
        else:
            # Two pieces, so clients are proven to reassemble deltas.
            chunks.extend(chunk({"content": piece}) for piece in _halves(output))
        chunks.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage
            chunks.append(usage_chunk)
        return completion, chunks

    def response(self, body: JSONDict) -> JSONDict:
        """The Responses API ``response`` object for ``body``."""
        label = self.teacher(self._text(body, "input"))
        response_id = f"resp_{uuid.uuid4().hex[:24]}"
        tool = _forced_responses_tool(body)
        if tool is not None:
            name, parameters = tool
            output = json.dumps({_string_field(parameters): label})
            item: JSONDict = {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}",
                              "call_id": f"call_{uuid.uuid4().hex[:24]}", "name": name,
                              "arguments": output, "status": "completed"}
        else:
            text_format = (body.get("text") or {}).get("format")
            if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
                output = json.dumps({_string_field(text_format.get("schema")): label})
            elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
                output = json.dumps({"label": label})
            else:
                output = label
            item = {"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": output, "annotations": []}]}
        input_tokens = _tokens(_all_text(body)) + 7
        return {"id": response_id, "object": "response", "created_at": time.time(),
                "status": "completed", "model": body.get("model", "gpt-test"), "output": [item],
                "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []), "instructions": body.get("instructions"),
                "text": body.get("text") or {"format": {"type": "text"}},
                "usage": {"input_tokens": input_tokens, "output_tokens": _tokens(output),
                          "total_tokens": input_tokens + _tokens(output),
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}

    def response_events(self, body: JSONDict) -> list[tuple[str, JSONDict]]:
        """The server-sent events of a streamed Responses API ``response`` for ``body``: created,
        in_progress, the output item with its deltas (two pieces, so clients are proven to
        reassemble them) and done events, then completed (with usage)."""
        final = self.response(body)
        item = final["output"][0]
        events: list[JSONDict] = []

        def emit(kind: str, **data: Any) -> None:
            events.append({"type": kind, "sequence_number": len(events), **data})

        pending = dict(final, status="in_progress", output=[], usage=None)
        emit("response.created", response=pending)
        emit("response.in_progress", response=pending)
        where = {"item_id": item["id"], "output_index": 0}
        if item["type"] == "function_call":
            emit("response.output_item.added", output_index=0,
                 item=dict(item, arguments="", status="in_progress"))
            for piece in _halves(item["arguments"]):
                emit("response.function_call_arguments.delta", **where, delta=piece)
            emit("response.function_call_arguments.done", **where, name=item["name"],
                 arguments=item["arguments"])
        else:
            part = item["content"][0]
            emit("response.output_item.added", output_index=0,
                 item=dict(item, content=[], status="in_progress"))
            emit("response.content_part.added", **where, content_index=0,
                 part=dict(part, text=""))
            for piece in _halves(part["text"]):
                emit("response.output_text.delta", **where, content_index=0, delta=piece,
                     logprobs=[])
            emit("response.output_text.done", **where, content_index=0, text=part["text"],
                 logprobs=[])
            emit("response.content_part.done", **where, content_index=0, part=part)
        emit("response.output_item.done", output_index=0, item=item)
        emit("response.completed", response=final)
        return [(event["type"], event) for event in events]

    def message(self, body: JSONDict) -> tuple[JSONDict, list[tuple[str, JSONDict]] | None]:
        """The Anthropic ``message`` for ``body`` and, if ``stream``, its ``(event, data)`` list."""
        label = self.teacher(self._text(body, "messages"))
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        tool = _forced_anthropic_tool(body)
        if tool is not None:
            name, schema = tool
            tool_input = {_string_field(schema): label}
            output = json.dumps(tool_input)
            block: JSONDict = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                               "name": name, "input": tool_input}
            stop_reason = "tool_use"
        else:
            output_format = ((body.get("output_config") or {}).get("format")
                             or body.get("output_format"))
            if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
                output = json.dumps({_string_field(output_format.get("schema")): label})
            else:
                output = label
            block = {"type": "text", "text": output}
            stop_reason = "end_turn"
        input_tokens = _tokens(_all_text(body)) + 9
        message = {"id": message_id, "type": "message", "role": "assistant",
                   "model": body.get("model", "claude-test"), "content": [block],
                   "stop_reason": stop_reason, "stop_sequence": None,
                   "usage": {"input_tokens": input_tokens, "output_tokens": _tokens(output)}}
        if not body.get("stream"):
            return message, None
        start = dict(message, content=[], stop_reason=None,
                     usage={"input_tokens": input_tokens, "output_tokens": 1})
        if block["type"] == "tool_use":
            empty_block: JSONDict = dict(block, input={})
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _halves(output)]
        else:
            empty_block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _halves(output)]
        events: list[tuple[str, JSONDict]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": empty_block}),
            ("ping", {"type": "ping"}),
        ]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
                   for d in deltas]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": _tokens(output)}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return message, events


def _halves(text: str) -> list[str]:
    middle = max(1, len(text) // 2)
    return [piece for piece in (text[:middle], text[middle:]) if piece]


def _shaped_text(label: str, response_format: Any) -> str:
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            return json.dumps({_string_field(schema): label})
        if response_format.get("type") == "json_object":
            return json.dumps({"label": label})
    return label


def _forced_openai_tool(body: JSONDict) -> tuple[str, Any] | None:
    """``(name, parameters)`` of the function the chat request forces, if any."""
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    choice = body.get("tool_choice")
    by_name = {t["function"]["name"]: t["function"].get("parameters") for t in tools}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice["function"]["name"]
        return (name, by_name.get(name)) if name in by_name else None
    if choice == "required" and len(by_name) == 1:
        return next(iter(by_name.items()))
    return None


def _forced_responses_tool(body: JSONDict) -> tuple[str, Any] | None:
    tools = {t["name"]: t.get("parameters") for t in body.get("tools") or []
             if t.get("type") == "function"}
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and choice.get("name") in tools:
        return choice["name"], tools[choice["name"]]
    if choice == "required" and len(tools) == 1:
        return next(iter(tools.items()))
    return None


def _forced_anthropic_tool(body: JSONDict) -> tuple[str, Any] | None:
    tools = {t["name"]: t.get("input_schema") for t in body.get("tools") or [] if "name" in t}
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool" and choice.get("name") in tools:
        return choice["name"], tools[choice["name"]]
    if choice.get("type") == "any" and len(tools) == 1:
        return next(iter(tools.items()))
    return None


class _Handler(BaseHTTPRequestHandler):
    llm: LLMServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK
    # stalls every other response by ~40 ms, which would swamp latency measurements.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = re.sub(r"\?.*$", "", self.path)
        endpoint = ENDPOINTS.get(path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if endpoint is None:
            self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "invalid JSON", "type": "invalid_request"}})
            return
        fault = self.llm._take_fault(endpoint, body)
        if self.llm.model_latency:
            self.llm._sleep(self.llm.model_latency)
        if fault is not None and self._suffer(fault, endpoint):
            return
        if endpoint == "chat.completions":
            completion, chunks = self.llm.chat_completion(body)
            if chunks is None:
                self._send_json(200, completion)
            else:
                self._send_sse([(None, chunk) for chunk in chunks], done=True)
        elif endpoint == "responses":
            if body.get("stream"):
                self._send_sse(self.llm.response_events(body), done=False)
            else:
                self._send_json(200, self.llm.response(body))
        else:
            message, events = self.llm.message(body)
            if events is None:
                self._send_json(200, message)
            else:
                self._send_sse(list(events), done=False)

    def _suffer(self, fault: _Fault, endpoint: str) -> bool:
        """Apply ``fault``; True when the response was already sent."""
        anthropic = endpoint == "messages"
        if fault.kind == "timeout":
            self.llm._sleep(fault.delay)
            return False  # answer normally, too late for the client
        if fault.kind == "garbage":
            self._send_bytes(200, b"<html>upstream garbage, not json", "application/json")
            return True
        status = 429 if fault.kind == "429" else 500
        kind = {429: "rate_limit_error", 500: "api_error"}[status]
        if anthropic:
            error: JSONDict = {"type": "error",
                               "error": {"type": kind, "message": f"injected {status}"}}
        else:
            error = {"error": {"message": f"injected {status}", "type": kind, "code": None,
                               "param": None}}
        self._send_json(status, error, extra_headers={"retry-after": "0"})
        return True

    def _send_json(self, status: int, payload: JSONDict,
                   extra_headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", extra_headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str,
                    extra_headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
            self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
            for key, value in (extra_headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to answer

    def _send_sse(self, events: list[tuple[str | None, JSONDict]], done: bool) -> None:
        """Send ``events`` as server-sent events, one HTTP chunk each (chunked transfer
        encoding)."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            frames = [(f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
                      for name, data in events]
            if done:
                frames.append("data: [DONE]\n\n")
            for frame in frames:
                encoded = frame.encode()
                self.wfile.write(f"{len(encoded):x}\r\n".encode() + encoded + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def serve_llm(teacher: Callable[[str], str], model_latency: float = 0.0) -> Iterator[LLMServer]:
    """Run an :class:`LLMServer` for the duration of the ``with`` block.

    >>> with serve_llm(lambda text: "positive") as server:
    ...     client = OpenAI(base_url=server.base_url_openai, api_key="test", max_retries=0)
    """
    server = LLMServer(teacher, model_latency=model_latency).start()
    try:
        yield server
    finally:
        server.stop()
