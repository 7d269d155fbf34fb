"""Telemetry of traced calls: one span per call, following the OpenTelemetry GenAI conventions.

The engine (:mod:`tracer_wrap.engine`) opens a :class:`CallSpan` for every call it runs and
reports what happened to it: the plan (answered locally or not, why, the version served), the
local answer or the LLM's answer (label, token usage), or the LLM's error; then it ends the span.
A path adds what it knows about the call through :attr:`tracer_wrap.engine.Reply.attributes`
(``gen_ai.system``, ``gen_ai.request.model``, ...).

Without ``opentelemetry-api`` installed every span is a no-op that costs one function call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .accounting import Usage
    from .engine import Plan
    from .options import TaskOptions

__all__ = ["CallSpan", "start_call"]


class CallSpan:
    """What the engine reports about one call. This base class records nothing (the no-op)."""

    def planned(self, plan: Plan) -> None:
        """The engine decided how to answer the call."""

    def answered_locally(self, label: str) -> None:
        """The call was answered locally with ``label``."""

    def answered_by_llm(self, label: str | None, usage: Usage | None) -> None:
        """The LLM answered (``label`` None: the answer matched no label)."""

    def failed(self, error: BaseException) -> None:
        """The LLM call raised ``error`` (it propagates to the caller unchanged)."""

    def end(self) -> None:
        """No more is known about the call. Called once; later reports are ignored."""


_NO_OP = CallSpan()


def start_call(task: str, options: TaskOptions, attributes: Mapping[str, Any]) -> CallSpan:
    """The span of one call of ``task``. Never raises."""
    return _NO_OP
