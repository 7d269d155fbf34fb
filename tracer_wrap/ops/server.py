"""The HTTP sidecar: route inputs and log LLM answers from applications written in any language.

Run it with ``tracer-wrap serve --store DIR --port 8000`` (extra ``server``: starlette + uvicorn).
Every request runs the engine (:mod:`tracer_wrap.engine`), the same path as the Python
decorator and clients: the served version with its hash check, the out-of-distribution check,
the routing switch (shadow mode), the drift breaker, audit samples, accounting and refits.
Endpoints (JSON in, JSON out; the OpenAPI 3.1 document is served at ``GET /openapi.json``):

``POST /v1/tasks/{task}/route``          ``{"text": ...}`` or ``{"embedding": [...]}``
                                         -> ``{"label", "local", "score", "reason", "version",
                                         "audit", "plan"}``
``POST /v1/tasks/{task}/route/batch``    ``{"texts": [...]}`` or ``{"embeddings": [[...]]}``
``POST /v1/tasks/{task}/traces``         ``{"input", "teacher", "plan"}`` (+ ``usage``, ``meta``,
                                         ``embedding``)
``POST /v1/tasks/{task}/traces/batch``   ``{"traces": [{"input", "teacher", "plan"}, ...]}``
``GET  /v1/tasks/{task}/status``         the figures ``tracer-wrap status`` shows
``GET  /healthz``                        liveness, never needs the token
``GET  /metrics``                        every task's counters as Prometheus text (ops/metrics.py)

The caller's loop: ask ``route``; if ``local`` use ``label`` (counted as a call answered
locally); else call the LLM and log its answer with ``traces``, echoing the ``plan`` string the
route returned (and, for a plan routed by ``embedding``, that embedding). The plan is signed
(HMAC-SHA256 with a per-task key kept in the store), so only plans this engine made can mark a
trace as an audit sample or as fit to calibrate the gate. A plan is bound to the input it was
made for (a digest of the text or embedding, inside the signed payload), is good for
:data:`PLAN_SECONDS`, and counts once per sidecar process: a trace logged without a plan, or with
a plan that is forged, made for another input, expired or already used, counts as an unplanned
LLM answer, which calibrates only while no version answers locally (never as an audit). A task
without a served router answers ``local: false``, so the caller always falls back to the LLM: the
sidecar fails open.

Errors are JSON ``{"error": {"code", "message"}}``: 400 malformed JSON (also nested deeper than
64 levels, integers beyond 64 bits, non-finite numbers, lone surrogates), 401 missing or wrong
bearer token (compared in constant time), 403 a browser request from another origin, 404 unknown
path, 413 body over the size limit, 415 a POST whose ``Content-Type`` is not
``application/json``, 422 a well-formed body with wrong fields. Bad input never causes a 500.

Security (the rules of :mod:`tracer_wrap.ops._http`): :func:`run` refuses to listen beyond
loopback without a token; requests sent by a web page of another origin are refused, and a POST
must say ``application/json`` (a page can send ``text/plain`` across origins without asking the
browser first, never ``application/json``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from .._log import logger
from ..accounting import Usage
from ..engine import MAX_INPUT_CHARS, Plan, TracedTask
from ..errors import MissingExtraError, TracerWrapError
from ..model.embedder import Embedder, make_embedder, unit_rows
from ..model.router import Decision
from ..options import TaskOptions
from ..store import Store, open_store
from ._http import (
    MAX_TASK_CHARS,
    BadJson,
    foreign_origin,
    is_json,
    read_json,
    require_token_beyond_loopback,
)
from .metrics import metrics_route
from .status import task_status

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
#: Most tokens one call's usage may report (the counters are 64-bit sums).
MAX_TOKENS = 10**9
#: Tasks whose engine a sidecar keeps in memory; the least recently used one is closed beyond.
MAX_TASKS = 1_024
#: How long a plan stays good for logging its trace, in seconds (on the wall clock, which every
#: process reads alike): time for the LLM call and its retries.
PLAN_SECONDS = 3_600
#: Most used plans a sidecar process remembers (plans past their expiry are forgotten first).
MAX_USED_PLANS = 100_000
#: Store setting holding a task's key for signing plans.
_PLAN_KEY = "sidecar_plan_key"
#: The fields of a signed plan (:meth:`_Sidecar.sign`); a token without one of them is refused.
_TOKEN_FIELDS = frozenset({"v", "a", "m", "x", "s", "p", "l", "c", "i", "e", "n"})


class _Problem(Exception):
    """A client error, answered as JSON with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Sidecar:
    """The sidecar's state: the store, one engine per task (bounded) and the shared embedder."""

    def __init__(self, store: Store, *, token: str | None, max_body_bytes: int,
                 embedder: Embedder | str | None, max_batch: int) -> None:
        self.store = store
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        base = TaskOptions.resolve("sidecar", {"embedder": embedder})
        self.embedder = base.embedder if isinstance(base.embedder, Embedder) \
            else make_embedder(base.embedder)
        self._tasks: OrderedDict[str, TracedTask] = OrderedDict()
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()
        #: Seconds since the epoch (replaced in tests).
        self.clock: Callable[[], float] = time.time
        # The ids of plans used by a trace, with their expiry, in the order of use; a plan that
        # expires at or before _used_floor was forgotten unexpired (the set was full): refused.
        self._used: OrderedDict[str, float] = OrderedDict()
        self._used_floor = 0.0
        self._used_lock = threading.Lock()

    def task(self, name: str) -> TracedTask:
        with self._lock:
            found = self._tasks.get(name)
            if found is not None:
                self._tasks.move_to_end(name)
                return found
        created = TracedTask(name, store=self.store, embedder=self.embedder)
        with self._lock:
            found = self._tasks.setdefault(name, created)
            self._tasks.move_to_end(name)
            evicted = self._tasks.popitem(last=False)[1] if len(self._tasks) > MAX_TASKS else None
        if evicted is not None:
            evicted.close(wait=False)
        return found

    def close(self) -> None:
        with self._lock:
            tasks, self._tasks = list(self._tasks.values()), OrderedDict()
        for task in tasks:
            task.close(wait=False)

    # -- plans, signed -----------------------------------------------------------------------

    def _key(self, task: str) -> bytes:
        key = self._keys.get(task)
        if key is None:
            stored = self.store.setdefault_setting(task, _PLAN_KEY, secrets.token_hex(32))
            key = self._keys.setdefault(task, bytes.fromhex(str(stored)))
        return key

    def sign(self, task: str, plan: Plan, digest: str) -> str:
        """The token of ``plan``, made for the input whose :func:`_digest` is ``digest``: the
        plan, the digest, an expiry :data:`PLAN_SECONDS` from now and a random id, signed."""
        decision = plan.decision
        payload = json.dumps({
            "v": plan.version, "a": plan.audit, "m": plan.sampled, "x": plan.answering,
            "s": plan.shadow, "p": plan.audit_p,
            "l": None if decision is None else decision.label,
            "c": None if decision is None else decision.local,
            "i": digest, "e": math.ceil(self.clock()) + PLAN_SECONDS,
            "n": secrets.token_urlsafe(12),
        }, separators=(",", ":")).encode()
        mac = hmac.new(self._key(task), payload, hashlib.sha256).digest()[:16]
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify(self, task: str, token: Any, digest: str) -> Plan | None:
        """The plan a token stands for, used now by a trace of the input whose :func:`_digest`
        is ``digest``; None when the token is absent, malformed, not signed here, made for
        another input, expired or already used in this process. A plan returned is marked used.
        """
        if not isinstance(token, str) or "." not in token or len(token) > 1024:
            return None
        body, _, mac = token.partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except ValueError:
            return None
        if not hmac.compare_digest(hmac.new(self._key(task), payload, hashlib.sha256)
                                   .digest()[:16], given):
            return None
        data = json.loads(payload)
        if not isinstance(data, dict) or not _TOKEN_FIELDS <= data.keys():
            return None  # signed here by a release that recorded less of the plan
        expires = data["e"]
        if (data["i"] != digest or not isinstance(expires, (int, float))
                or expires <= self.clock() or not self._use(str(data["n"]), float(expires))):
            return None
        decision = None
        if data["l"] is not None:
            decision = Decision(data["l"], bool(data["c"]), math.nan, None)
        return Plan(None, version=data["v"], decision=decision, audit=bool(data["a"]),
                    sampled=bool(data["m"]), answering=bool(data["x"]), shadow=bool(data["s"]),
                    audit_p=data["p"])

    def _use(self, plan_id: str, expires: float) -> bool:
        """Mark plan ``plan_id`` (good until ``expires``) used; False when it already was, or may
        have been (used, then forgotten before its expiry to keep the set bounded)."""
        with self._used_lock:
            if expires <= self._used_floor or plan_id in self._used:
                return False
            self._used[plan_id] = expires
            now = self.clock()
            while self._used:
                oldest, until = next(iter(self._used.items()))
                if until > now and len(self._used) <= MAX_USED_PLANS:
                    break
                del self._used[oldest]
                if until > now:  # forgotten before its expiry: what expires by then is refused
                    self._used_floor = max(self._used_floor, until)
            return True

    # -- request handling ------------------------------------------------------------------------

    def check_token(self, request: Request) -> None:
        if self.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 self.token):
            raise _Problem(401, "unauthorized", "missing or wrong bearer token")

    def check_origin(self, request: Request) -> None:
        why = foreign_origin(request.headers, request.url.scheme)
        if why is not None:
            raise _Problem(403, "cross_origin", f"{why} is refused: the sidecar serves"
                                                " applications, not web pages")

    async def body(self, request: Request) -> dict[str, Any]:
        if not is_json(request.headers.get("content-type")):
            raise _Problem(415, "unsupported_media_type",
                           "send the body as JSON with 'Content-Type: application/json'")
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
            data = read_json(b"".join(chunks))
        except BadJson as exc:
            raise _Problem(400, "invalid_json", str(exc)) from None
        if not isinstance(data, dict):
            raise _Problem(400, "invalid_json", "body must be a JSON object")
        return data

    def route(self, task: str, texts: list[str] | None, vectors: list[Any] | None
              ) -> list[dict[str, Any]]:
        traced = self.task(task)
        matrix = None
        if vectors is not None:
            router = traced.router
            matrix = _matrix(vectors, router.dim if router is not None else None)
        plans = traced.route_many(texts, matrix)
        inputs: Any = texts if texts is not None else matrix
        digests = [_digest(item) for item in inputs]
        return [self.describe(traced, plan, digest) for plan, digest in zip(plans, digests)]

    def describe(self, traced: TracedTask, plan: Plan, digest: str) -> dict[str, Any]:
        """A route's answer: the label in the LLM's own spelling (what the caller's LLM call
        would have returned), and the signed plan (which keeps the router's)."""
        decision = plan.decision
        label = None if decision is None or decision.label is None else decision.label
        return {
            "label": None if label is None else traced.spellings.spell(label),
            "local": plan.local,
            "score": decision.score if decision is not None else None,
            "reason": "accepted" if plan.local else plan.reason,
            "version": plan.version,
            "audit": plan.audit,
            "plan": self.sign(traced.task, plan, digest),
        }

    def log(self, task: str, rows: list[dict[str, Any]]) -> list[str | None]:
        traced = self.task(task)
        return [traced.record(self.verify(task, row["plan"], row["digest"]), row["teacher"],
                              text=row["input"], usage=row["usage"], meta=row["meta"])
                for row in rows]


def create_app(store: Store | str, *, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, embedder: Embedder | str | None = None,
               max_batch: int = MAX_BATCH) -> Starlette:
    """The sidecar's ASGI application over ``store`` (a store, a directory or a ``redis://`` URL).

    ``token`` requires ``Authorization: Bearer <token>`` on every endpoint except ``/healthz``
    and ``/openapi.json``. ``embedder`` (an Embedder or a name) embeds texts; by default the
    task options' (``$TRACER_WRAP_EMBEDDER``, ``tracer_wrap.toml``, all-MiniLM-L6-v2). A version
    fitted with another embedder is not served (every call goes to the LLM).
    """
    side = _Sidecar(open_store(store), token=token, max_body_bytes=max_body_bytes,
                    embedder=embedder, max_batch=max_batch)

    def endpoint(handler: Callable[[Request, dict[str, Any] | None], Any], *, auth: bool = True,
                 has_body: bool = True, status: int = 200
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def run_endpoint(request: Request) -> Response:
            try:
                side.check_origin(request)
                if auth:
                    side.check_token(request)
                body = await side.body(request) if has_body else None
                result = await run_in_threadpool(handler, request, body)
                return JSONResponse(result, status_code=status)
            except _Problem as p:
                return _error(p.status, p.code, p.message,
                              {"WWW-Authenticate": "Bearer"} if p.status == 401 else None)
            except TracerWrapError as exc:  # e.g. the store's disk refuses: the caller retries
                logger.warning("tracer_wrap sidecar: %s", exc)
                return _error(503, "unavailable", str(exc))
        return run_endpoint

    def task_of(request: Request) -> str:
        task = request.path_params["task"]
        if not task.strip() or len(task) > MAX_TASK_CHARS:
            raise _Problem(404, "unknown_task", f"task names are 1 to {MAX_TASK_CHARS} characters")
        return str(task)

    def route_one(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        _only(body, {"text", "embedding"})
        if ("text" in body) == ("embedding" in body):
            raise _Problem(422, "invalid_body", "give exactly one of 'text' or 'embedding'")
        task = task_of(request)
        if "text" in body:
            [decision] = side.route(task, [_text(body["text"], "text")], None)
        else:
            [decision] = side.route(task, None, [body["embedding"]])
        return decision

    def route_batch(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        _only(body, {"texts", "embeddings"})
        if ("texts" in body) == ("embeddings" in body):
            raise _Problem(422, "invalid_body", "give exactly one of 'texts' or 'embeddings'")
        key = "texts" if "texts" in body else "embeddings"
        items = _list(body[key], key, side.max_batch)
        task = task_of(request)
        if key == "texts":
            decisions = side.route(task, [_text(t, f"texts[{i}]") for i, t in enumerate(items)],
                                   None)
        else:
            decisions = side.route(task, None, items)
        versions = {d["version"] for d in decisions}
        return {"version": versions.pop() if len(versions) == 1 else None,
                "decisions": decisions}

    def log_one(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        [label] = side.log(task_of(request), [_trace_row(body, "body")])
        return {"logged": 1, "label": label}

    def log_batch(request: Request, body: dict[str, Any] | None) -> dict[str, Any]:
        assert body is not None
        _only(body, {"traces"})
        if "traces" not in body:
            raise _Problem(422, "invalid_body", "missing field 'traces'")
        items = _list(body["traces"], "traces", side.max_batch)
        rows = [_trace_row(item, f"traces[{i}]") for i, item in enumerate(items)]
        labels = side.log(task_of(request), rows)
        return {"logged": len(rows), "labels": labels}

    def status_of(request: Request, body: Any) -> dict[str, Any]:
        task = task_of(request)
        if task not in side.store.tasks():
            raise _Problem(404, "unknown_task", f"no task {task!r} in this store")
        side.task(task).flush()
        return task_status(side.store, task)

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
        Route("/v1/tasks/{task}/status", endpoint(status_of, has_body=False), methods=["GET"]),
        Route("/healthz", endpoint(healthz, auth=False, has_body=False), methods=["GET"]),
        Route("/openapi.json", endpoint(openapi, auth=False, has_body=False), methods=["GET"]),
        metrics_route(side.store, side.check_token),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        side.close()  # flushes every task's counters

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found, Exception: not_found})
    app.state.sidecar = side
    return app


def run(store: Store | str, *, host: str = "127.0.0.1", port: int = 8000,
        token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
        embedder: Embedder | str | None = None, ready: Callable[[], None] | None = None) -> None:
    """Serve :func:`create_app` with uvicorn until interrupted; ``ready()`` is called once the
    checks have passed and the application is made, just before serving. Raises ConfigError when
    ``host`` is beyond loopback and no ``token`` is given, MissingExtraError when uvicorn is not
    installed."""
    require_token_beyond_loopback(host, token, server="sidecar",
                                  how="as 'Authorization: Bearer TOKEN'")
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("uvicorn", "server") from exc
    app = create_app(store, token=token, max_body_bytes=max_body_bytes, embedder=embedder)
    if ready is not None:
        ready()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


# -- validation ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


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


def _matrix(rows: list[Any], dim: int | None) -> np.ndarray:
    """The embeddings as a float32 matrix with unit rows; 422 unless every row is a list of
    ``dim`` numbers finite as float32 (of one common length when no router fixes ``dim``)."""
    width = dim if dim is not None else (len(rows[0]) if isinstance(rows[0], list) else -1)
    size = f"{width}" if width > 0 else "the same number of"
    for i, row in enumerate(rows):
        if (not isinstance(row, list) or not row or len(row) != width
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in row)):
            raise _Problem(422, "invalid_embedding",
                           f"embedding {i} must be a list of {size} finite numbers")
    # Checked once cast: a number finite as a Python float may overflow float32 (1e39 -> inf).
    with np.errstate(over="ignore"):
        matrix = np.asarray(rows, dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise _Problem(422, "invalid_embedding", f"embedding {i} must be a list of {size} finite"
                                                 " numbers within float32's range (3.4e38)")
    # Scaled in float64: the squares of large float32 numbers would overflow the norm.
    return unit_rows(matrix.astype(np.float64)).astype(np.float32)


def _digest(value: str | np.ndarray) -> str:
    """What a plan is bound to: a digest of the text, or of the unit float32 embedding, routed."""
    data = b"t" + value.encode() if isinstance(value, str) \
        else b"e" + np.ascontiguousarray(value, dtype="<f4").tobytes()
    return _b64(hashlib.sha256(data).digest()[:16])


def _trace_row(item: Any, where: str) -> dict[str, Any]:
    """A validated trace: its fields, and the digest of the input its plan must be for (the
    ``embedding`` when given, else the ``input`` text)."""
    if not isinstance(item, dict):
        raise _Problem(422, "invalid_body", f"'{where}' must be an object")
    _only(item, {"input", "teacher", "plan", "usage", "meta", "embedding"})
    for key in ("input", "teacher"):
        if key not in item:
            raise _Problem(422, "invalid_body", f"'{where}' is missing '{key}'")
    row = {"input": _text(item["input"], f"{where}.input"),
           "teacher": _text(item["teacher"], f"{where}.teacher"),
           "plan": item.get("plan"), "usage": None, "meta": item.get("meta") or {}}
    if row["plan"] is not None and not isinstance(row["plan"], str):
        raise _Problem(422, "invalid_body", f"'{where}.plan' must be the string route returned")
    usage = item.get("usage")
    if usage is not None:
        if (not isinstance(usage, dict) or set(usage) - {"input_tokens", "output_tokens"}
                or not all(isinstance(v, int) and not isinstance(v, bool)
                           and 0 <= v <= MAX_TOKENS for v in usage.values())):
            raise _Problem(422, "invalid_body", f"'{where}.usage' must be an object of"
                                                " input_tokens, output_tokens from 0 to"
                                                f" {MAX_TOKENS}")
        row["usage"] = Usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0))
    if not isinstance(row["meta"], dict):
        raise _Problem(422, "invalid_body", f"'{where}.meta' must be an object")
    for key in ("input", "teacher"):  # the LLM's answer, as long as an input at most
        if len(item[key]) > MAX_INPUT_CHARS:
            raise _Problem(422, "invalid_body",
                           f"'{where}.{key}' is over {MAX_INPUT_CHARS} characters")
    if "embedding" in item:
        row["digest"] = _digest(_matrix([item["embedding"]], None)[0])
    else:
        row["digest"] = _digest(item["input"])
    return row


# -- the OpenAPI document ------------------------------------------------------------------------


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ERRORS = {str(code): {"description": text, **_json(_schema_ref("Error"))} for code, text in (
    (400, "Malformed JSON"), (401, "Missing or wrong bearer token"),
    (403, "Browser request from another origin"), (404, "Unknown task"),
    (413, "Body over the size limit"), (415, "Content-Type is not application/json"),
    (422, "Invalid fields"))}
_TASK_PARAM = [{"name": "task", "in": "path", "required": True, "schema": {"type": "string"}}]


def _post(summary: str, request: str, response: str, status: str = "200") -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": _TASK_PARAM,
                     "requestBody": {"required": True, **_json(_schema_ref(request))},
                     "responses": {status: {"description": "OK", **_json(_schema_ref(response))},
                                   **_ERRORS}}}


_NUM_LIST = {"type": "array", "items": {"type": "number"}}
_DECISION = {
    "type": "object", "required": ["label", "local", "score", "plan"],
    "properties": {"label": {"type": ["string", "null"]}, "local": {"type": "boolean"},
                   "score": {"type": ["number", "null"]}, "reason": {"type": "string"},
                   "version": {"type": ["integer", "null"]}, "audit": {"type": "boolean"},
                   "plan": {"type": "string", "description": "Echo it when logging the trace."}},
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tracer_wrap sidecar", "version": "2",
             "description": "Route classification inputs to a certified local surrogate and log "
                            "the LLM's labels. If 'local' is false, call the LLM and log its "
                            "label with /traces, echoing the route's 'plan'."},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/tasks/{task}/route": _post("Route one input", "RouteRequest", "Decision"),
        "/v1/tasks/{task}/route/batch": _post("Route many inputs", "RouteBatchRequest",
                                              "RouteBatchResponse"),
        "/v1/tasks/{task}/traces": _post("Log one LLM label", "Trace", "Logged", "201"),
        "/v1/tasks/{task}/traces/batch": _post("Log many LLM labels", "TraceBatch", "Logged",
                                               "201"),
        "/v1/tasks/{task}/status": {"get": {
            "summary": "Traces, served version, calls answered locally, money saved",
            "parameters": _TASK_PARAM,
            "responses": {"200": {"description": "OK", **_json({"type": "object"})}, **_ERRORS}}},
        "/metrics": {"get": {
            "summary": "Every task's counters as Prometheus text",
            "responses": {"200": {"description": "OK",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_ERRORS}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "OK"}}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "RouteRequest": {"type": "object", "properties": {
                "text": {"type": "string", "minLength": 1}, "embedding": _NUM_LIST},
                "oneOf": [{"required": ["text"]}, {"required": ["embedding"]}]},
            "Decision": _DECISION,
            "RouteBatchRequest": {"type": "object", "properties": {
                "texts": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_BATCH},
                "embeddings": {"type": "array", "items": _NUM_LIST, "maxItems": MAX_BATCH}},
                "oneOf": [{"required": ["texts"]}, {"required": ["embeddings"]}]},
            "RouteBatchResponse": {"type": "object", "properties": {
                "version": {"type": ["integer", "null"]},
                "decisions": {"type": "array", "items": _DECISION}}},
            "Trace": {"type": "object", "required": ["input", "teacher"], "properties": {
                "input": {"type": "string", "maxLength": MAX_INPUT_CHARS},
                "teacher": {"type": "string", "maxLength": MAX_INPUT_CHARS},
                "plan": {"type": "string"},
                "embedding": {**_NUM_LIST, "description": "The embedding the plan was routed by,"
                                                          " if it was."},
                "usage": {"type": "object", "properties": {
                    "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}}},
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
