"""The gateway: an OpenAI- and Anthropic-compatible base URL that answers certified calls locally.

Run it with ``tracer-wrap gateway --store DIR`` (``pip install 'tracer-wrap[gateway]'``) and point
any application, in any language, at it by changing its base URL only::

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1     ANTHROPIC_BASE_URL=http://127.0.0.1:8080

Every request goes to the real upstream (``--openai-upstream``, ``--anthropic-upstream``) with the
caller's own API key (``Authorization`` / ``x-api-key``, passed through untouched, never stored or
logged), except the classification calls a certified router answers::

    POST /v1/chat/completions, /v1/responses, /v1/messages (JSON or server-sent events)
        └─ the request view (tracer_wrap.integrations._prompt): not classification-shaped (free
           tools, images, ...)? ──> forwarded untouched, not traced
        └─ an option a local answer cannot honour (local_answer_blocker, as for the SDK
           wrappers: n > 1, logprobs, store, a stop sequence cutting a label, ...)? ──> traced,
           but always forwarded
        └─ the task of its prompt template (as zero-code mode finds it; the header
           X-Tracer-Wrap-Task, UTF-8, names one instead, else 400) ──> TracedTask.call
           (tracer_wrap.engine), in a worker thread (it embeds):
               local answer: wire-identical JSON or SSE built with the SDKs' own types
               else: forwarded from the event loop (no thread waits for the LLM); the answer
                     streams through chunk by chunk while a tap reads its label and usage; once
                     the caller has it all, it becomes a trace
    any other path (/v1/embeddings, /v1/models, files, ...) ──> forwarded untouched

So the gateway runs the same engine as the Python wrappers: the same store, task discovery,
routing switch (off by default, as in zero-code mode: ``tracer-wrap routing TASK on``), drift
breaker, audit samples, accounting and background refits. Upstream answers reach the caller as
the upstream sent them: status, headers (``retry-after``, request ids; hop-by-hop headers
dropped) and body bytes; an upstream error logs no trace. tracer_wrap's own faults are logged and
the call is forwarded as if the gateway were a plain proxy. Upstream unreachable: 502 (504 on a
timeout) in the provider's error shape.

Which upstream: ``/v1/messages*`` and ``/v1/complete``, and any request carrying an
``anthropic-version`` header, go to the Anthropic upstream (``{anthropic_upstream}{path}``); the
rest to the OpenAI one, with the leading ``/v1`` of the path replaced by the upstream's base URL
(``https://api.openai.com/v1`` by default, so Azure-style or other compatible bases work).

The gateway's own token (``token``) is a different secret from the provider key: callers send it
in ``X-Tracer-Wrap-Token`` (compared in constant time, never forwarded). :func:`run` refuses to
listen beyond loopback without one. ``GET /tracer-wrap/healthz`` needs no token. A request a web
page of another origin sends (``Origin`` not the gateway's own, or ``Sec-Fetch-Site:
cross-site``) is refused with 403 on every path, the health check included: a page the user
visits must not reach the routers or the upstreams through it (the rules of
:mod:`tracer_wrap.ops._http`). Only a body
sent as ``application/json`` that reads as JSON tracer_wrap accepts (no lone surrogates, no
nesting deeper than 64 levels, no integers beyond 64 bits) is traced; any other is forwarded
untouched and the upstream answers it.
"""

from __future__ import annotations

import codecs
import contextlib
import hmac
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import names, telemetry
from .._log import fault, logger
from ..accounting import Usage
from ..engine import Reply, TracedTask
from ..errors import ConfigError, MissingExtraError
from ..integrations import (
    PromptView,
    Tasks,
    TemplateLearner,
    anthropic_messages_view,
    local_answer_blocker,
    openai_chat_view,
    openai_responses_view,
)
from ..options import TaskOptions
from ..store import Store, open_store
from ._answers import Answer, chat_answer, messages_answer, responses_answer
from ._http import (
    MAX_TASK_CHARS,
    BadJson,
    foreign_origin,
    is_json,
    read_json,
    require_token_beyond_loopback,
)

try:
    import anyio
    import anyio.from_thread
    import anyio.to_thread
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingExtraError(exc.name or "starlette", "gateway") from exc

__all__ = ["ANTHROPIC_UPSTREAM", "OPENAI_UPSTREAM", "TASK_HEADER", "TOKEN_HEADER",
           "app_from_environment", "create_app", "run", "upstream_problem"]

#: The real APIs, as base URLs the SDKs would use.
OPENAI_UPSTREAM = "https://api.openai.com/v1"
ANTHROPIC_UPSTREAM = "https://api.anthropic.com"
#: The gateway's own token travels in this header, never in ``Authorization`` (the provider key).
TOKEN_HEADER = "x-tracer-wrap-token"
#: Names the task of a classification call instead of its prompt template.
TASK_HEADER = "x-tracer-wrap-task"
#: Set to ``local`` on every answer the gateway built itself.
LOCAL_HEADER = "x-tracer-wrap"
#: Bodies up to this size are read as classification requests; larger ones are only forwarded.
MAX_INSPECT_BYTES = 256_000
#: Longest response body kept to read a label from (a classification answer is far shorter).
MAX_TAP_BYTES = 4_000_000

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded. Host and the
# gateway's own headers are not forwarded either.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
_NOT_FORWARDED = _HOP_BY_HOP | {"host", TOKEN_HEADER, TASK_HEADER}


class _Problem(Exception):
    """An error the gateway answers itself, in the provider's error shape."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


# -- reading answers: JSON bodies and server-sent events --------------------------------------


class _SSE:
    """An incremental server-sent events parser (the WHATWG rules the SDKs follow): bytes in,
    ``(event, data)`` pairs out. Lines end at CRLF, LF or CR only (never at other Unicode line
    breaks, which JSON strings may hold)."""

    _LINE_END = re.compile(r"\r\n|\r|\n")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        text = self._decoder.decode(chunk)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the rest of a CRLF split between two chunks
        self._after_cr = False
        text = self._pending + text
        events: list[tuple[str, str]] = []
        start = 0
        for end in self._LINE_END.finditer(text):
            self._line(text[start:end.start()], events)
            start = end.end()
            self._after_cr = end.group() == "\r" and start == len(text)
        self._pending = text[start:]
        return events

    def _line(self, line: str, events: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                events.append((self._event, "\n".join(self._data)))
            self._event, self._data = "", []
            return
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value


class _Tap:
    """Reads the label and usage of one forwarded answer from its bytes as they pass.

    ``feed`` every chunk, then ``result()`` once the body is complete: ``(raw_label, usage)``.
    Raises (and the caller stops tapping) on anything it cannot read.
    """

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def result(self) -> Answer:
        raise NotImplementedError


class _JsonTap(_Tap):
    """A whole JSON answer; ``read`` turns the decoded object into ``(raw_label, usage)``."""

    def __init__(self, read: Callable[[dict[str, Any]], Answer]) -> None:
        self._read = read
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_TAP_BYTES:
            raise ValueError(f"answer over {MAX_TAP_BYTES} bytes")
        self._chunks.append(chunk)

    def result(self) -> Answer:
        data = json.loads(b"".join(self._chunks))
        if not isinstance(data, dict):
            raise ValueError("the answer is not a JSON object")
        return self._read(data)


class _EventTap(_Tap):
    """A stream of server-sent events; ``on_event(event, data)`` reads each decoded event."""

    def __init__(self, on_event: Callable[[str, dict[str, Any]], None],
                 finish: Callable[[], Answer]) -> None:
        self._sse = _SSE()
        self._on_event = on_event
        self._finish = finish

    def feed(self, chunk: bytes) -> None:
        for event, data in self._sse.feed(chunk):
            if data.strip() == "[DONE]":
                continue
            decoded = json.loads(data)
            if isinstance(decoded, dict):
                self._on_event(event, decoded)

    def result(self) -> Answer:
        return self._finish()


def _chat_stream_tap() -> _Tap:
    from openai.types.chat import ChatCompletionChunk

    from ..integrations import _stream

    acc = _stream.stream_accumulator("openai")

    def on_event(event: str, data: dict[str, Any]) -> None:
        if "error" in data:
            raise ValueError("the stream reported an error")
        acc.add(ChatCompletionChunk.construct(**data))

    return _EventTap(on_event, lambda: (acc.label(), acc.usage_seen()))


def _messages_stream_tap() -> _Tap:
    from anthropic import types

    from ..integrations import _stream

    acc = _stream.stream_accumulator("anthropic")
    classes: dict[str, Any] = {
        "message_start": types.RawMessageStartEvent,
        "content_block_start": types.RawContentBlockStartEvent,
        "content_block_delta": types.RawContentBlockDeltaEvent,
        "content_block_stop": types.RawContentBlockStopEvent,
        "message_delta": types.RawMessageDeltaEvent,
        "message_stop": types.RawMessageStopEvent,
    }
    stopped = False

    def on_event(event: str, data: dict[str, Any]) -> None:
        nonlocal stopped
        kind = data.get("type")
        if kind == "error":
            raise ValueError("the stream reported an error")
        stopped = stopped or kind == "message_stop"
        if kind in classes:  # ping and future event types carry no label
            acc.add(classes[kind].construct(**data))

    def finish() -> Answer:
        if not stopped:
            raise ValueError("the stream ended without message_stop")
        return acc.label(), acc.usage_seen()

    return _EventTap(on_event, finish)


def _responses_stream_tap() -> _Tap:
    completed: list[dict[str, Any]] = []

    def on_event(event: str, data: dict[str, Any]) -> None:
        if data.get("type") == "response.completed" and isinstance(data.get("response"), dict):
            completed.append(data["response"])

    def finish() -> Answer:
        if not completed:  # failed, incomplete or cut short: no answer to learn from
            raise ValueError("the stream ended without response.completed")
        return responses_answer(completed[-1])

    return _EventTap(on_event, finish)


# -- building local answers ------------------------------------------------------------------


def _dump(model: Any) -> dict[str, Any]:
    # exclude_unset: only what the builders set, as the APIs send only what they have.
    data: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
    return data


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _sse_frame(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _local_chat(label: str, request: Mapping[str, Any]) -> bytes:
    from ..integrations._openai_objects import build_chat_completion

    return _json_bytes(_dump(build_chat_completion(label, request)))


def _local_chat_stream(label: str, request: Mapping[str, Any]) -> list[bytes]:
    from ..integrations._openai_objects import build_chat_completion_stream

    frames = [_sse_frame(_dump(chunk)) for chunk in build_chat_completion_stream(label, request)]
    return [*frames, b"data: [DONE]\n\n"]


def _local_response(label: str, request: Mapping[str, Any]) -> dict[str, Any]:
    from ..integrations._openai_objects import build_response

    data = _dump(build_response(label, request))
    data["created_at"] = int(data["created_at"])  # the API sends whole seconds
    return data


def _local_responses(label: str, request: Mapping[str, Any]) -> bytes:
    return _json_bytes(_local_response(label, request))


def _local_responses_stream(label: str, request: Mapping[str, Any]) -> list[bytes]:
    """The events the Responses API streams for a one-item answer: created, in_progress, the item
    (its text or function-call arguments, added, delta, done) and completed."""
    done = _local_response(label, request)
    item = done["output"][0]
    begun = {**done, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": begun},
                                    {"type": "response.in_progress", "response": begun}]
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        events += [
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**item, "arguments": "", "status": "in_progress"}},
            {"type": "response.function_call_arguments.delta", **where,
             "delta": item["arguments"]},
            {"type": "response.function_call_arguments.done", **where,
             "arguments": item["arguments"]},
        ]
    else:
        part = item["content"][0]
        text = part["text"]
        events += [
            {"type": "response.output_item.added", "output_index": 0,
             "item": {**item, "content": [], "status": "in_progress"}},
            {"type": "response.content_part.added", **where, "content_index": 0,
             "part": {**part, "text": ""}},
            {"type": "response.output_text.delta", **where, "content_index": 0, "delta": text,
             "logprobs": []},
            {"type": "response.output_text.done", **where, "content_index": 0, "text": text,
             "logprobs": []},
            {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
        ]
    events += [{"type": "response.output_item.done", "output_index": 0, "item": item},
               {"type": "response.completed", "response": done}]
    return [_sse_frame({"type": e["type"], "sequence_number": i,
                        **{k: v for k, v in e.items() if k != "type"}}, e["type"])
            for i, e in enumerate(events)]


def _local_message(label: str, request: Mapping[str, Any]) -> bytes:
    from ..integrations._anthropic_objects import build_message

    return _json_bytes(_dump(build_message(label, request)))


def _local_message_stream(label: str, request: Mapping[str, Any]) -> list[bytes]:
    from ..integrations._anthropic_objects import build_message_stream

    return [_sse_frame(_dump(event), event.type)
            for event in build_message_stream(label, request)]


def _chat_text(label: str, request: Mapping[str, Any]) -> str:
    from ..integrations._openai_objects import chat_answer_text

    return chat_answer_text(label, request)


def _responses_text(label: str, request: Mapping[str, Any]) -> str:
    from ..integrations._openai_objects import response_answer_text

    return response_answer_text(label, request)


def _message_text(label: str, request: Mapping[str, Any]) -> str:
    from ..integrations._anthropic_objects import message_answer_text

    return message_answer_text(label, request)


@dataclass(frozen=True)
class _Api:
    """One classification endpoint: how to read its requests and answers, and build answers.

    ``name`` is the API as :func:`~tracer_wrap.integrations.local_answer_blocker` names it;
    ``answer_text(label, request)`` is the text a local answer of ``label`` generates (what a stop
    sequence would act on)."""

    name: str
    provider: str  # "openai" or "anthropic": the upstream, and the shape of the gateway's errors
    view: Callable[[Mapping[str, Any], TemplateLearner], PromptView | None]
    answer: Callable[[dict[str, Any]], Answer]
    stream_tap: Callable[[], _Tap]
    build: Callable[[str, Mapping[str, Any]], bytes]
    build_stream: Callable[[str, Mapping[str, Any]], list[bytes]]
    answer_text: Callable[[str, Mapping[str, Any]], str]
    operation: str = "chat"


_CHAT = _Api("openai.chat", "openai", openai_chat_view, chat_answer, _chat_stream_tap,
             _local_chat, _local_chat_stream, _chat_text)
_RESPONSES = _Api("openai.responses", "openai", openai_responses_view, responses_answer,
                  _responses_stream_tap, _local_responses, _local_responses_stream,
                  _responses_text)
_MESSAGES = _Api("anthropic.messages", "anthropic", anthropic_messages_view, messages_answer,
                 _messages_stream_tap, _local_message, _local_message_stream, _message_text)


# -- relaying upstream answers ---------------------------------------------------------------


class _Relay(StreamingResponse):
    """An upstream response streamed to the caller chunk by chunk, bytes and headers unchanged
    (hop-by-hop headers dropped). With a ``tap``, each chunk is also read, and once the caller
    has the whole body ``done(raw_label, usage)`` runs off the event loop; a tap that cannot read
    the answer stops quietly (logged), the relay goes on."""

    def __init__(self, upstream: httpx.Response, tap: _Tap | None = None,
                 done: Callable[[object, Usage | None], None] | None = None) -> None:
        self._upstream = upstream
        self._tap = tap
        self._done = done
        self._complete = False
        super().__init__(self._body(), status_code=upstream.status_code,
                         background=BackgroundTask(self._finish) if tap is not None else None)
        self.raw_headers = [(key, value) for key, value in upstream.headers.raw
                            if key.decode("latin-1").lower() not in _HOP_BY_HOP]

    async def _body(self) -> AsyncIterator[bytes]:
        async for chunk in self._upstream.aiter_raw():
            if self._tap is not None:
                try:
                    self._tap.feed(chunk)
                except Exception as exc:
                    self._tap = None
                    fault("trace logging", exc)
            yield chunk
        self._complete = True

    def _finish(self) -> None:
        if not self._complete or self._tap is None or self._done is None:
            return
        try:
            raw, usage = self._tap.result()
        except Exception as exc:
            fault("trace logging", exc)
            return
        self._done(raw, usage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except httpx.HTTPError as exc:
            # The upstream cut its answer mid-body: one line, not the server's traceback. The
            # response is left incomplete, so the server closes the connection and the caller
            # sees a truncated body, as it would from the upstream itself.
            logger.warning("tracer_wrap gateway: the upstream's answer was cut: %s: %s",
                           type(exc).__name__, exc)
        finally:
            # Also when the caller went away mid-stream: give the connection back to the pool.
            await self._upstream.aclose()


# -- the gateway -----------------------------------------------------------------------------


class _Gateway:
    """The gateway's state: the upstreams, the HTTP client, the token and the tasks."""

    def __init__(self, options: dict[str, Any], learner: TemplateLearner | None, *,
                 openai_upstream: str, anthropic_upstream: str, token: str | None,
                 timeout: float, concurrency: int,
                 transport: httpx.AsyncBaseTransport | None) -> None:
        self._options = options
        self._learner = learner
        self._tasks: Tasks | None = None
        self._tasks_lock = threading.Lock()
        self.openai_upstream = openai_upstream.rstrip("/")
        self.anthropic_upstream = anthropic_upstream.rstrip("/")
        self.token = token.encode() if token else None
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.concurrency = concurrency
        self.transport = transport
        self._client: httpx.AsyncClient | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            client = httpx.AsyncClient(
                timeout=self.timeout, transport=self.transport, follow_redirects=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
            # No default headers of httpx's own (its Accept-Encoding would make upstreams
            # compress answers for callers that never asked for it): only the caller's go out.
            for key in list(client.headers):
                del client.headers[key]
            self._client = client
        return self._client

    @property
    def tasks(self) -> Tasks:
        """Every task met, sharing the store, created on the first call tracer_wrap reads: a
        gateway disabled (``$TRACER_WRAP_DISABLE``) never opens, creates or writes its store."""
        if self._tasks is None:
            with self._tasks_lock:
                if self._tasks is None:
                    self._tasks = Tasks(learner=self._learner, **self._options)
        return self._tasks

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # created inside the event loop, where anyio wants it
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        return self._limiter

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        for task in (self._tasks.tasks() if self._tasks is not None else {}).values():
            task.close(wait=False)  # flushes its counters

    # -- requests ------------------------------------------------------------------------

    def check_origin(self, request: Request) -> None:
        """Raise a 403 _Problem for a browser request from another origin."""
        why = foreign_origin(request.headers, request.url.scheme)
        if why is not None:
            raise _Problem(403, "permission_error", f"tracer_wrap gateway: {why} is refused;"
                                                    " call the gateway from a server")

    def check_token(self, request: Request) -> None:
        """Raise a 403 _Problem for a browser request from another origin, a 401 one when the
        gateway has a token and the request does not carry it."""
        self.check_origin(request)
        if self.token is None:
            return
        given = request.headers.get(TOKEN_HEADER, "").strip().encode()
        if not hmac.compare_digest(given, self.token):
            raise _Problem(401, "authentication_error",
                           f"tracer_wrap gateway: missing or wrong {TOKEN_HEADER} header")

    def provider_of(self, request: Request) -> str:
        path = request.url.path
        if (path.startswith(("/v1/messages", "/v1/complete"))
                or "anthropic-version" in request.headers):
            return "anthropic"
        return "openai"

    def upstream_request(self, request: Request, provider: str, content: Any, *,
                         traced: bool = False) -> httpx.Request:
        """The caller's request, addressed to the upstream: same method, path, query, headers
        (but hop-by-hop ones and the gateway's own) and body."""
        path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        if provider == "anthropic":
            url = self.anthropic_upstream + path
        else:
            url = self.openai_upstream + (path[3:] if path == "/v1" or path.startswith("/v1/")
                                          else path)
        query = request.scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        drop = set(_NOT_FORWARDED)
        drop.update(h.strip().lower() for h in request.headers.get("connection", "").split(","))
        if isinstance(content, bytes):
            drop.add("content-length")  # recomputed from the body
        if traced:
            drop.add("accept-encoding")  # its answer must be readable; identity is the default
        headers = [(k, v) for k, v in request.headers.raw
                   if k.decode("latin-1").lower() not in drop]
        return self.client.build_request(request.method, url, headers=headers, content=content)

    async def send(self, upstream: httpx.Request) -> httpx.Response:
        return await self.client.send(upstream, stream=True)

    async def forward(self, request: Request, provider: str, body: bytes | None = None
                      ) -> Response:
        """Relay the request to the upstream and its answer back, untouched and untraced."""
        content: Any = body
        if body is None and ("content-length" in request.headers
                             or "transfer-encoding" in request.headers):
            content = request.stream()  # uploads stream through, never held in memory
        try:
            response = await self.send(self.upstream_request(request, provider, content))
        except httpx.HTTPError as exc:
            return _unreachable(provider, exc)
        return _Relay(response)

    # -- classification calls ------------------------------------------------------------

    def task_header(self, request: Request) -> str | None:
        """The task the ``X-Tracer-Wrap-Task`` header names, read as UTF-8 (None: no header, or
        a blank one). Raises a 400 _Problem when it is not UTF-8 or is longer than the sidecar's
        limit of task names (:data:`~tracer_wrap.ops._http.MAX_TASK_CHARS`)."""
        key = TASK_HEADER.encode()
        # Starlette decodes header values as latin-1; clients send UTF-8 (httpx, curl, the SDKs).
        raw = next((v for k, v in request.headers.raw if k.lower() == key), None)
        if raw is None:
            return None
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Problem(400, "invalid_request_error",
                           f"tracer_wrap gateway: the {TASK_HEADER} header is not UTF-8") from None
        if len(name) > MAX_TASK_CHARS:
            raise _Problem(400, "invalid_request_error",
                           f"tracer_wrap gateway: the {TASK_HEADER} header names a task of"
                           f" {len(name)} characters; task names are 1 to {MAX_TASK_CHARS}")
        return name if name.strip() else None

    def view(self, api: _Api, request: Request, body: bytes
             ) -> tuple[str, str, dict[str, Any]] | None:
        """``(task name, text, request)`` of a classification call, or None: forward it
        untouched. Raises a 400 _Problem for a bad ``X-Tracer-Wrap-Task`` header
        (:meth:`task_header`), nothing else."""
        if names.disabled():
            return None
        named = self.task_header(request)
        if len(body) > MAX_INSPECT_BYTES or not is_json(request.headers.get("content-type")):
            return None
        try:
            payload = read_json(body)
        except BadJson:
            return None  # the upstream says what is wrong with it
        if not isinstance(payload, dict):
            return None
        try:
            view = api.view(payload, self.tasks.learner)
        except Exception as exc:
            fault("task lookup", exc)
            return None
        if view is None:
            return None
        return named or view.task_key, view.text, payload

    async def classify(self, api: _Api, request: Request) -> Response:
        body = await request.body()
        found = self.view(api, request, body)
        if found is None:
            return await self.forward(request, api.provider, body)
        name, text, payload = found
        planned = await anyio.to_thread.run_sync(self.plan, api, name, text, payload,
                                                 limiter=self.limiter)
        if isinstance(planned, Response):  # answered locally
            return planned
        done = planned.done if isinstance(planned, _Deferred) else None
        try:
            response = await self.send(self.upstream_request(request, api.provider, body,
                                                             traced=done is not None))
        except httpx.HTTPError as exc:  # the engine's done() is never called: no trace
            return _unreachable(api.provider, exc)
        if done is None or not response.is_success:  # an upstream error logs no trace
            return _Relay(response)
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":  # asked for identity, got something else: relay only
            return _Relay(response)
        try:
            tap = api.stream_tap() if _is_event_stream(response) else _JsonTap(api.answer)
        except Exception as exc:  # e.g. the provider's SDK is missing: relay, untraced
            fault("trace logging", exc)
            return _Relay(response)
        return _Relay(response, tap, done)

    def plan(self, api: _Api, name: str, text: str, payload: dict[str, Any]) -> Any:
        """Run one classification call through the engine, in a worker thread (planning embeds,
        which must not hold up the event loop): a local answer (a Response), or a
        :class:`_Deferred` whose ``done`` records the upstream's answer once it is known, or
        anything else: forward untraced.

        The engine's "LLM" only says "go upstream": the upstream call itself runs on the event
        loop, so no thread waits for the LLM. A call that never gets its answer (upstream error,
        caller gone) never calls ``done``: no trace, as the engine wants for failed LLM calls.
        """
        try:
            task = self.tasks.task(name)
        except Exception as exc:  # the store cannot be opened: a plain proxy, this time
            fault("task lookup", exc)
            return None
        return task.call(text, _go_upstream, self.reply(api, task, payload))

    def reply(self, api: _Api, task: TracedTask, payload: dict[str, Any]) -> Reply[Any]:
        """How the engine builds this call's local answer. ``build`` is None (the call is
        traced but always goes upstream) when the request sets an option a local answer cannot
        honour exactly (``n > 1``, ``logprobs``, ``store``, a stop sequence that would cut a
        label, ...): the SDK wrappers' own rule,
        :func:`~tracer_wrap.integrations.local_answer_blocker`, applied to the wire body, where
        the client has already merged any extra body fields."""
        streaming = payload.get("stream") is True

        def texts() -> list[str]:
            router = task.router
            return [api.answer_text(task.spellings.spell(label), payload)
                    for label in (router.labels if router is not None else ())]

        def build(label: str) -> Response:
            headers = {LOCAL_HEADER: "local"}
            if streaming:
                frames = api.build_stream(label, payload)
                return Response(b"".join(frames), headers=headers,
                                media_type="text/event-stream; charset=utf-8")
            return Response(api.build(label, payload), headers=headers,
                            media_type="application/json")

        def later(result: Any, done: Callable[[object, Usage | None], None]) -> _Deferred:
            return _Deferred(done)

        attributes = telemetry.request_attributes(api.provider, api.name, payload,
                                                  stream=streaming, operation=api.operation)
        blocked = local_answer_blocker(api.name, payload, texts)
        if blocked is not None:
            attributes[telemetry.BLOCKED] = blocked
        return Reply(build=None if blocked is not None else build, later=later,
                     attributes=attributes)


@dataclass(frozen=True)
class _Deferred:
    """A classification call the engine sent upstream; ``done(raw_label, usage)`` traces it."""

    done: Callable[[object, Usage | None], None]


def _go_upstream() -> None:
    """The engine's LLM call for the gateway: the call is made by the caller of the engine."""


def _is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def _error(provider: str, status: int, kind: str, message: str) -> JSONResponse:
    if provider == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


def _unreachable(provider: str, exc: httpx.HTTPError) -> JSONResponse:
    timeout = isinstance(exc, httpx.TimeoutException)
    # The exception names the URL, never a header: the caller's key stays out of the log.
    logger.warning("tracer_wrap gateway: upstream %s: %s: %s",
                   "timed out" if timeout else "unreachable", type(exc).__name__, exc)
    return _error(provider, 504 if timeout else 502, "api_error",
                  f"tracer_wrap gateway: upstream {'timed out' if timeout else 'unreachable'}"
                  f" ({type(exc).__name__})")


def create_app(store: Store | str | None = None, *, openai_upstream: str = OPENAI_UPSTREAM,
               anthropic_upstream: str = ANTHROPIC_UPSTREAM, token: str | None = None,
               routing: bool = False, timeout: float = 600.0, concurrency: int = 32,
               transport: httpx.AsyncBaseTransport | None = None,
               learner: TemplateLearner | None = None, **options: Any) -> Starlette:
    """The gateway's ASGI application (see the module docstring).

    ``store`` (a store, a directory or a ``redis://`` URL; default: the usual
    ``$TRACER_WRAP_STORE`` / ``tracer_wrap.toml`` / ``./.tracer_wrap``) keeps the traces of every
    task found. ``routing`` is the default of every task's routing switch, as in zero-code mode:
    with False nothing is answered locally until ``tracer-wrap routing TASK on``. ``options`` are
    the task options of every task (:class:`~tracer_wrap.options.TaskOptions`: ``embedder``,
    ``target``, ``audit_rate``, ...). ``token`` requires ``X-Tracer-Wrap-Token`` on every request
    but ``GET /tracer-wrap/healthz``. ``timeout`` is how long to wait on the upstream for each
    piece of an answer (and at most 10 s to connect). ``concurrency`` is how many worker threads
    plan classification calls at once (embedding, routing, building a local answer; more wait,
    while upstream calls in flight hold no thread). ``transport`` replaces the HTTP transport
    (tests). Raises ConfigError on a bad option.
    """
    options["routing"] = routing
    if store is not None:
        options["store"] = store
    TaskOptions.resolve("tracer_wrap", options)  # a bad option raises now, as Tasks would
    gateway = _Gateway(options, learner, openai_upstream=openai_upstream,
                       anthropic_upstream=anthropic_upstream, token=token, timeout=timeout,
                       concurrency=concurrency, transport=transport)

    def guarded(handler: Callable[[Request], Any], *, token: bool = True
                ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                (gateway.check_token if token else gateway.check_origin)(request)
                response: Response = await handler(request)
                return response
            except _Problem as problem:
                return _error(gateway.provider_of(request), problem.status, problem.kind,
                              problem.message)
        return endpoint

    def classification(api: _Api) -> Callable[[Request], Any]:
        return guarded(lambda request: gateway.classify(api, request))

    async def anything(request: Request) -> Response:
        return await gateway.forward(request, gateway.provider_of(request))

    async def healthz(request: Request) -> Response:
        from .. import __version__

        return JSONResponse({"status": "ok", "version": __version__})

    routes = [Route("/tracer-wrap/healthz", guarded(healthz, token=False), methods=["GET"])]
    for path, api in (("/chat/completions", _CHAT), ("/responses", _RESPONSES)):
        routes += [Route(f"/v1{path}", classification(api), methods=["POST"]),
                   Route(path, classification(api), methods=["POST"])]
    routes += [Route("/v1/messages", classification(_MESSAGES), methods=["POST"]),
               Route("/{path:path}", guarded(anything),
                     methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app


def upstream_problem(url: str) -> str | None:
    """Why ``url`` cannot be an upstream's base URL (None when it can): it must be an absolute
    ``http://`` or ``https://`` URL with a host."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return f"{url!r} is not a URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"{url!r} is not an http:// or https:// base URL"
    return None


def app_from_environment() -> Starlette:
    """The application of one worker process of :func:`run` (its settings come in
    ``$TRACER_WRAP_GATEWAY_CONFIG``)."""
    settings = json.loads(os.environ[names.ENV_GATEWAY_CONFIG])
    return create_app(**settings)


def run(store: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
        token: str | None = None, workers: int = 1, openai_upstream: str = OPENAI_UPSTREAM,
        anthropic_upstream: str = ANTHROPIC_UPSTREAM, routing: bool = False,
        embedder: str | None = None, timeout: float = 600.0,
        ready: Callable[[], None] | None = None) -> None:
    """Serve the gateway with uvicorn until interrupted, in ``workers`` processes; ``ready()``
    is called once every check below has passed, just before serving.

    The store is opened first, as ``tracer-wrap serve`` opens its own (created if missing),
    unless tracer_wrap is disabled (``$TRACER_WRAP_DISABLE``: then it is not touched at all).
    Raises ConfigError when an upstream is not an http(s) URL (:func:`upstream_problem`), or
    ``host`` is not a loopback address and no ``token`` is given (the gateway answers and
    forwards calls on its callers' keys: beyond this machine it must know who calls),
    StoreError when the store cannot be opened or written, MissingExtraError when uvicorn is not
    installed.
    """
    for option, url in (("openai_upstream", openai_upstream),
                        ("anthropic_upstream", anthropic_upstream)):
        why = upstream_problem(url)
        if why is not None:
            raise ConfigError(f"{option}: {why}")
    require_token_beyond_loopback(host, token, server="gateway",
                                  how=f"in the {TOKEN_HEADER} header")
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("uvicorn", "gateway") from exc
    if not names.disabled():
        # Refuse an unusable store now: once serving, the gateway fails open on every call and
        # would run as an untraced proxy forever, reporting itself healthy.
        open_store(store)
    settings: dict[str, Any] = {"store": store, "openai_upstream": openai_upstream,
                                "anthropic_upstream": anthropic_upstream, "token": token,
                                "routing": routing, "timeout": timeout}
    if embedder is not None:
        settings["embedder"] = embedder
    # The gateway relays the upstream's own Date and Server headers; uvicorn must not add its own.
    common: dict[str, Any] = {"host": host, "port": port, "log_level": "warning",
                              "access_log": False, "server_header": False, "date_header": False}
    if ready is not None:
        ready()
    if workers <= 1:
        uvicorn.run(create_app(**settings), **common)
        return
    os.environ[names.ENV_GATEWAY_CONFIG] = json.dumps(settings)  # the workers' processes inherit it
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **common)
