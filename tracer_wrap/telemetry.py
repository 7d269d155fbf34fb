"""Telemetry of traced calls: one span per call, following the OpenTelemetry GenAI conventions.

The engine (:mod:`tracer_wrap.engine`) opens a :class:`CallSpan` for every call it runs and
reports what happened to it: the plan (answered locally or not, why, the version served), the
local answer or the LLM's answer (label, token usage), or the LLM's error; then it ends the span.
A path adds what it knows about the call through :attr:`tracer_wrap.engine.Reply.attributes`
(``gen_ai.provider.name``, ``gen_ai.request.model``, ...) and, once it has the provider's
response, through :meth:`CallSpan.describe` on :func:`current_call` (``gen_ai.response.model``,
``gen_ai.response.finish_reasons``, ...).

With ``opentelemetry-api`` installed (``pip install 'tracer-wrap[otel]'``) each call is a span of
kind CLIENT named ``"{gen_ai.operation.name} {gen_ai.request.model}"`` (``"classify {task}"`` on
paths that are no SDK call), a child of the caller's current span, sent wherever the application's
tracer provider sends spans (OTLP to Langfuse, Datadog, Honeycomb, ...). Its attributes:

* the GenAI conventions' ``gen_ai.operation.name``, ``gen_ai.provider.name`` (and the older
  ``gen_ai.system``), ``gen_ai.request.*`` (:func:`request_attributes`, the same on every
  path), ``gen_ai.response.model`` / ``.id`` / ``.finish_reasons``, OpenAI's
  ``openai.response.system_fingerprint``, ``gen_ai.usage.input_tokens`` / ``.output_tokens``
  (0 for a local answer) and ``error.type``;
* tracer_wrap's own: ``tracer_wrap.task``, ``tracer_wrap.answered_locally``, ``tracer_wrap.label``
  (and ``tracer_wrap.label_valid`` of an LLM answer), ``tracer_wrap.router.version``,
  ``tracer_wrap.router.label`` / ``.score``, ``tracer_wrap.target``,
  ``tracer_wrap.certified_coverage``, ``tracer_wrap.audit``, ``tracer_wrap.shadow``,
  ``tracer_wrap.traced``, ``tracer_wrap.reason`` (why the call went to the LLM) and
  ``tracer_wrap.abandoned`` (a stream closed before its label was read).

Without ``opentelemetry-api`` every span is a no-op that costs one function call. Telemetry never
raises into a call: a fault of its own is logged (once per storm) and the call goes on.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._log import fault

if TYPE_CHECKING:
    from .accounting import Usage
    from .engine import Plan
    from .options import TaskOptions

__all__ = ["CallSpan", "current_call", "request_attributes", "start_call",
           "use_tracer_provider"]

#: The attribute a path sets in ``Reply.attributes`` when a local answer cannot honour the
#: request (its value says why); the span reports it as the reason the call went to the LLM.
BLOCKED = "tracer_wrap.local_answer_blocked"


class CallSpan:
    """What the engine reports about one call. This base class records nothing (the no-op).

    ``recording`` is False when nothing reported is kept, so a path can skip gathering what
    it would report (``describe`` of every response)."""

    recording = False

    def planned(self, plan: Plan) -> None:
        """The engine decided how to answer the call."""

    def answered_locally(self, label: str) -> None:
        """The call was answered locally with ``label``."""

    def answered_by_llm(self, label: str | None, usage: Usage | None) -> None:
        """The LLM answered (``label`` None: the answer matched no label)."""

    def failed(self, error: BaseException) -> None:
        """The LLM call raised ``error`` (it propagates to the caller unchanged)."""

    def describe(self, attributes: Mapping[str, Any]) -> None:
        """Add ``attributes`` (e.g. ``gen_ai.response.*`` of the provider's response); None
        values are left out."""

    def abandoned(self) -> None:
        """The caller stopped reading the answer (a stream) before its label was known."""

    def end(self) -> None:
        """No more is known about the call. Called once; later reports are ignored."""


_NO_OP = CallSpan()
_CURRENT: contextvars.ContextVar[CallSpan] = contextvars.ContextVar("tracer_wrap_call",
                                                                   default=_NO_OP)


def current_call() -> CallSpan:
    """The span of the call this context started last (the no-op when none or no telemetry): a
    path reads it right after the LLM answered, to describe the response or to end the span of a
    stream the caller abandons."""
    return _CURRENT.get()


# -- OpenTelemetry -----------------------------------------------------------------------------

_lock = threading.Lock()
_api: Any = None  # the opentelemetry.trace module; False once it failed to import
_provider: Any = None  # a tracer provider given to use_tracer_provider(), else the global one
_tracer: Any = None


def use_tracer_provider(provider: Any | None) -> None:
    """Send tracer_wrap's spans to ``provider`` (an OpenTelemetry ``TracerProvider``) instead of
    the global one; None goes back to the global provider. Needs ``opentelemetry-api``."""
    global _provider, _tracer
    with _lock:
        _provider, _tracer = provider, None


def _get_tracer() -> Any:
    """The tracer, or None without ``opentelemetry-api``."""
    global _api, _tracer
    tracer = _tracer
    if tracer is not None or _api is False:
        return tracer
    with _lock:
        if _api is None:
            try:
                from opentelemetry import trace
            except ImportError:
                _api = False
                return None
            _api = trace
        if _tracer is None:
            from . import __version__

            # Without a provider of its own, the API's proxy tracer follows the global provider,
            # even one the application sets after the first call.
            source = _provider if _provider is not None else _api
            _tracer = source.get_tracer("tracer_wrap", __version__)
        return _tracer


def start_call(task: str, options: TaskOptions, attributes: Mapping[str, Any]) -> CallSpan:
    """The span of one call of ``task`` (the no-op without ``opentelemetry-api`` or when the
    span is not sampled). Never raises."""
    tracer = _get_tracer()
    if tracer is None:
        return _NO_OP
    try:
        operation = attributes.get("gen_ai.operation.name") or "classify"
        name = f"{operation} {attributes.get('gen_ai.request.model') or task}"
        initial = {**attributes, "tracer_wrap.task": task, "tracer_wrap.target": options.target,
                   "tracer_wrap.answered_locally": False}
        span = tracer.start_span(name, kind=_api.SpanKind.CLIENT,
                                 attributes=_otel_attributes(initial))
        call: CallSpan = _Span(span, attributes) if span.is_recording() else _NO_OP
    except Exception as exc:
        fault("telemetry", exc)
        call = _NO_OP
    _CURRENT.set(call)
    return call


class _Span(CallSpan):
    """A call reported to an OpenTelemetry span."""

    recording = True

    def __init__(self, span: Any, attributes: Mapping[str, Any]) -> None:
        self._span = span
        self._blocked = attributes.get(BLOCKED)
        self._planned_local = False
        self._ended = False
        self._lock = threading.Lock()

    def _set(self, attributes: Mapping[str, Any]) -> None:
        try:
            if not self._ended:
                self._span.set_attributes(_otel_attributes(attributes))
        except Exception as exc:
            fault("telemetry", exc)

    def planned(self, plan: Plan) -> None:
        decision = plan.decision
        self._planned_local = plan.local
        self._set({
            "tracer_wrap.traced": plan.traced,
            "tracer_wrap.router.version": plan.version,
            "tracer_wrap.router.label": decision.label if decision is not None else None,
            "tracer_wrap.router.score": decision.score if decision is not None else None,
            "tracer_wrap.certified_coverage": plan.coverage,
            "tracer_wrap.audit": plan.audit,
            "tracer_wrap.shadow": plan.shadow,
            "tracer_wrap.reason": None if plan.local else plan.reason,
        })

    def answered_locally(self, label: str) -> None:
        self._set({"tracer_wrap.answered_locally": True, "tracer_wrap.label": label,
                   "gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0})

    def answered_by_llm(self, label: str | None, usage: Usage | None) -> None:
        attributes: dict[str, Any] = {"tracer_wrap.answered_locally": False,
                                      "tracer_wrap.label": label,
                                      "tracer_wrap.label_valid": label is not None}
        if usage is not None:
            attributes.update({"gen_ai.usage.input_tokens": usage.input_tokens,
                               "gen_ai.usage.output_tokens": usage.output_tokens})
        if self._planned_local:  # the router would have answered; the request did not let it
            attributes["tracer_wrap.reason"] = (self._blocked
                                                or "the local answer could not be built")
        self._set(attributes)

    def failed(self, error: BaseException) -> None:
        try:
            if self._ended:
                return
            kind = type(error)
            self._span.record_exception(error)
            self._span.set_status(_api.Status(_api.StatusCode.ERROR, f"{kind.__name__}"))
            self._set({"error.type": f"{kind.__module__}.{kind.__qualname__}"})
        except Exception as exc:
            fault("telemetry", exc)

    def describe(self, attributes: Mapping[str, Any]) -> None:
        self._set(attributes)

    def abandoned(self) -> None:
        self._set({"tracer_wrap.abandoned": True})

    def end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            self._span.end()
        except Exception as exc:
            fault("telemetry", exc)


def request_attributes(provider: str, api: str, request: Mapping[str, Any], *,
                       stream: bool, operation: str = "chat") -> dict[str, Any]:
    """The GenAI attributes of one request (``gen_ai.operation.name``, ``gen_ai.provider.name``
    and the older ``gen_ai.system``, ``gen_ai.request.*``) and ``tracer_wrap.api``, from the
    request's arguments or wire body ``request`` of ``api`` at ``provider``; the same for every
    path (SDK clients, gateway). Values of the wrong type are left out."""
    max_tokens = next((request[k] for k in ("max_completion_tokens", "max_tokens",
                                            "max_output_tokens")
                       if isinstance(request.get(k), int)
                       and not isinstance(request.get(k), bool)), None)
    stop = request.get("stop", request.get("stop_sequences"))
    model = request.get("model")
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model if isinstance(model, str) else None,
        "gen_ai.request.max_tokens": max_tokens,
        "gen_ai.request.temperature": _number(request.get("temperature")),
        "gen_ai.request.top_p": _number(request.get("top_p")),
        "gen_ai.request.stop_sequences": [stop] if isinstance(stop, str)
        else list(stop) if isinstance(stop, (list, tuple)) else None,
        "gen_ai.request.stream": stream,
        "tracer_wrap.api": api,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _otel_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``attributes`` as OpenTelemetry takes them: None left out, sequences as lists of scalars,
    anything else but str/bool/int/float as its string."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = [v if isinstance(v, (str, bool, int, float)) else str(v) for v in value
                        if v is not None]
        else:
            out[key] = str(value)
    return out
