"""The wrapped client is the SDK client wherever a program uses the client itself: ``with`` /
``async with``, the client-level raw and streaming variants, and copies, through the real SDKs
over real HTTP."""

from __future__ import annotations

import asyncio
import copy
import pickle

import anthropic
import openai
import pytest
from _support import TASK_OPTIONS, ask, easy_texts, fitted

from tracer_wrap import flush
from tracer_wrap.integrations import is_local, is_local_message, wrap_anthropic, wrap_openai
from tracer_wrap.store import TraceStore


def teachers(store: TraceStore) -> list[str]:
    flush()
    return sorted(t.teacher for t in store.traces("intent"))


def test_with_gives_the_wrapped_client_and_closes_the_sdks(server, store, embedder):
    options = {"task": "intent", "store": store, "embedder": embedder, **TASK_OPTIONS}
    plain = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
    with wrap_openai(plain, **options) as client:
        assert client.tracer_wrap_tasks is not None
        client.chat.completions.create(model="m", messages=ask("refund #x1"))
    assert plain.is_closed()
    plain_claude = anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                                       max_retries=0)
    with wrap_anthropic(plain_claude, **options) as claude:
        claude.messages.create(model="c", max_tokens=16,
                               messages=[{"role": "user", "content": "top up #x2"}])
    assert plain_claude.is_closed()

    async def main() -> None:
        raw = openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
        async with wrap_openai(raw, **options) as aclient:
            await aclient.chat.completions.create(model="m", messages=ask("lost card #x3"))
        assert raw.is_closed()
        raw_claude = anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                              max_retries=0)
        async with wrap_anthropic(raw_claude, **options) as aclaude:
            await aclaude.messages.create(model="c", max_tokens=16,
                                          messages=[{"role": "user", "content": "fx fee #x4"}])
        assert raw_claude.is_closed()
        with pytest.raises(TypeError, match="context manager protocol"):
            with aclient:  # type: ignore[attr-defined]
                pass

    asyncio.run(main())
    assert teachers(store) == ["card_lost", "exchange_rate", "refund", "top_up"]


# The SDK's own deep copy fails half-way and leaves an httpx wrapper whose __del__ complains.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_copies_of_a_wrapped_client_and_its_resources_are_wrapped_and_share_its_tasks(
        server, store, embedder):
    plain = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
    client = wrap_openai(plain, task="intent", store=store, embedder=embedder, **TASK_OPTIONS)
    copied = copy.copy(client)
    assert type(copied) is type(client) and copied.__wrapped__ is not plain
    assert copied.tracer_wrap_tasks is client.tracer_wrap_tasks
    copied.chat.completions.create(model="m", messages=ask("refund #c1"))
    copy.copy(client.chat).completions.create(model="m", messages=ask("top up #c2"))
    copy.copy(client.responses).create(model="m", input="fx fee #c3")
    claude = wrap_anthropic(anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                                                max_retries=0),
                            task="intent", store=store, embedder=embedder, **TASK_OPTIONS)
    copy.copy(claude).messages.create(model="c", max_tokens=16,
                                      messages=[{"role": "user", "content": "lost card #c4"}])
    assert server.total_calls == 4
    assert teachers(store) == ["card_lost", "exchange_rate", "refund", "top_up"]
    # What the SDK's client cannot do fails alike: never a copy that is no longer traced.
    for fails in (copy.deepcopy, pickle.dumps):
        with pytest.raises(Exception) as plain_error:
            fails(plain)
        with pytest.raises(type(plain_error.value)):
            fails(client)


def test_client_level_raw_and_streaming_responses_are_traced_and_ask_the_llm(
        server, store, embedder):
    options = {"task": "intent", "store": store, "embedder": embedder, **TASK_OPTIONS}
    client = wrap_openai(openai.OpenAI(base_url=server.base_url_openai, api_key="t",
                                       max_retries=0), **options)
    claude = wrap_anthropic(anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                                                max_retries=0), **options)
    fitted(store, client.tracer_wrap_tasks, "intent")
    claude.tracer_wrap_tasks.task("intent").serving.refresh()
    task = client.tracer_wrap_tasks.task("intent")
    texts = [t for t in easy_texts(20) if task.route(t).local][:5]
    flush()
    before = store.count("intent")
    raw = client.with_raw_response.chat.completions.create(model="m", messages=ask(texts[0]))
    assert raw.http_response.status_code == 200 and not is_local(raw.parse())
    with client.with_streaming_response.chat.completions.create(
            model="m", messages=ask(texts[1])) as response:
        assert not is_local(response.parse())
    assert client.with_raw_response.responses.create(model="m", input=texts[2]).parse()
    message = claude.with_raw_response.messages.create(
        model="c", max_tokens=16, messages=[{"role": "user", "content": texts[3]}]).parse()
    assert not is_local_message(message)

    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as plain:
            aclient = wrap_openai(plain, **options)
            response = await aclient.with_raw_response.chat.completions.create(
                model="m", messages=ask(texts[4]))
            assert not is_local(response.parse())  # a legacy response: parsed at once

    asyncio.run(main())
    assert server.total_calls == 5
    flush()
    # Three clients, three tasks: each writes its own traces, so their order is not the calls'.
    assert sorted(t.input for t in store.traces("intent")[before:]) == sorted(texts)


def test_a_stream_manager_records_no_llm_latency_for_the_embedding_wait(server, store,
                                                                        embedder):
    # .stream() returns the manager before its request is sent: its time is no LLM latency.
    options = {"task": "intent", "store": store, "embedder": embedder, "embed_budget": 0.25,
               **TASK_OPTIONS}
    client = wrap_openai(openai.OpenAI(base_url=server.base_url_openai, api_key="t",
                                       max_retries=0), **options)
    claude = wrap_anthropic(anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                                                max_retries=0), **options)
    with client.chat.completions.stream(model="m", messages=ask("refund #l1")) as stream:
        stream.get_final_completion()
    with client.responses.stream(model="m", input="top up #l2") as stream:
        stream.get_final_response()
    with claude.messages.stream(model="c", max_tokens=64,
                                messages=[{"role": "user", "content": "fx fee #l3"}]) as stream:
        stream.get_final_message()
    timed = [len(c.tracer_wrap_tasks.task("intent")._embed_wait._latencies)
             for c in (client, claude)]
    assert timed == [0, 0]
    client.chat.completions.create(model="m", messages=ask("lost card #l4"))
    assert len(client.tracer_wrap_tasks.task("intent")._embed_wait._latencies) == 1
    assert teachers(store) == ["card_lost", "exchange_rate", "refund", "top_up"]
