"""A wrapped client whose store another process holds locked: its calls never wait for the store.

Another process holds SQLite's ``BEGIN EXCLUSIVE`` on both databases of a disk store, so opening
or reading it waits (opening retries for up to 30 s). The calls must complete while the lock is
still held (a condition, never a duration), and once it is released their traces are written.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from _locks import LockHolder
from _support import TASK_OPTIONS, LLMServer, ask, easy_texts, fitted, teacher
from _wait import until

import tracer_wrap
from tracer_wrap import serving
from tracer_wrap.integrations import _sdk, wrap_openai
from tracer_wrap.store import TraceStore

#: Longer than a store's 30 s opening attempt: a call that waited for the lock completes only
#: after it.
HOLD_SECONDS = 60


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Path, LockHolder]]:
    path = tmp_path / "store"
    TraceStore(path).close()
    holder = LockHolder(path, HOLD_SECONDS)
    try:
        yield path, holder
    finally:
        holder.release()


@pytest.fixture
def opening(monkeypatch) -> dict[str, threading.Event]:
    """Events set when the wrappers' store starts opening, when that first attempt ends (opened,
    or given up), and when the store is open."""
    events = {"started": threading.Event(), "ended": threading.Event(),
              "opened": threading.Event()}
    real = _sdk.open_store

    def open_store(*args: Any, **kwargs: Any) -> Any:
        events["started"].set()
        try:
            opened = real(*args, **kwargs)
        finally:
            events["ended"].set()
        events["opened"].set()
        return opened

    monkeypatch.setattr(_sdk, "open_store", open_store)
    return events


def test_first_calls_do_not_wait_while_the_background_worker_opens_a_locked_store(
        server: LLMServer, locked, opening, embedder):
    path, holder = locked
    texts = easy_texts(3)

    async def main() -> None:
        client = wrap_openai(openai.AsyncOpenAI(base_url=server.base_url_openai, api_key="t",
                                                max_retries=0),
                             task="intent", store=str(path), embedder=embedder, **TASK_OPTIONS)
        until(opening["started"].is_set, "the background worker to start opening the store")
        for text in texts:
            answer = await client.chat.completions.create(model="m", messages=ask(text))
            assert answer.choices[0].message.content == teacher(text)

    asyncio.run(main())
    # Done while the first attempt to open the store still waits on the lock another process
    # holds.
    assert holder.holding and not opening["ended"].is_set()
    holder.release()
    until(opening["opened"].is_set, "the store to open once the lock is released")
    assert tracer_wrap.flush()
    assert sorted(t.input for t in TraceStore(path).traces("intent")) == sorted(texts)


def test_first_sync_autolog_calls_do_not_wait_for_a_locked_store(server: LLMServer, locked,
                                                                 opening, embedder):
    path, holder = locked
    texts = easy_texts(3)
    tracer_wrap.autolog(store=str(path), embedder=embedder, **TASK_OPTIONS)
    try:
        with openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as client:
            until(opening["started"].is_set, "the background worker to start opening the store")
            for text in texts:  # the template recurs from its second call: a task
                answer = client.chat.completions.create(model="m", messages=ask(text))
                assert answer.choices[0].message.content == teacher(text)
        assert holder.holding and not opening["ended"].is_set()
        holder.release()
        until(opening["opened"].is_set, "the store to open once the lock is released")
        assert tracer_wrap.flush()
        store = TraceStore(path)
        assert sum(store.count(task) for task in store.tasks()) >= len(texts) - 1
    finally:
        tracer_wrap.autolog.disable()  # type: ignore[attr-defined]


def test_an_async_call_with_a_token_limit_never_waits_for_the_first_read(
        server: LLMServer, tmp_path: Path, embedder, monkeypatch):
    # A call with max_tokens reads the router's labels (could a local answer exceed the limit?).
    # Awaited, it must read them as the engine's async plan does, without waiting for the task's
    # first read of the store; here that wait would last until the lock is released.
    path = tmp_path / "store"
    store = TraceStore(path)
    with wrap_openai(openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0),
                     store=store, embedder=embedder, **TASK_OPTIONS) as fitter:
        fitted(store, fitter.tracer_wrap_tasks, "intent")
    store.close()
    monkeypatch.setattr(serving, "FIRST_LOAD_SECONDS", 10 * HOLD_SECONDS)
    holder = LockHolder(path, HOLD_SECONDS)
    try:
        async def main() -> None:
            client = wrap_openai(openai.AsyncOpenAI(base_url=server.base_url_openai,
                                                    api_key="t", max_retries=0),
                                 task="intent", store=str(path), embedder=embedder,
                                 **TASK_OPTIONS)
            for text in easy_texts(2):
                answer = await client.chat.completions.create(model="m", messages=ask(text),
                                                              max_tokens=1)
                assert answer.choices[0].message.content == teacher(text)

        asyncio.run(main())
        assert holder.holding
    finally:
        holder.release()


def test_an_async_stream_manager_is_planned_on_the_event_loop_without_waiting(
        server: LLMServer, tmp_path: Path, embedder, monkeypatch):
    # An async client's .stream() returns its manager at once; the call is planned when the
    # manager is entered, by the engine's async plan, which never waits for the first read.
    path = tmp_path / "store"
    TraceStore(path).close()
    monkeypatch.setattr(serving, "FIRST_LOAD_SECONDS", 10 * HOLD_SECONDS)
    holder = LockHolder(path, HOLD_SECONDS)
    try:
        async def main() -> None:
            client = tracer_wrap.wrap_anthropic(
                anthropic.AsyncAnthropic(base_url=server.base_url_anthropic, api_key="t",
                                         max_retries=0),
                task="intent", store=str(path), embedder=embedder, **TASK_OPTIONS)
            for text in easy_texts(2):
                async with client.messages.stream(
                        model="claude-test", max_tokens=16,
                        messages=[{"role": "user", "content": text}]) as stream:
                    message = await stream.get_final_message()
                assert message.content[0].text == teacher(text)
            never_entered = client.messages.stream(
                model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "x"}])
            del never_entered  # plans, sends and traces nothing

        asyncio.run(main())
        assert holder.holding
        calls = server.total_calls
    finally:
        holder.release()
    assert calls == 2
