"""The task counters as Prometheus text, for the sidecar's ``GET /metrics``.

One sample per task of the store for each counter of
:func:`tracer_wrap.accounting.read_summary` (the same figures ``tracer-wrap status``, the report
and ``/v1/tasks/{task}/status`` show, summed over every process sharing the store), in the text
exposition format 0.0.4: a ``# HELP`` and ``# TYPE`` line per metric, counters named
``tracer_wrap_<counter>_total``, the task as the ``task`` label. Two gauges follow: the share of
calls answered locally and, for tasks with a price, the money saved.

Example::

    # HELP tracer_wrap_local_total Calls answered locally (the LLM was not called).
    # TYPE tracer_wrap_local_total counter
    tracer_wrap_local_total{task="intent"} 812
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import accounting
from ..errors import TracerWrapError
from ._http import foreign_origin

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from ..store import Store

__all__ = ["CONTENT_TYPE", "COUNTERS", "metrics_route", "render"]

#: The media type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: ``(summary field, help text)`` of every counter, exposed as ``tracer_wrap_<field>_total``.
COUNTERS: tuple[tuple[str, str], ...] = (
    ("calls", "Calls that reached tracer_wrap."),
    ("local", "Calls answered locally (the LLM was not called)."),
    ("llm", "LLM answers logged."),
    ("audits", "LLM answers that were random audit samples."),
    ("invalid", "LLM answers that matched no label."),
    ("input_tokens", "Input tokens the provider reported for LLM answers."),
    ("output_tokens", "Output tokens the provider reported for LLM answers."),
    ("usage_calls", "LLM answers that reported token usage."),
    ("dropped", "LLM answers whose trace was dropped: a process's trace buffer was full."),
    ("poisoned", "LLM answers whose trace the store refused for good (set aside)."),
)
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("local_share", "local_share", "Local answers over local answers plus LLM answers."),
    ("saved", "saved", "Money saved by local answers, at the task's price."),
)


def render(store: Store, tasks: Iterable[str] | None = None) -> str:
    """The counters of ``tasks`` (default: every task of ``store``) as Prometheus text, tasks in
    name order. Raises StoreError when the store cannot be read."""
    rows = [accounting.read_summary(store, task) for task in sorted(tasks or store.tasks())]
    lines: list[str] = []
    for field, help_text in COUNTERS:
        _metric(lines, f"tracer_wrap_{field}_total", "counter", help_text, rows, field)
    for name, field, help_text in _GAUGES:
        _metric(lines, f"tracer_wrap_{name}", "gauge", help_text, rows, field)
    return "\n".join(lines) + "\n"


def _metric(lines: list[str], name: str, kind: str, help_text: str,
            rows: list[dict[str, Any]], field: str) -> None:
    samples = [(row["task"], row[field]) for row in rows if row.get(field) is not None]
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f'{name}{{task="{_label(task)}"}} {_number(value)}' for task, value in samples]


def _label(value: str) -> str:
    """A label value escaped as the format asks: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, int) or float(value).is_integer() \
        else repr(float(value))


def metrics_route(store: Store, check_token: Callable[[Request], None]) -> Route:
    """The sidecar's ``GET /metrics`` route: :func:`render` of ``store`` after this process's
    pending counters are written (200, :data:`CONTENT_TYPE`). A browser request from another
    origin is refused with 403 (the origin rule of :mod:`tracer_wrap.ops._http`), and
    ``check_token`` raises when the request lacks the sidecar's bearer token: then 401, as on
    every other endpoint. Needs the ``server`` extra (starlette)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def current() -> str:
        accounting.flush_all()
        return render(store)

    async def metrics(request: Request) -> Response:
        why = foreign_origin(request.headers, request.url.scheme)
        if why is not None:
            return PlainTextResponse(f"{why} is refused: the sidecar serves applications, not web"
                                     " pages\n", status_code=403)
        try:
            check_token(request)
        except Exception:
            return PlainTextResponse("missing or wrong bearer token\n", status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        try:
            text = await run_in_threadpool(current)
        except TracerWrapError as exc:  # e.g. the store's disk refuses: the scraper retries
            return PlainTextResponse(f"{exc}\n", status_code=503)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    return Route("/metrics", metrics, methods=["GET"])
