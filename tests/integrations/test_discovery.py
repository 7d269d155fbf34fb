"""Task discovery on real traffic through the real SDKs: the text found in the system prompt makes
one task (answered locally once fitted), chat traffic makes no task per conversation, and labels
keep the spelling the caller's own LLM answers in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from _support import (
    LABELS,
    TASK_OPTIONS,
    LLMServer,
    easy_texts,
    fitted,
    make_traces,
    serve_llm,
    teacher,
)

from tracer_wrap import flush
from tracer_wrap.integrations import is_local, is_local_message, wrap_anthropic, wrap_openai
from tracer_wrap.store import Origin, TraceStore


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


@pytest.fixture
def raw(server: LLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as client:
        yield client


def in_system(text: str) -> str:
    return f"You sort bank messages.\nMessage: {text}\nAnswer with one label, nothing else."


def sizes(store: TraceStore, names: Any) -> list[int]:
    flush()
    return sorted((store.count(name) for name in names), reverse=True)


# -- the text in the system prompt -----------------------------------------------------------------


def test_text_in_the_system_prompt_is_one_task_answered_locally_once_fitted(raw, server, store,
                                                                            embedder):
    server.classify = "system"
    client = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)

    def ask(text: str) -> Any:
        return client.chat.completions.create(model="gpt-test", messages=[
            {"role": "system", "content": in_system(text)},
            {"role": "user", "content": "Which label?"}])

    texts = [text for text, _ in make_traces(100, seed=5)]
    for text in texts:
        assert ask(text).choices[0].message.content == teacher(in_system(text))
    names = client.tracer_wrap_tasks.tasks()
    assert len(names) == 1  # 100 calls, one task: the first few only taught the template
    (name,) = names
    flush()
    assert store.count(name) >= 95
    flush()
    assert store.traces(name)[-1].input == texts[-1]  # the text alone, not the whole prompt

    fitted(store, client.tracer_wrap_tasks, name)
    calls = server.total_calls
    results = [ask(text) for text in easy_texts(20)]
    local = [r for r in results if is_local(r)]
    assert len(local) >= 10 and server.total_calls == calls + len(results) - len(local)
    assert all(r.choices[0].message.content == teacher(t)
               for r, t in zip(results, easy_texts(20)))


def test_system_prompt_text_of_the_responses_api_and_anthropic(raw, server, store, embedder):
    server.classify = "system"
    client = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)
    texts = [text for text, _ in make_traces(12, seed=6)]
    for text in texts:
        client.responses.create(model="gpt-test", instructions=in_system(text), input="Label?")
        client.chat.completions.create(model="gpt-test", messages=[  # no user message at all
            {"role": "system", "content": in_system(text)}])

    async def main() -> list[str]:
        async with anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                            max_retries=0) as claude_raw:
            claude = wrap_anthropic(claude_raw, store=store, embedder=embedder, **TASK_OPTIONS)
            for text in texts:
                await claude.messages.create(model="c", max_tokens=64,
                                             system=[{"type": "text", "text": in_system(text)}],
                                             messages=[{"role": "user", "content": "Label?"}])
            return list(claude.tracer_wrap_tasks.tasks())

    claude_tasks = asyncio.run(main())
    assert len(client.tracer_wrap_tasks.tasks()) == 2 and len(claude_tasks) == 1
    assert sizes(store, [*client.tracer_wrap_tasks.tasks(), *claude_tasks]) == [9, 9, 9]
    flush()
    assert {t.input for name in claude_tasks for t in store.traces(name)} == set(texts[3:])


# -- chat traffic ----------------------------------------------------------------------------------


def test_chat_traffic_makes_no_task_per_conversation(raw, server, store, embedder):
    server.teacher = lambda text: f"Sure! Here is what I think about {text[:20]}."
    client = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)
    system = {"role": "system", "content": "You are a friendly banking assistant."}
    turns = 0
    for conversation in range(30):
        history: list[dict[str, str]] = [system]
        for turn in range(8):
            history.append({"role": "user", "content": f"question {turn} of chat {conversation}"})
            reply = client.chat.completions.create(model="gpt-test", messages=history)
            history.append({"role": "assistant", "content": reply.choices[0].message.content})
            turns += 1
    assert turns == 240 and server.calls["chat.completions"] == 240
    # Only the first turns share a template (the system prompt and one user message): one task.
    names = list(client.tracer_wrap_tasks.tasks())
    flush()
    assert len(names) == 1 and store.count(names[0]) == 29
    assert store.tasks() == names


def test_a_template_is_traced_from_its_second_call_or_its_first_once_in_the_store(
        raw, server, store, embedder):
    system = {"role": "system", "content": "Classify the banking request."}

    def ask(client: Any, text: str) -> None:
        client.chat.completions.create(model="m", messages=[system,
                                                            {"role": "user", "content": text}])

    first = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)
    ask(first, "refund #1")
    assert first.tracer_wrap_tasks.tasks() == {} and store.tasks() == []
    ask(first, "refund #2")
    (name,) = first.tracer_wrap_tasks.tasks()
    flush()
    assert [t.input for t in store.traces(name)] == ["refund #2"]
    # Another process (a new client on the same store) traces the known template at once.
    second = wrap_openai(raw, store=store, embedder=embedder, **TASK_OPTIONS)
    flush()  # its background worker reads the store's task names (within a tick)
    ask(second, "refund #3")
    assert list(second.tracer_wrap_tasks.tasks()) == [name]
    flush()
    assert [t.input for t in store.traces(name)] == ["refund #2", "refund #3"]


# -- spellings -------------------------------------------------------------------------------------

TITLE = {"card_lost": "Card Lost", "exchange_rate": "Exchange Rate", "refund": "Refund",
         "top_up": "Top Up"}


def test_local_answers_are_spelled_as_the_llm_spells_labels_given_in_another_spelling(
        raw, server, store, embedder):
    """labels= in Title Case, an LLM answering in snake_case: every answer is in snake_case."""
    client = wrap_openai(raw, task="intent", labels=list(TITLE.values()), store=store,
                         embedder=embedder, **TASK_OPTIONS)
    system = {"role": "system", "content": "Classify the banking request."}
    for label in TITLE:  # one LLM answer per label teaches its spelling
        text = f"{LABELS[label][0]} #first"
        answer = client.chat.completions.create(
            model="m", messages=[system, {"role": "user", "content": text}])
        assert answer.choices[0].message.content == label
    flush()
    assert {t.teacher for t in store.traces("intent")} == set(TITLE.values())  # normalised
    for text, label in make_traces(800):
        store.append("intent", text, TITLE[label], origin=Origin.LLM)
    client.tracer_wrap_tasks.task("intent").refit()
    calls = server.total_calls
    results = [(text, client.chat.completions.create(
        model="m", messages=[system, {"role": "user", "content": text}]))
        for text in easy_texts(12)]
    local = [(text, r) for text, r in results if is_local(r)]
    assert local and server.total_calls == calls + len(results) - len(local)
    assert all(r.choices[0].message.content == teacher(text) for text, r in results)
    # Another process (a new client on the same store) answers in the same spelling.
    other = wrap_openai(raw, task="intent", labels=list(TITLE.values()), store=store,
                        embedder=embedder, **TASK_OPTIONS)
    other.tracer_wrap_tasks.spellings("intent")
    flush()  # its background worker reads the store's spellings (within a tick)
    text, _ = local[0]
    again = other.chat.completions.create(model="m", messages=[
        system, {"role": "user", "content": text}])
    assert is_local(again) and again.choices[0].message.content == teacher(text)


def test_without_labels_two_spellings_of_a_label_are_one(server, store, embedder):
    spellings = iter(["Card Lost", "card_lost", "card-lost.", "CARD LOST"] * 3)
    server.teacher = lambda text: next(spellings)
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                             max_retries=0) as raw:
        claude = wrap_anthropic(raw, task="intent", store=store, embedder=embedder,
                                **TASK_OPTIONS)
        answers = [claude.messages.create(
            model="c", max_tokens=64, messages=[{"role": "user", "content": f"lost card #{i}"}]
        ).content[0].text for i in range(12)]
    # The caller sees the LLM's answers as they are; the traces hold one label.
    assert answers[:4] == ["Card Lost", "card_lost", "card-lost.", "CARD LOST"]
    flush()
    assert {t.teacher for t in store.traces("intent")} == {"Card Lost"}
    fitted(store, claude.tracer_wrap_tasks, "intent")  # the synthetic traces spell card_lost
    # A label the LLM never answered keeps the router's spelling; one it did, the LLM's first.
    spelled = claude.tracer_wrap_tasks.spellings("intent")
    assert spelled.spell("card_lost") == "Card Lost" and spelled.spell("refund") == "refund"


def test_a_local_message_uses_the_llms_spelling(server, store, embedder):
    server.teacher = lambda text: TITLE[teacher(text)]  # the LLM answers in Title Case
    with anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t",
                             max_retries=0) as raw:
        claude = wrap_anthropic(raw, task="intent", labels=list(TITLE), store=store,
                                embedder=embedder, **TASK_OPTIONS)
        for label in TITLE:
            claude.messages.create(model="c", max_tokens=64, messages=[
                {"role": "user", "content": f"{LABELS[label][0]} #1"}])
        fitted(store, claude.tracer_wrap_tasks, "intent")
        calls = server.total_calls
        text = next(t for t in easy_texts(20)
                    if claude.tracer_wrap_tasks.task("intent").route(t).local)
        message = claude.messages.create(model="c", max_tokens=64,
                                         messages=[{"role": "user", "content": text}])
    assert is_local_message(message) and server.total_calls == calls
    assert message.content[0].text == TITLE[teacher(text)]
