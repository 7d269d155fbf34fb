"""The SDK integrations: wrapped OpenAI and Anthropic clients, and zero-code mode.

Each provider module only says how to read a label from an SDK result and how to build a genuine
SDK object from a local label; the path of the call is the engine's (:mod:`tracer_wrap.engine`),
reached through the SDK driver (:mod:`._sdk`), with streams read by the stream tap
(:mod:`._stream`)::

    _prompt      request views, template learning, output shapes, the options a local answer
                 cannot honour, usage (SDK-free)
    _sdk         the driver: one TracedTask per prompt template, a Reply per call
    _stream      the stream tap (label and usage of a stream the caller consumes; stream
                 managers and raw streamed responses)
    _openai / _openai_objects        wrap_openai, and OpenAI objects read and built
    _anthropic / _anthropic_objects  wrap_anthropic, and Anthropic objects read and built
    zero_code    autolog() and the ``tracer-wrap run`` launcher

The SDK-free parts import eagerly; the OpenAI and Anthropic modules import their SDK on first
access, so a missing SDK only fails for its own provider (naming its pip extra).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MissingExtraError
from ..labels import LABEL_FIELD_NAMES, label_from_json
from ._prompt import (
    LOCAL_ANSWER_BLOCKERS,
    Blocker,
    OutputShape,
    PromptView,
    TemplateLearner,
    anthropic_messages_view,
    anthropic_output_shape,
    label_field_of_schema,
    local_answer_blocker,
    openai_chat_output_shape,
    openai_chat_view,
    openai_responses_output_shape,
    openai_responses_view,
    usage_of,
)
from ._sdk import TASK_OPTION, Tasks

_LAZY: dict[str, tuple[str, str]] = {
    # openai takes about a second to import: only users of the OpenAI wrapper pay for it.
    **{name: ("._openai", "openai") for name in ("TracedAsyncOpenAI", "TracedOpenAI",
                                                 "wrap_openai")},
    **{name: ("._openai_objects", "openai") for name in (
        "LOCAL_FINGERPRINT", "AsyncLocalStream", "LocalStream",
        "build_async_chat_completion_stream",
        "build_async_chat_stream_manager", "build_async_response_stream",
        "build_async_response_stream_manager", "build_chat_completion",
        "build_chat_completion_stream", "build_chat_stream_manager",
        "build_parsed_chat_completion", "build_parsed_response", "build_response",
        "build_response_stream", "build_response_stream_manager", "is_local",
        "label_from_chat_completion", "label_from_response")},
    **{name: ("._anthropic_objects", "anthropic") for name in (
        "LOCAL_ID_PREFIX", "AsyncLocalMessageStream", "LocalMessageStream",
        "build_async_message_stream", "build_async_message_stream_manager", "build_message",
        "build_message_stream", "build_message_stream_manager", "build_parsed_message",
        "is_local_message", "label_from_message")},
}

__all__ = [
    "TASK_OPTION",
    "LABEL_FIELD_NAMES",
    "LOCAL_ANSWER_BLOCKERS",
    "Blocker",
    "OutputShape",
    "PromptView",
    "TemplateLearner",
    "anthropic_messages_view",
    "anthropic_output_shape",
    "label_field_of_schema",
    "label_from_json",
    "local_answer_blocker",
    "openai_chat_output_shape",
    "openai_chat_view",
    "openai_responses_output_shape",
    "openai_responses_view",
    "usage_of",
    "Tasks",
    "TracedAsyncOpenAI",
    "TracedOpenAI",
    "wrap_anthropic",
    "wrap_openai",
    *sorted(_LAZY),
]


def wrap_anthropic(client: Any, **options: Any) -> Any:
    """Wrap an ``Anthropic`` / ``AsyncAnthropic`` client; see :func:`._anthropic.wrap_anthropic`.

    Imports anthropic on first use; raises MissingExtraError naming the ``anthropic`` extra when
    it is not installed.
    """
    try:
        from ._anthropic import wrap_anthropic as wrap
    except ModuleNotFoundError as error:
        if error.name != "anthropic":
            raise
        raise MissingExtraError("anthropic", "anthropic") from error
    return wrap(client, **options)


def __getattr__(name: str) -> Any:
    """Import a provider's builders on first use; a missing SDK raises ImportError naming it."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, package = _LAZY[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as error:
        if error.name != package:
            raise
        raise ImportError(f"{name} needs the {package!r} package: pip install {package}") from error
    return getattr(module, name)
