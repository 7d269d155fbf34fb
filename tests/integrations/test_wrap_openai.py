"""wrap_openai against the real openai SDK over real HTTP to the local LLM server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator

import openai
import pydantic
import pytest
from _support import SYSTEM, TASK_OPTIONS, LLMServer, ask, easy_texts, fitted, teacher
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion

from tracer_wrap import flush, savings
from tracer_wrap.integrations import is_local, wrap_openai
from tracer_wrap.store import TraceStore

LABELS = ["card_lost", "exchange_rate", "refund", "top_up"]


class Intent(pydantic.BaseModel):
    label: str



@pytest.fixture
def raw(server: LLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def client(raw: openai.OpenAI, store: TraceStore, embedder) -> openai.OpenAI:
    return wrap_openai(raw, task="intent", labels=LABELS, store=store, embedder=embedder,
                       **TASK_OPTIONS)


def test_plain_sdk_code_runs_and_every_llm_call_is_traced_with_usage(client, server, store):
    assert isinstance(client, openai.OpenAI)
    assert client.models is not None and client.api_key == "test"
    texts = easy_texts(6)
    for text in texts:
        resp = client.chat.completions.create(model="gpt-test", messages=ask(text))
        assert isinstance(resp, ChatCompletion) and not is_local(resp)
        assert resp.choices[0].message.content == teacher(text)
    assert server.calls["chat.completions"] == 6
    flush()
    assert [t.input for t in store.traces("intent")] == texts
    flush()
    assert [t.teacher for t in store.traces("intent")] == [teacher(t) for t in texts]
    flush()
    flush()
    counters = store.counters("intent")
    assert counters["llm"] == 6 and counters["input_tokens"] > 0 and counters["output_tokens"] > 0
    assert "local" not in counters


def test_handled_calls_never_reach_the_server(client, server, store):
    fitted(store, client.tracer_wrap_tasks, "intent")
    texts = easy_texts(40)
    results = [client.chat.completions.create(model="gpt-test", messages=ask(t)) for t in texts]
    local = [r for r in results if is_local(r)]
    assert len(local) >= 30, "the router should answer most easy inputs"
    assert server.calls["chat.completions"] == len(results) - len(local)
    for text, resp in zip(texts, results):
        assert isinstance(resp, ChatCompletion)
        assert resp.choices[0].message.content == teacher(text)
    assert all(r.usage.total_tokens == 0 for r in local)
    flush()
    flush()
    assert store.counters("intent")["local"] == len(local)
    report = savings(store, "intent")
    assert report["saved"] is None and report["local"] == len(local)
    store.set_setting("intent", "price", {"input_per_mtok": 2.0, "output_per_mtok": 8.0})
    report = savings(store, "intent")
    assert report["saved"] == pytest.approx(report["cost_per_llm_call"] * len(local))
    assert report["llm_cost"] > 0 or report["llm"] == 0


def test_streams_parse_and_stream_manager_on_both_paths(client, server, store):
    # LLM path: the stream is the SDK's own; the trace is logged once it is read to the end.
    stream = client.chat.completions.create(model="gpt-test", messages=ask("my lost card #s1"),
                                            stream=True, stream_options={"include_usage": True})
    assert isinstance(stream, openai.Stream)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    stream.close()
    flush()
    assert text == "card_lost" and store.traces("intent")[-1].teacher == "card_lost"
    flush()
    flush()
    assert store.counters("intent")["input_tokens"] > 0
    # Closed early: nothing is logged (a partial output is no label).
    with client.chat.completions.create(model="gpt-test", messages=ask("refund now #s2"),
                                        stream=True) as s:
        next(iter(s))
    flush()
    assert store.count("intent") == 1
    parsed = client.chat.completions.parse(model="gpt-test", messages=ask("top up #p1"),
                                           response_format=Intent)
    assert (isinstance(parsed, ParsedChatCompletion)
            and parsed.choices[0].message.parsed.label == "top_up")
    with client.chat.completions.stream(model="gpt-test", messages=ask("fx fee #m1"),
                                        response_format=Intent) as s:
        for _ in s:
            pass
        assert s.get_final_completion().choices[0].message.parsed.label == "exchange_rate"
    flush()
    assert [t.teacher for t in store.traces("intent")] == ["card_lost", "top_up", "exchange_rate"]
    calls = server.calls["chat.completions"]

    fitted(store, client.tracer_wrap_tasks, "intent")
    text = easy_texts(1, seed=3)[0]
    with client.chat.completions.create(model="gpt-test", messages=ask(text), stream=True) as s:
        chunks = list(s)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks) and is_local(s)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == teacher(text)
    parsed = client.chat.completions.parse(model="gpt-test", messages=ask(text),
                                           response_format=Intent)
    assert is_local(parsed) and parsed.choices[0].message.parsed == Intent(label=teacher(text))
    with client.chat.completions.stream(model="gpt-test", messages=ask(text),
                                        response_format=Intent) as s:
        assert s.get_final_completion().choices[0].message.parsed == Intent(label=teacher(text))
    assert server.calls["chat.completions"] == calls


def test_async_client_create_stream_and_local_answers(raw, server, store, embedder):
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                      max_retries=0) as inner:
            client = wrap_openai(inner, task="intent", labels=LABELS, store=store,
                                 embedder=embedder, **TASK_OPTIONS)
            assert isinstance(client, openai.AsyncOpenAI)
            resp = await client.chat.completions.create(model="m",
                                                        messages=ask("refund please #a1"))
            assert resp.choices[0].message.content == "refund"
            stream = await client.chat.completions.create(model="m", messages=ask("top up #a2"),
                                                          stream=True)
            async with stream:
                assert isinstance(stream, openai.AsyncStream)
                pieces = [c.choices[0].delta.content async for c in stream if c.choices]
            assert "".join(p or "" for p in pieces) == "top_up"
            async with client.chat.completions.stream(model="m", messages=ask("fx fee #a3")) as s:
                final = await s.get_final_completion()
            assert final.choices[0].message.content == "exchange_rate"
            flush()
            assert [t.teacher for t in store.traces("intent")] == \
                ["refund", "top_up", "exchange_rate"]
            fitted(store, client.tracer_wrap_tasks, "intent")
            calls = server.calls["chat.completions"]
            text = easy_texts(1, seed=9)[0]
            resp = await client.chat.completions.create(model="m", messages=ask(text))
            assert is_local(resp) and resp.choices[0].message.content == teacher(text)
            stream = await client.chat.completions.create(model="m", messages=ask(text),
                                                          stream=True)
            async with stream:
                chunks = [c async for c in stream]
            assert chunks and server.calls["chat.completions"] == calls

    asyncio.run(main())


@pytest.mark.parametrize("fault, error", [("429", openai.RateLimitError),
                                          ("500", openai.InternalServerError),
                                          ("timeout", openai.APITimeoutError),
                                          ("garbage", json.JSONDecodeError)])
def test_sdk_errors_reach_the_caller_unchanged_and_log_no_trace(
        client, server, store, fault, error):
    server.fail(fault, delay=1.0)
    with pytest.raises(error) as caught:
        client.with_options(timeout=0.3).chat.completions.create(model="m",
                                                                 messages=ask("refund #e1"))
    assert type(caught.value) is error
    flush()
    # The call reached tracer_wrap (counted) but no LLM answer did: nothing else is counted.
    flush()
    assert store.count("intent") == 0 and store.counters("intent") == {"calls": 1}


def test_output_outside_the_label_set_is_logged_invalid_and_returned_unchanged(
        raw, server, store, embedder):
    server.teacher = lambda text: "banana"
    client = wrap_openai(raw, task="intent", labels=LABELS, store=store, embedder=embedder)
    resp = client.chat.completions.create(model="m", messages=ask("refund #i1"))
    assert resp.choices[0].message.content == "banana"
    flush()
    (trace,) = store.traces("intent")
    assert not trace.valid and trace.teacher == "banana"
    flush()
    assert store.traces("intent", valid_only=True) == []


def test_a_read_only_store_never_breaks_a_call(raw, server, tmp_path, embedder):
    directory = tmp_path / "ro"
    directory.mkdir()
    os.chmod(directory, stat.S_IRUSR | stat.S_IXUSR)
    try:
        client = wrap_openai(raw, task="intent", store=str(directory / "store"), embedder=embedder)
        resp = client.chat.completions.create(model="m", messages=ask("refund #r1"))
        assert resp.choices[0].message.content == "refund" and server.calls["chat.completions"] == 1
    finally:
        os.chmod(directory, stat.S_IRWXU)


def test_a_corrupted_router_never_breaks_a_call(client, server, store):
    fitted(store, client.tracer_wrap_tasks, "intent")
    for path in store.router_dir("intent").glob("*.npz"):
        path.write_bytes(b"not a router")
    client = wrap_openai(client, task="intent", labels=LABELS, store=store,  # a new process
                         embedder=client.tracer_wrap_tasks.embedder, **TASK_OPTIONS)
    text = easy_texts(1)[0]
    resp = client.chat.completions.create(model="m", messages=ask(text))
    assert not is_local(resp) and resp.choices[0].message.content == teacher(text)
    assert server.calls["chat.completions"] == 1


def test_copies_stay_wrapped_and_raw_responses_are_traced(client, server, store):
    for copy in (client.with_options(timeout=5), client.copy(max_retries=1)):
        assert type(copy) is type(client) and isinstance(copy, openai.OpenAI)
        assert copy.tracer_wrap_tasks is client.tracer_wrap_tasks
        copy.chat.completions.create(model="m", messages=ask("refund #c1"))
    raw_response = client.chat.completions.with_raw_response.create(model="m",
                                                                    messages=ask("fx fee #w1"))
    assert (raw_response.headers.get("x-request-id")
            and raw_response.parse().choices[0].message.content == "exchange_rate")
    flush()
    assert [t.teacher for t in store.traces("intent")] == ["refund", "exchange_rate"]
    flush()
    assert store.traces("intent")[0].count == 2
    # Handled inputs still go to the LLM through with_raw_response (it must return HTTP data).
    fitted(store, client.tracer_wrap_tasks, "intent")
    calls = server.calls["chat.completions"]
    client.chat.completions.with_raw_response.create(model="m",
                                                     messages=ask(easy_texts(1)[0])).parse()
    assert server.calls["chat.completions"] == calls + 1


def test_tasks_by_option_or_by_prompt_template(raw, server, store, embedder):
    client = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)
    client.chat.completions.create(model="m", messages=ask("refund #t1"), tracer_wrap_task="named")
    assert "tracer_wrap_task" not in server.requests[-1][1]
    flush()
    assert store.count("named") == 1
    other = {"role": "system", "content": "Is this message spam? Answer yes or no."}
    for i in range(3):
        client.chat.completions.create(model="m", messages=ask(f"refund #t{i}"))
        client.chat.completions.create(model="m",
                                       messages=[other, {"role": "user", "content": f"x {i}"}])
    # A template wrapping the text in a longer message is learned and stripped.
    for i in range(6):
        client.chat.completions.create(model="m", messages=[
            {"role": "user", "content": f"Classify this request:\n\"top up #{i}\"\n"
                                        "Answer with one word."}])
    names = set(client.tracer_wrap_tasks.tasks())
    assert len(names) >= 4 and "named" in names
    flush()
    templated = [n for n in names
                 if n != "named" and any(t.input == "top up #5" for t in store.traces(n))]
    assert len(templated) == 1
    # A non-classification call (free tool choice) is left alone: no task, no trace.
    tool = {"type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    client.chat.completions.create(model="m", messages=ask("refund #t9"), tools=[tool])
    assert set(client.tracer_wrap_tasks.tasks()) == names


def test_responses_api_on_both_paths(client, server, store):
    resp = client.responses.create(model="m", instructions=SYSTEM["content"], input="fx fee #x1")
    flush()
    assert (resp.output_text == "exchange_rate"
            and store.traces("intent")[-1].teacher == "exchange_rate")
    fitted(store, client.tracer_wrap_tasks, "intent")
    text = easy_texts(1)[0]
    resp = client.responses.create(model="m", instructions=SYSTEM["content"], input=text)
    assert is_local(resp) and resp.output_text == teacher(text)
    assert server.calls["responses"] == 1


def test_routing_switch_in_the_store_turns_routing_off_and_on(raw, server, store, embedder):
    client = wrap_openai(raw, task="intent", store=store, embedder=embedder, routing=False,
                         **TASK_OPTIONS)
    fitted(store, client.tracer_wrap_tasks, "intent")
    text = easy_texts(1)[0]
    assert not is_local(client.chat.completions.create(model="m", messages=ask(text)))
    store.set_setting("intent", "routing", True)
    client = wrap_openai(raw, task="intent", store=store, embedder=embedder, routing=False,
                         **TASK_OPTIONS)
    assert is_local(client.chat.completions.create(model="m", messages=ask(text)))
