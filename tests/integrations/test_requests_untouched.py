"""A call never changes because tracer_wrap is there: the provider receives exactly what the caller
passed (the same request through a plain client gives the same body), and a request whose options a
local answer cannot honour goes to the LLM, one test per option of ``LOCAL_ANSWER_BLOCKERS``.

Every test goes through the real SDKs over real HTTP to the local LLM server.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from _support import TASK_OPTIONS, LLMServer, easy_texts, fitted, teacher
from anthropic.lib.streaming import MessageStreamManager
from openai.lib.streaming.chat import ChatCompletionStreamManager
from openai.lib.streaming.responses import ResponseStreamManager

from tracer_wrap import flush
from tracer_wrap.integrations import (
    LOCAL_ANSWER_BLOCKERS,
    is_local,
    is_local_message,
    wrap_anthropic,
    wrap_openai,
)
from tracer_wrap.integrations.zero_code import autolog
from tracer_wrap.store import TraceStore

SYSTEM = "Classify the banking request. Answer with the label only."
LABELS = ["card_lost", "exchange_rate", "refund", "top_up"]



@pytest.fixture
def plain(server: LLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as client:
        yield client


@pytest.fixture
def plain_claude(server: LLMServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                             max_retries=0) as client:
        yield client


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": text}], **extra}


def responses(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "instructions": SYSTEM, "input": text, **extra}


def messages(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 16, "system": SYSTEM,
            "messages": [{"role": "user", "content": text}], **extra}


def last_body(server: LLMServer, call: Callable[[], Any]) -> dict[str, Any]:
    """The JSON body the provider received for ``call()``."""
    before = server.total_calls
    call()
    assert server.total_calls == before + 1, "the call must reach the provider"
    return server.requests[-1][1]


def generated(request: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``request`` with its ``keys`` turned into one-shot generators (fresh ones each call)."""
    return {k: (item for item in v) if k in keys else v for k, v in request.items()}


# -- one-shot iterables ----------------------------------------------------------------------------

TOOL = {"type": "function", "function": {
    "name": "classify", "parameters": {"type": "object", "required": ["label"],
                                       "properties": {"label": {"type": "string"}}}}}
FORCED = {"type": "function", "function": {"name": "classify"}}


def test_messages_and_tools_as_generators_reach_the_provider_whole(plain, server, store,
                                                                     embedder):
    client = wrap_openai(plain, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)
    request = chat("refund please #g1", tools=[TOOL], tool_choice=FORCED)
    expected = last_body(server, lambda: plain.chat.completions.create(
        **generated(request, "messages", "tools")))
    assert expected["messages"][-1]["content"] == "refund please #g1"  # the plain SDK's view
    got = last_body(server, lambda: client.chat.completions.create(
        **generated(request, "messages", "tools")))
    assert got == expected
    # The SDK's Responses API sends no generator: it fails alike, tracer_wrap or not.
    item = {"role": "user", "content": [{"type": "input_text", "text": "top up #g2"}]}
    with pytest.raises(TypeError) as plain_error:
        plain.responses.create(**generated(responses([item]), "input"))
    with pytest.raises(TypeError) as wrapped_error:
        client.responses.create(**generated(responses([item]), "input"))
    assert str(wrapped_error.value) == str(plain_error.value)
    expected = last_body(server, lambda: plain.responses.create(
        **generated(responses([item], tools=[{**TOOL["function"], "type": "function"}],
                              tool_choice={"type": "function", "name": "classify"}),
                    "tools")))
    assert last_body(server, lambda: client.responses.create(
        **generated(responses([item], tools=[{**TOOL["function"], "type": "function"}],
                              tool_choice={"type": "function", "name": "classify"}),
                    "tools"))) == expected
    flush()
    assert [t.teacher for t in store.traces("intent")] == ["refund", "top_up"]


def test_async_openai_and_both_anthropic_clients_forward_generated_messages(
        server, plain_claude, store, embedder):
    claude = wrap_anthropic(plain_claude, task="claude", store=store, embedder=embedder,
                            **TASK_OPTIONS)
    request = messages("fx fee #g3")
    expected = last_body(server, lambda: plain_claude.messages.create(
        **generated(request, "messages")))
    assert last_body(server, lambda: claude.messages.create(
        **generated(request, "messages"))) == expected

    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as raw, \
                anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                         max_retries=0) as raw_claude:
            client = wrap_openai(raw, task="intent", store=store, embedder=embedder,
                                 **TASK_OPTIONS)
            aclaude = wrap_anthropic(raw_claude, task="claude", store=store, embedder=embedder,
                                     **TASK_OPTIONS)
            await raw.chat.completions.create(**generated(chat("lost card #g4"), "messages"))
            plain_body = server.requests[-1][1]
            await client.chat.completions.create(**generated(chat("lost card #g4"), "messages"))
            assert server.requests[-1][1] == plain_body
            await raw_claude.messages.create(**generated(messages("refund #g5"), "messages"))
            plain_body = server.requests[-1][1]
            await aclaude.messages.create(**generated(messages("refund #g5"), "messages"))
            assert server.requests[-1][1] == plain_body

    asyncio.run(main())
    flush()
    assert [t.teacher for t in store.traces("claude")] == ["exchange_rate", "refund"]
    flush()
    assert [t.teacher for t in store.traces("intent")] == ["card_lost"]


def test_zero_code_forwards_generated_messages(server, plain, plain_claude, store, embedder):
    bodies = [last_body(server, lambda: plain.chat.completions.create(
        **generated(chat("refund #z1"), "messages"))),
        last_body(server, lambda: plain_claude.messages.create(
            **generated(messages("top up #z2"), "messages")))]
    tasks = autolog(store=store, embedder=embedder, **TASK_OPTIONS)
    try:
        for _ in range(2):  # a template is traced from its second call on
            assert last_body(server, lambda: plain.chat.completions.create(
                **generated(chat("refund #z1"), "messages"))) == bodies[0]
            assert last_body(server, lambda: plain_claude.messages.create(
                **generated(messages("top up #z2"), "messages"))) == bodies[1]
    finally:
        autolog.disable()
    flush()
    assert sorted(t.teacher for name in tasks.tasks() for t in store.traces(name)) == \
        ["refund", "top_up"]


def test_the_callers_objects_are_neither_mutated_nor_reordered(plain, server, store, embedder):
    client = wrap_openai(plain, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)
    request = chat("refund #m1", tools=[TOOL], tool_choice=FORCED, metadata={"b": "2", "a": "1"},
                   extra_headers={"X-Mine": "1"})
    fitted(store, client.tracer_wrap_tasks, "intent")
    for text in ("refund #m1", easy_texts(1)[0]):
        request["messages"][-1]["content"] = text
        snapshot = repr(request)
        client.chat.completions.create(**request)
        assert repr(request) == snapshot


class Intent(pydantic.BaseModel):
    label: str


MANAGERS = (ChatCompletionStreamManager, ResponseStreamManager, MessageStreamManager)


def _drain(result: Any) -> None:
    """Read what a call returned to the end (a stream, a stream manager, or a plain object)."""
    if isinstance(result, MANAGERS):
        with result as stream:
            for _ in stream:
                pass
    elif isinstance(result, (openai.Stream, anthropic.Stream)):
        for _ in result:
            pass


CALLS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "chat.create": ("openai", "chat.completions.create", chat("refund #b1")),
    "chat.create stream": ("openai", "chat.completions.create",
                           chat("refund #b2", stream=True, stream_options={"include_usage": True})),
    "chat.parse": ("openai", "chat.completions.parse", chat("refund #b3", response_format=Intent)),
    "chat.stream": ("openai", "chat.completions.stream", chat("refund #b4")),
    "responses.create": ("openai", "responses.create", responses("top up #b5")),
    "responses.create stream": ("openai", "responses.create",
                                responses("top up #b6", stream=True)),
    "responses.parse": ("openai", "responses.parse", responses("top up #b7", text_format=Intent)),
    "responses.stream": ("openai", "responses.stream", responses("top up #b8")),
    "messages.create": ("anthropic", "messages.create", messages("fx fee #b9")),
    "messages.create stream": ("anthropic", "messages.create", messages("fx fee #b10",
                                                                        stream=True)),
    "messages.parse": ("anthropic", "messages.parse", messages("fx fee #b11",
                                                               output_format=Intent)),
    "messages.stream": ("anthropic", "messages.stream", messages("fx fee #b12")),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_traced_method_sends_what_a_plain_client_sends(name, plain, plain_claude, server,
                                                             store, embedder):
    sdk, path, request = CALLS[name]
    unwrapped = plain if sdk == "openai" else plain_claude
    wrapper = wrap_openai if sdk == "openai" else wrap_anthropic
    wrapped = wrapper(unwrapped, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)

    def method(client: Any) -> Callable[..., Any]:
        for part in path.split("."):
            client = getattr(client, part)
        return client  # type: ignore[no-any-return]

    expected = last_body(server, lambda: _drain(method(unwrapped)(**request)))
    assert last_body(server, lambda: _drain(method(wrapped)(**request))) == expected
    flush()
    assert store.count("intent") == 1  # and the LLM's answer became a trace


# -- options a local answer cannot honour ----------------------------------------------------------

# One request per (option, API) of LOCAL_ANSWER_BLOCKERS that sets the option; the stop sequence
# cuts labels with an underscore (card_lost, exchange_rate, top_up).
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("logprobs", "openai.chat"): {"logprobs": True},
    ("top_logprobs", "openai.chat"): {"top_logprobs": 2},
    ("top_logprobs", "openai.responses"): {"top_logprobs": 2},
    ("n", "openai.chat"): {"n": 2},
    ("stop", "openai.chat"): {"stop": ["_"]},
    ("stop_sequences", "anthropic.messages"): {"stop_sequences": ["_"]},
    ("max_tokens", "openai.chat"): {"max_tokens": 4},
    ("max_tokens", "anthropic.messages"): {"max_tokens": 4},
    ("max_completion_tokens", "openai.chat"): {"max_completion_tokens": 4},
    ("max_output_tokens", "openai.responses"): {"max_output_tokens": 4},
    ("modalities", "openai.chat"): {"modalities": ["text", "audio"]},
    ("audio", "openai.chat"): {"audio": {"voice": "alloy", "format": "wav"}},
    ("web_search_options", "openai.chat"): {"web_search_options": {}},
    ("store", "openai.chat"): {"store": True},
    ("store", "openai.responses"): {"store": True},
    ("background", "openai.responses"): {"background": True},
    ("include", "openai.responses"): {"include": ["message.output_text.logprobs"]},
    ("reasoning", "openai.responses"): {"reasoning": {"summary": "auto"}},
    ("thinking", "anthropic.messages"): {"thinking": {"type": "enabled",
                                                      "budget_tokens": 1024}},
}


def test_every_blocker_has_an_example() -> None:
    assert set(EXAMPLES) == {(b.option, api) for b in LOCAL_ANSWER_BLOCKERS for api in b.apis}


@pytest.fixture
def routed(plain, plain_claude, store: TraceStore, embedder) -> dict[str, Any]:
    """A wrapped OpenAI and Anthropic client sharing one task with a fitted router, and a text
    the router answers locally."""
    client = wrap_openai(plain, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)
    claude = wrap_anthropic(plain_claude, task="intent", store=store, embedder=embedder,
                            **TASK_OPTIONS)
    fitted(store, client.tracer_wrap_tasks, "intent")
    claude.tracer_wrap_tasks.task("intent").serving.refresh()  # serve the new version now
    task = client.tracer_wrap_tasks.task("intent")
    text = next(t for t in easy_texts(20) if task.route(t).local)
    return {"openai": client, "anthropic": claude, "text": text}


def _call(api: str, routed: dict[str, Any], plain: Any, plain_claude: Any,
          extra: dict[str, Any]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    text, client, claude = routed["text"], routed["openai"], routed["anthropic"]
    if api == "openai.chat":
        return (lambda: client.chat.completions.create(**chat(text, **extra)),
                lambda: plain.chat.completions.create(**chat(text, **extra)))
    if api == "openai.responses":
        return (lambda: client.responses.create(**responses(text, **extra)),
                lambda: plain.responses.create(**responses(text, **extra)))
    return (lambda: claude.messages.create(**messages(text, **extra)),
            lambda: plain_claude.messages.create(**messages(text, **extra)))


def _local(result: Any) -> bool:
    return is_local(result) or is_local_message(result)


@pytest.mark.parametrize("option, api", sorted(EXAMPLES))
def test_a_request_a_local_answer_cannot_honour_goes_to_the_llm_as_passed(
        option, api, routed, plain, plain_claude, server, store):
    wrapped, unwrapped = _call(api, routed, plain, plain_claude, {})
    calls = server.total_calls
    assert _local(wrapped()) and server.total_calls == calls  # answered locally without it
    wrapped, unwrapped = _call(api, routed, plain, plain_claude, EXAMPLES[option, api])
    expected = last_body(server, unwrapped)
    flush()
    traces = store.count("intent")
    result = None

    def remember() -> None:
        nonlocal result
        result = wrapped()

    assert last_body(server, remember) == expected
    assert not _local(result)
    flush()
    assert store.count("intent") == traces + 1 or store.traces("intent")[-1].count > 1


def test_a_stop_sequence_that_cuts_no_label_still_allows_a_local_answer(routed, server):
    calls = server.total_calls
    result = routed["openai"].chat.completions.create(**chat(routed["text"], stop=["\n", "##"]))
    assert is_local(result) and server.total_calls == calls
    result = routed["anthropic"].messages.create(**messages(routed["text"],
                                                            stop_sequences=["\n\n"]))
    assert is_local_message(result) and server.total_calls == calls


def test_a_token_limit_every_label_fits_in_still_allows_a_local_answer(routed, server):
    calls, longest = server.total_calls, max(len(label) for label in LABELS)
    result = routed["openai"].chat.completions.create(**chat(routed["text"],
                                                            max_completion_tokens=longest))
    assert is_local(result) and server.total_calls == calls
    result = routed["anthropic"].messages.create(**messages(routed["text"], max_tokens=longest))
    assert is_local_message(result) and server.total_calls == calls
    # A structured answer carries its JSON: {"label": "exchange_rate"} does not fit in 16 bytes.
    fmt = {"type": "json_schema", "json_schema": {"name": "intent", "schema": {
        "type": "object", "properties": {"label": {"type": "string"}}}}}
    result = routed["openai"].chat.completions.create(**chat(routed["text"], max_tokens=16,
                                                            response_format=fmt))
    assert not is_local(result) and server.total_calls == calls + 1


def test_labels_are_given_for_the_plain_sdk_path(routed, server) -> None:
    """The router's answers above are the teacher's: a local answer equals the LLM's answer."""
    result = routed["openai"].chat.completions.create(**chat(routed["text"]))
    assert result.choices[0].message.content == teacher(routed["text"]) in LABELS


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
OTHER_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {}}}

# Requests that are no classification: tracer_wrap leaves them alone (no task, no trace).
NOT_CLASSIFICATION: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "tools the model may not call": ("openai.chat", lambda t: chat(t, tools=[TOOL])),
    "two tools, any of them": ("openai.chat", lambda t: chat(t, tools=[TOOL, OTHER_TOOL],
                                                             tool_choice="required")),
    "legacy functions": ("openai.chat", lambda t: chat(t, functions=[TOOL["function"]])),
    "an image": ("openai.chat", lambda t: {"model": "gpt-test", "messages": [
        {"role": "user", "content": [{"type": "text", "text": t}, IMAGE]}]}),
    "two string fields": ("openai.chat", lambda t: chat(t, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "string"},
                                             "b": {"type": "string"}}}}})),
    "a conversation's state": ("openai.responses",
                               lambda t: responses(t, previous_response_id="resp_1")),
    "tools Claude may not call": ("anthropic.messages", lambda t: messages(t, tools=[
        {"name": "classify", "input_schema": TOOL["function"]["parameters"]}])),
}


@pytest.mark.parametrize("case", sorted(NOT_CLASSIFICATION))
def test_a_request_that_is_no_classification_goes_to_the_llm_untouched(
        case, routed, plain, plain_claude, server, store):
    api, make = NOT_CLASSIFICATION[case]
    request = make(routed["text"])
    if api == "openai.chat":
        calls = (lambda: plain.chat.completions.create(**request),
                 lambda: routed["openai"].chat.completions.create(**request))
    elif api == "openai.responses":
        calls = (lambda: plain.responses.create(**request),
                 lambda: routed["openai"].responses.create(**request))
    else:
        calls = (lambda: plain_claude.messages.create(**request),
                 lambda: routed["anthropic"].messages.create(**request))
    flush()
    traces = store.count("intent")
    expected = last_body(server, calls[0])
    assert last_body(server, calls[1]) == expected
    flush()
    assert store.count("intent") == traces


def test_a_parse_call_the_sdk_refuses_fails_alike_even_where_the_router_would_answer(
        routed, plain, plain_claude, server):
    text, calls = routed["text"], server.total_calls
    refused = [  # (plain call, wrapped call): each one raises in the SDK, before any request
        (lambda c: c.chat.completions.parse(**chat(text, tools=[TOOL], tool_choice=FORCED))),
        (lambda c: c.responses.parse(**responses(text, text_format=Intent,
                                                 text={"format": {"type": "text"}}))),
    ]
    for call in refused:
        with pytest.raises((ValueError, TypeError)) as plain_error:
            call(plain)
        with pytest.raises(type(plain_error.value)) as wrapped_error:
            call(routed["openai"])
        assert str(wrapped_error.value) == str(plain_error.value)
    with pytest.raises(TypeError) as plain_error:
        plain_claude.messages.parse(**messages(text, output_format={"type": "json_schema"}))
    with pytest.raises(TypeError) as wrapped_error:
        routed["anthropic"].messages.parse(**messages(text, output_format={"type": "json_schema"}))
    assert str(wrapped_error.value) == str(plain_error.value)
    assert server.total_calls == calls


def test_a_create_call_the_sdk_refuses_fails_alike_even_where_the_router_would_answer(
        routed, plain, plain_claude, server):
    text, calls = routed["text"], server.total_calls
    without_model = chat(text)
    del without_model["model"]
    refused = [  # (client, call): each one raises in the SDK, before any request
        ("openai", lambda c: c.chat.completions.create(**without_model)),
        ("openai", lambda c: c.chat.completions.create(**chat(text, temprature=0))),
        ("openai", lambda c: c.chat.completions.create(**chat(text, response_format=Intent))),
        ("openai", lambda c: c.chat.completions.create(**chat(text, response_format=Intent,
                                                              stream=True))),
        ("openai", lambda c: c.chat.completions.stream(**chat(text, temprature=0))),
        ("openai", lambda c: c.responses.create(**responses(text, temprature=0))),
        ("anthropic", lambda c: c.messages.create(
            max_tokens=16, messages=[{"role": "user", "content": text}])),
        ("anthropic", lambda c: c.messages.stream(**messages(text, temprature=0))),
        ("anthropic", lambda c: c.messages.create(
            model="claude-test", messages=[{"role": "user", "content": text}])),
        # Not streamed, with room for an answer that may take over 10 minutes: ValueError.
        ("anthropic", lambda c: c.messages.create(**messages(text, max_tokens=64000))),
        ("anthropic", lambda c: c.messages.parse(**messages(text, max_tokens=64000,
                                                            output_format=Intent))),
    ]
    for sdk, call in refused:
        unwrapped = plain if sdk == "openai" else plain_claude
        with pytest.raises((TypeError, ValueError)) as plain_error:
            call(unwrapped)
        with pytest.raises(type(plain_error.value)) as wrapped_error:
            call(routed[sdk])
        assert str(wrapped_error.value) == str(plain_error.value)
    assert server.total_calls == calls


def test_a_truthy_stream_flag_streams_as_in_the_sdk(routed, plain, server, store):
    client = routed["openai"]
    assert isinstance(plain.chat.completions.create(**chat("refund #t0", stream=1)),
                      openai.Stream)
    calls = server.total_calls
    local = client.chat.completions.create(**chat(routed["text"], stream=1))
    assert is_local(local) and server.total_calls == calls
    assert "".join(c.choices[0].delta.content or "" for c in local if c.choices) == \
        teacher(routed["text"])
    flush()
    traces = store.count("intent")
    task = client.tracer_wrap_tasks.task("intent")
    deferred = next(t for t in (f"hmm, no idea #{i}" for i in range(50)) if not task.route(t).local)
    answered = client.chat.completions.create(**chat(deferred, stream=1))
    assert isinstance(answered, openai.Stream) and server.total_calls == calls + 1
    assert "".join(c.choices[0].delta.content or "" for c in answered if c.choices) == \
        teacher(deferred)
    flush()
    assert store.count("intent") == traces + 1


@pytest.mark.parametrize("extra_body", [{"n": 2}, {"logprobs": True},
                                        {"messages": [{"role": "user", "content": "fx fee"}]},
                                        {"response_format": {"type": "json_object"}}])
def test_options_given_in_extra_body_block_a_local_answer_as_arguments_do(
        extra_body, routed, plain, server, store):
    request = chat(routed["text"], extra_body=extra_body)
    expected = last_body(server, lambda: plain.chat.completions.create(**request))
    flush()
    traces = store.count("intent")
    result: list[Any] = []
    assert last_body(server, lambda: result.append(
        routed["openai"].chat.completions.create(**request))) == expected
    assert not is_local(result[0])
    flush()
    assert store.count("intent") == traces + 1 or store.traces("intent")[-1].count > 1
    # An extra_body field a local answer does not depend on leaves it possible.
    calls = server.total_calls
    assert is_local(routed["openai"].chat.completions.create(
        **chat(routed["text"], extra_body={"temperature": 0, "user_tier": "gold"})))
    assert server.total_calls == calls


def _schema(*required: str) -> dict[str, Any]:
    return {"type": "object", "required": list(required),
            "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}}}


def test_a_schema_requiring_fields_beside_the_label_is_traced_but_never_answered_locally(
        routed, plain, plain_claude, server, store):
    text = routed["text"]
    fmt = {"type": "json_schema", "json_schema": {"name": "intent",
                                                  "schema": _schema("label", "confidence")}}
    tool = {"type": "function", "function": {"name": "classify",
                                             "parameters": _schema("label", "confidence")}}
    claude_tool = {"name": "classify", "input_schema": _schema("label", "confidence")}
    cases = [  # (call, the SDK it calls)
        (lambda c: c.chat.completions.create(**chat(text, response_format=fmt)), "openai"),
        (lambda c: c.chat.completions.create(**chat(text, tools=[tool], tool_choice=FORCED)),
         "openai"),
        (lambda c: c.responses.create(**{**responses(text), "text": {"format": {
            "type": "json_schema", "name": "intent", "schema": _schema("label", "confidence")}}}),
         "openai"),
        (lambda c: c.messages.create(**messages(text, tools=[claude_tool], tool_choice={
            "type": "tool", "name": "classify"})), "anthropic"),
    ]
    for call, sdk in cases:
        flush()
        traces = store.count("intent")
        unwrapped = plain if sdk == "openai" else plain_claude
        expected = last_body(server, functools.partial(call, unwrapped))
        assert last_body(server, functools.partial(call, routed[sdk])) == expected
        flush()
        assert store.count("intent") == traces + 1 or store.traces("intent")[-1].count > 1
    # Every other property optional: {"label": ...} alone is a valid answer.
    calls = server.total_calls
    optional = {"type": "json_schema", "json_schema": {"name": "intent",
                                                       "schema": _schema("label")}}
    assert is_local(routed["openai"].chat.completions.create(**chat(text,
                                                                    response_format=optional)))
    assert server.total_calls == calls
