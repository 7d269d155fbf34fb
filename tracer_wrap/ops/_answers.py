"""Read the label and token usage of a provider's answer given as decoded JSON.

Shared by the gateway (answers it relays) and the importers (answers logged by other tools). Each
answer is built the way its SDK builds every response it receives (``construct``: lenient, so a
field or enum value from a newer API still reads) and read by the SDK-object readers of
:mod:`tracer_wrap.integrations`, so a label is read the same way on every path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..accounting import Usage
from ..integrations import usage_of

__all__ = ["Answer", "chat_answer", "message_answer", "messages_answer", "responses_answer"]

#: ``(raw label, usage)``: the raw label as the engine records it (None: no label in it).
Answer = tuple[object, "Usage | None"]


def _usage(obj: Any) -> Usage | None:
    found = usage_of(obj)
    return Usage(found.get("input_tokens", 0), found.get("output_tokens", 0)) if found else None


def chat_answer(data: Mapping[str, Any]) -> Answer:
    """A chat completion (``{"choices": [...], "usage": ...}``)."""
    from openai.types.chat import ChatCompletion

    from ..integrations._openai_objects import label_from_chat_completion

    completion = ChatCompletion.construct(**data)
    return label_from_chat_completion(completion), _usage(completion)


def message_answer(message: Mapping[str, Any]) -> Answer:
    """One OpenAI-style assistant message (``{"role", "content", "tool_calls"}``); content parts
    are joined."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content
                          if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return chat_answer({"choices": [{"index": 0, "message": {**message, "content": content}}]})


def responses_answer(data: Mapping[str, Any]) -> Answer:
    """A Responses API ``response`` object."""
    from openai.types.responses import Response

    from ..integrations._openai_objects import label_from_response

    response = Response.construct(**data)
    return label_from_response(response), _usage(response)


def messages_answer(data: Mapping[str, Any]) -> Answer:
    """An Anthropic ``message`` object (needs the anthropic SDK)."""
    from anthropic.types import Message

    from ..integrations._anthropic_objects import label_from_message

    message = Message.construct(**data)
    return label_from_message(message), _usage(message)
