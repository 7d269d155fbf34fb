"""The wrapped client is the SDK client wherever a program uses the client itself: ``with`` /
``async with``, the client-level raw and streaming variants, and copies, through the real SDKs
over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import openai
import pytest
from _support import TASK_OPTIONS, LLMServer, serve_llm, teacher

from tracer_wrap import flush
from tracer_wrap.integrations import wrap_anthropic, wrap_openai
from tracer_wrap.store import TraceStore

SYSTEM = {"role": "system", "content": "Classify the banking request. Answer with the label only."}


def ask(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


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
