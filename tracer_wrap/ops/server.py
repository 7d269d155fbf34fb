"""The HTTP sidecar: route inputs and log traces from applications written in any language.

Run it with ``tracer-wrap serve --store DIR --port 8000`` (extra ``server``: starlette + uvicorn).
Endpoints (JSON in, JSON out; the OpenAPI 3.1 document is served at ``GET /openapi.json``):

``POST /v1/tasks/{task}/route``          ``{"text": ...}`` or ``{"embedding": [...]}``
                                         -> ``{"label", "handled", "score", "version", ...}``
``POST /v1/tasks/{task}/route/batch``    ``{"texts": [...]}`` or ``{"embeddings": [[...]]}``
``POST /v1/tasks/{task}/traces``         ``{"input", "teacher"}`` (+ ``audit``, ``router_label``)
``POST /v1/tasks/{task}/traces/batch``   ``{"traces": [{"input", "teacher"}, ...]}``
``GET  /healthz``                        liveness, never needs the token

The caller's loop: ask ``route``; if ``handled`` use ``label``, else call the LLM and log its answer
with ``traces``. A task without a fitted router (or whose router cannot be loaded) answers
``handled: false``, so the caller always falls back to the LLM: the sidecar fails open.

A trace logged while a router serves the task is, by default, marked not exchangeable (the LLM
only saw the inputs the router deferred, which must not calibrate the gate); send
``"audit": true`` with the ``router_label`` for random audit samples, which may.

Errors are JSON ``{"error": {"code", "message"}}``: 400 malformed JSON, 401 missing or wrong bearer
token (compared in constant time), 404 unknown task or path, 413 body over the size limit, 422 a
well-formed body with wrong fields. Bad input never causes a 500.
"""

from __future__ import annotations

import hmac
import json
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._log import fault, logger
from ..errors import MissingExtraError, TracerWrapError
from ..engine import MAX_INPUT_CHARS
from ..model.router import Router
from ..store import Origin, Store, open_store
from ..versions import load_version

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingExtraError("starlette", "server") from exc

__all__ = ["create_app", "run"]

#: Default largest request body, in bytes.
MAX_BODY_BYTES = 1_000_000
#: Most items in one batch request.
MAX_BATCH = 1_000


class _Problem(Exception):
    """A client error, answered as JSON with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Served:
    version: int | None
    router: Router | None
    reason: str = ""


class _Sidecar:
    """The sidecar's state: the store, the routers it serves and their embedders."""

    def __init__(self, store: Store, *, token: str | None, max_body_bytes: int,
                 embedder: str | None, max_batch: int) -> None:
        self.store = store
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.embedder_name = embedder
        self.max_batch = max_batch
        self._served: dict[str, _Served] = {}
        self._embedders: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- routers and embedders, reloaded when the store's current version changes --------------

    def served(self, task: str) -> _Served:
        version = self.store.current_version(task)
        entry = self._served.get(task)
        if entry is not None and entry.version == version:
            return entry
        with self._lock:
            entry = self._served.get(task)
            if entry is None or entry.version != version:
                entry = self._load(task, version)
                self._served[task] = entry
        return entry

    def _load(self, task: str, version: int | None) -> _Served:
        if version is None:
            if task not in self.store.tasks():
                raise _Problem(404, "unknown_task", f"no task {task!r} in this store")
            return _Served(None, None, "no router fitted yet")
        try:
            return _Served(version, load_version(self.store, task, version))
        except TracerWrapError as exc:
            fault("sidecar router load", exc)
            return _Served(version, None, f"router version {version} cannot be loaded")

    def embed(self, router: Router, texts: list[str]) -> np.ndarray:
        from ..options import make_embedder

        name = self.embedder_name or str(router.info.get("embedder") or "") or None
        key = name or ""
        embedder = self._embedders.get(key)
        if embedder is None:
            with self._lock:
                embedder = self._embedders.setdefault(key, make_embedder(name))
        return embedder.embed(texts)

    # -- request handling ------------------------------------------------------------------------

    def check_token(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
            raise _Problem(401, "unauthorized", "missing or wrong bearer token")

    async def body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _Problem(413, "body_too_large",
                           f"request body over {self.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Problem(413, "body_too_large",
                               f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Problem(400, "invalid_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _Problem(400, "invalid_json", "body must be a JSON object")
        return data

    def route(self, task: str, texts: list[str] | None, vectors: list[Any] | None
              ) -> tuple[_Served, list[dict[str, Any]]]:
        served = self.served(task)
        n = len(texts) if texts is not None else len(vectors or [])
        if served.router is None:
            return served, [_deferred(served.reason)] * n
        router = served.router
        out: list[dict[str, Any] | None] = [None] * n
        if vectors is not None:
            matrix = _matrix(vectors, router.dim)
            rows = list(range(n))
        else:
            assert texts is not None
            rows = [i for i, t in enumerate(texts) if len(t) <= MAX_INPUT_CHARS]
            for i in set(range(n)) - set(rows):
                out[i] = _deferred(f"input longer than {MAX_INPUT_CHARS} characters")
            try:
                matrix = self.embed(router, [texts[i] for i in rows]) if rows else None
            except TracerWrapError as exc:  # fail open: the caller asks the LLM
                fault("sidecar embedding", exc)
                return served, [_deferred("embedding failed")] * n
            if matrix is not None and matrix.shape[1] != router.dim:
                fault("sidecar embedding", ValueError("embedder dimension differs from router"))
                return served, [_deferred("embedder does not match the router")] * n
        if rows:
            for i, d in zip(rows, router.route_many(None if vectors is not None else [texts[i] for i in rows], matrix)):
                out[i] = {"label": d.label, "handled": d.local, "score": d.score,
                          "reason": d.reason}
        return served, out  # type: ignore[return-value]

    def log(self, task: str, rows: list[dict[str, Any]]) -> int:
        serving = False
        if self.store.current_version(task) is not None:
            served = self.served(task)
            serving = served.router is not None and served.router.threshold is not None
        for row in rows:
            audit = row["audit"]
            self.store.append(
                task, row["input"], row["teacher"],
                origin=Origin.AUDIT if audit else Origin.LLM,
                exchangeable=row["exchangeable"] if row["exchangeable"] is not None
                else (audit or not serving),
                router_label=row["router_label"], meta=row["meta"],
            )
        return len(rows)


def create_app(store: Store | str, *, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, embedder: str | None = None,
               max_batch: int = MAX_BATCH) -> Starlette:
    """The sidecar's ASGI application over ``store`` (a store, a directory or a ``redis://`` URL).

    ``token`` requires ``Authorization: Bearer <token>`` on every endpoint except ``/healthz``
    and ``/openapi.json``. ``embedder`` overrides the embedder named in each router's manifest.
    """
    store = open_store(store)
    side = _Sidecar(store, token=token, max_body_bytes=max_body_bytes, embedder=embedder,
                    max_batch=max_batch)

    def endpoint(handler: Callable[[Request, dict[str, Any] | None], Any], *, auth: bool = True,
                 has_body: bool = True, status: int = 200
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def run_endpoint(request: Request) -> Response:
            try:
                if auth:
                    side.check_token(request)
                body = await side.body(request) if has_body else None
                result = await run_in_threadpool(handler, request, body)
                return JSONResponse(result, status_code=status)
            except _Problem as p:
                return _error(p.status, p.code, p.message,
                              {"WWW-Authenticate": "Bearer"} if p.status == 401 else None)
            except TracerWrapError as exc:  # e.g. the store's disk refuses: the caller retries
                fault("sidecar request", exc)
                return _error(503, "unavailable", str(exc))
        return run_endpoint

    def task_of(request: Request) -> str:
        task = request.path_params["task"]
        if not task.strip() or len(task) > 200:
            raise _Problem(404, "unknown_task", "task names are 1 to 200 characters")
        return task

    def route_one(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        _only(body, {"text", "embedding"})
        if ("text" in body) == ("embedding" in body):
            raise _Problem(422, "invalid_body", "give exactly one of 'text' or 'embedding'")
        task = task_of(request)
        if "text" in body:
            served, [decision] = side.route(task, [_text(body["text"], "text")], None)
        else:
            served, [decision] = side.route(task, None, [body["embedding"]])
        return {**decision, "version": served.version}

    def route_batch(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        _only(body, {"texts", "embeddings"})
        if ("texts" in body) == ("embeddings" in body):
            raise _Problem(422, "invalid_body", "give exactly one of 'texts' or 'embeddings'")
        key = "texts" if "texts" in body else "embeddings"
        items = _list(body[key], key, side.max_batch)
        task = task_of(request)
        if key == "texts":
            served, decisions = side.route(
                task, [_text(t, f"texts[{i}]") for i, t in enumerate(items)], None)
        else:
            served, decisions = side.route(task, None, items)
        return {"version": served.version, "decisions": decisions}

    def log_one(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        row = _trace_row(body, "body")
        return {"logged": side.log(task_of(request), [row])}

    def log_batch(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        _only(body, {"traces"})
        if "traces" not in body:
            raise _Problem(422, "invalid_body", "missing field 'traces'")
        items = _list(body["traces"], "traces", side.max_batch)
        rows = [_trace_row(item, f"traces[{i}]") for i, item in enumerate(items)]
        return {"logged": side.log(task_of(request), rows)}

    def healthz(request: Request, body: Any) -> dict[str, Any]:
        from .. import __version__

        return {"status": "ok", "version": __version__}

    def openapi(request: Request, body: Any) -> dict[str, Any]:
        return OPENAPI

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
            return _error(exc.status_code, code, str(exc.detail))
        logger.exception("tracer_wrap sidecar: unexpected error")  # a bug, never bad input
        return _error(500, "internal_error", "unexpected error; see the sidecar's log")

    routes = [
        Route("/v1/tasks/{task}/route", endpoint(route_one), methods=["POST"]),
        Route("/v1/tasks/{task}/route/batch", endpoint(route_batch), methods=["POST"]),
        Route("/v1/tasks/{task}/traces", endpoint(log_one, status=201), methods=["POST"]),
        Route("/v1/tasks/{task}/traces/batch", endpoint(log_batch, status=201), methods=["POST"]),
        Route("/healthz", endpoint(healthz, auth=False, has_body=False), methods=["GET"]),
        Route("/openapi.json", endpoint(openapi, auth=False, has_body=False), methods=["GET"]),
    ]
    return Starlette(routes=routes,
                     exception_handlers={HTTPException: not_found, Exception: not_found})


def run(store: Store | str, *, host: str = "127.0.0.1", port: int = 8000,
        token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
        embedder: str | None = None) -> None:
    """Serve :func:`create_app` with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("uvicorn", "server") from exc
    app = create_app(store, token=token, max_body_bytes=max_body_bytes, embedder=embedder)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


# -- validation ----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _deferred(reason: str) -> dict[str, Any]:
    return {"label": None, "handled": False, "score": None, "reason": reason}


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise _Problem(422, "invalid_body", f"unknown field(s) {sorted(extra)}; "
                                            f"expected {sorted(allowed)}")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem(422, "invalid_body", f"'{where}' must be a non-empty string")
    return value


def _list(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _Problem(422, "invalid_body", f"'{where}' must be a non-empty list")
    if len(value) > limit:
        raise _Problem(422, "invalid_body", f"'{where}' has {len(value)} items; at most {limit}")
    return value


def _matrix(rows: list[Any], dim: int) -> np.ndarray:
    for i, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) != dim
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in row)):
            raise _Problem(422, "invalid_embedding",
                           f"embedding {i} must be a list of {dim} finite numbers")
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def _trace_row(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _Problem(422, "invalid_body", f"'{where}' must be an object")
    _only(item, {"input", "teacher", "audit", "router_label", "exchangeable", "meta"})
    for key in ("input", "teacher"):
        if key not in item:
            raise _Problem(422, "invalid_body", f"'{where}' is missing '{key}'")
    row = {"input": _text(item["input"], f"{where}.input"),
           "teacher": _text(item["teacher"], f"{where}.teacher"),
           "audit": item.get("audit", False), "router_label": item.get("router_label"),
           "exchangeable": item.get("exchangeable"), "meta": item.get("meta") or {}}
    if not isinstance(row["audit"], bool):
        raise _Problem(422, "invalid_body", f"'{where}.audit' must be true or false")
    if row["exchangeable"] is not None and not isinstance(row["exchangeable"], bool):
        raise _Problem(422, "invalid_body", f"'{where}.exchangeable' must be true or false")
    if row["router_label"] is not None and not isinstance(row["router_label"], str):
        raise _Problem(422, "invalid_body", f"'{where}.router_label' must be a string")
    if not isinstance(row["meta"], dict):
        raise _Problem(422, "invalid_body", f"'{where}.meta' must be an object")
    if len(row["input"]) > MAX_INPUT_CHARS:
        raise _Problem(422, "invalid_body", f"'{where}.input' is over {MAX_INPUT_CHARS} characters")
    return row


# -- the OpenAPI document ------------------------------------------------------------------------


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ERRORS = {str(code): {"description": text, **_json(_schema_ref("Error"))} for code, text in (
    (400, "Malformed JSON"), (401, "Missing or wrong bearer token"),
    (404, "Unknown task"), (413, "Body over the size limit"), (422, "Invalid fields"))}
_TASK_PARAM = [{"name": "task", "in": "path", "required": True, "schema": {"type": "string"}}]


def _post(summary: str, request: str, response: str, status: str = "200") -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": _TASK_PARAM,
                     "requestBody": {"required": True, **_json(_schema_ref(request))},
                     "responses": {status: {"description": "OK", **_json(_schema_ref(response))},
                                   **_ERRORS}}}


_NUM_LIST = {"type": "array", "items": {"type": "number"}}
_DECISION = {
    "type": "object", "required": ["label", "handled", "score"],
    "properties": {"label": {"type": ["string", "null"]}, "handled": {"type": "boolean"},
                   "score": {"type": ["number", "null"]}, "reason": {"type": "string"}},
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tracer_wrap sidecar", "version": "1",
             "description": "Route classification inputs to a certified local surrogate and log "
                            "the LLM's labels. If 'handled' is false, call the LLM and log its "
                            "label with /traces."},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/tasks/{task}/route": _post("Route one input", "RouteRequest", "RouteResponse"),
        "/v1/tasks/{task}/route/batch": _post("Route many inputs", "RouteBatchRequest",
                                              "RouteBatchResponse"),
        "/v1/tasks/{task}/traces": _post("Log one LLM label", "Trace", "Logged", "201"),
        "/v1/tasks/{task}/traces/batch": _post("Log many LLM labels", "TraceBatch", "Logged",
                                               "201"),
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "OK"}}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "RouteRequest": {"type": "object", "properties": {
                "text": {"type": "string", "minLength": 1}, "embedding": _NUM_LIST},
                "oneOf": [{"required": ["text"]}, {"required": ["embedding"]}]},
            "RouteResponse": {**_DECISION, "properties": {
                **_DECISION["properties"], "version": {"type": ["integer", "null"]}}},
            "RouteBatchRequest": {"type": "object", "properties": {
                "texts": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_BATCH},
                "embeddings": {"type": "array", "items": _NUM_LIST, "maxItems": MAX_BATCH}},
                "oneOf": [{"required": ["texts"]}, {"required": ["embeddings"]}]},
            "RouteBatchResponse": {"type": "object", "properties": {
                "version": {"type": ["integer", "null"]},
                "decisions": {"type": "array", "items": _DECISION}}},
            "Trace": {"type": "object", "required": ["input", "teacher"], "properties": {
                "input": {"type": "string"}, "teacher": {"type": "string"},
                "audit": {"type": "boolean", "default": False},
                "router_label": {"type": "string"}, "exchangeable": {"type": "boolean"},
                "meta": {"type": "object"}}},
            "TraceBatch": {"type": "object", "required": ["traces"], "properties": {
                "traces": {"type": "array", "items": _schema_ref("Trace"),
                           "maxItems": MAX_BATCH}}},
            "Logged": {"type": "object", "properties": {"logged": {"type": "integer"}}},
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}},
        },
    },
}
